"""A method defined outside star_lite, as a user's own would be: it registers itself when imported, and a
config names it by import path, ``compare.methods: [few-shot, "toy_methods:self-consistency"]``.

self-consistency (Wang et al. 2022): no training; the base model writes k few-shot rationales per test
problem at a temperature, and the majority answer is its answer.
"""

from __future__ import annotations

from star_lite import phases
from star_lite.evaluation import majority_correct, score
from star_lite.loop import start_run
from star_lite.methods import register
from star_lite.methods.common import finish_row
from star_lite.rundir import RunDir, write_jsonl
from star_lite.sampling import generator

K, TEMPERATURE = 3, 0.7


def configure(c, cfg):
    c.star.iterations = 1  # iteration 0 (the few-shot base, as every method has), then the vote


@register("self-consistency", summary="the base model's majority answer over k sampled rationales",
          configure=configure)
def run(cfg):
    ctx = start_run(cfg)  # a RunContext; None once every stage is finished
    if ctx is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, test, tokenizer, base = ctx.rundir, ctx.task, ctx.test, ctx.tokenizer, ctx.base
    t0, it_dir = phases.start(), rundir.iter_dir(1)
    prompts = [task.prompt(p, num_few_shot=cfg.task.num_few_shot) for p in test for _ in range(K)]
    gens = generator(cfg)(base, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                          max_new_tokens=cfg.eval.max_new_tokens, temperature=TEMPERATURE,
                          stop_strings=task.stop_strings, desc=f"self-consistency @{K}")
    texts = [task.clean_completion(g.text) for g in gens]
    votes = []
    for i, p in enumerate(test):
        mine = texts[i * K:(i + 1) * K]
        ok = majority_correct([task.extract_answer(t) for t in mine], [task.is_correct(t, p) for t in mine])
        votes.append(next((t for t in mine if task.is_correct(t, p) == ok), mine[0]))
    result = score(task, test, votes)
    write_jsonl(it_dir / "eval.jsonl", [{"id": p.id, "completion": t, "correct": ok}
                                        for p, t, ok in zip(test, votes, result.pop("correct"))])
    finish_row(rundir, 1, "self-consistency", t0, result, eval_tokens=sum(g.num_tokens for g in gens))
    rundir.record_stop("schedule", f"majority of {K} samples per problem; no training")
    return rundir.metrics()
