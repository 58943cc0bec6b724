"""v-star (Hosseini et al. 2024): STaR's generator sampling several rationales per problem at a temperature,
then a verifier trained with DPO on right-over-wrong pairs from all its iterations; at test time the
verifier picks the best of k candidates, reported beside greedy, majority@k and pass@k."""

from __future__ import annotations

import shutil
from typing import Any

from .. import distributed, phases
from ..config import Config
from ..evaluation import majority_correct, score
from ..loop import build_task, clear_unfinished, log, star_loop
from ..models import detach_adapter, load_adapter, load_base_model, load_tokenizer
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..sampling import generator
from ..stats import wilson
from ..tasks import Problem, Task
from ..trainers.args import rl_precision
from ..training import release_memory
from .common import finish_row, last_logged
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.rationalization = False  # the verifier learns from the model's own attempts, unhinted
    c.star.samples_per_problem = cfg.v_star.samples_per_problem
    c.sampling.temperature = cfg.v_star.temperature


def verifier_pairs(task: Task, train: list[Problem], rundir: RunDir, generations: list[int],
                   max_pairs_per_problem: int) -> list[dict[str, Any]]:
    """V-STaR's verifier data: right-over-wrong pairs from the unhinted samples of every generator
    iteration together (a right rationale of iteration 1 pairs with a wrong one of iteration 2)."""
    from ..trainers.pairs import preference_pairs

    samples = [s for j in generations for s in read_jsonl(rundir.iter_dir(j) / "samples.jsonl")
               if s["phase"] == "rationale"]
    return preference_pairs(task, train, samples, max_pairs_per_problem)


@register("v-star", summary="the verifier's best-of-k, with greedy, majority@k and pass@k beside it",
          sections=("v_star",), configure=configure)
def run_v_star(cfg: Config) -> list[dict[str, Any]]:
    """V-STaR (Hosseini et al. 2024): STaR's generator (v_star.samples_per_problem samples per problem at
    v_star.temperature, no rationalization; ``method_config``), then one more stage: a verifier trained
    with DPO on right-over-wrong pairs from all the generator's iterations, starting from and held to the
    first iteration's SFT adapter. At test time the last generator draws v_star.k candidates per problem;
    the row reports verifier best-of-k (its accuracy and eval.jsonl), majority@k and greedy on them."""
    from peft import PeftModel

    from ..trainers.dpo import load_verifier, train_dpo, verifier_scores
    from ..trainers.pairs import preference_steps

    done = RunDir(cfg.run.output_dir).metrics()
    if any(r.get("stage") == "verifier" for r in done):
        # the verifier is the last stage, whenever the generator stopped (its budget, validation): finished
        log(f"{cfg.run.output_dir}: v-star is finished (the verifier is trained)")
        return done
    rows = star_loop(cfg)
    generations = [r["iteration"] for r in rows if r.get("stage") == "star"]
    if not generations:
        log("v-star: the generator trained no adapter; no verifier")
        return rows
    rundir, last = RunDir(cfg.run.output_dir), max(generations)
    t0, it, k = phases.start(), last + 1, cfg.v_star.k
    it_dir = rundir.iter_dir(it)
    clear_unfinished(it_dir)
    for name in ("verifier", ".verifier.tmp", "dpo_trainer"):
        shutil.rmtree(it_dir / name, ignore_errors=True)
    task, train, test = build_task(cfg)
    tokenizer, base = load_tokenizer(cfg.model.name_or_path), load_base_model(cfg.model)

    # --- the verifier: DPO on every iteration's right-over-wrong pairs --------------------------
    pairs = verifier_pairs(task, train, rundir, generations, cfg.v_star.max_pairs_per_problem)
    write_jsonl(it_dir / "pairs.jsonl", pairs)
    if not pairs:  # the generator's last row stands; nothing to train a verifier on
        log("v-star: no question got both a right and a wrong sample in any iteration, so no verifier; sample "
            "more per problem (v_star.samples_per_problem) or at a higher v_star.temperature")
        return rundir.metrics()
    reference = rundir.iter_dir(generations[0]) / "adapter"  # V-STaR: from the first SFT generator
    policy = PeftModel.from_pretrained(base, str(reference), is_trainable=True)
    verifier_steps = preference_steps(len(pairs), cfg.v_star.epochs, cfg.v_star.batch_size, cfg.v_star.steps)
    verifier, trained = train_dpo(policy, tokenizer, pairs, cfg, it_dir / "verifier_training", steps=verifier_steps,
                                  learning_rate=cfg.v_star.learning_rate, batch_size=cfg.v_star.batch_size,
                                  beta=cfg.v_star.beta)
    if distributed.is_main():  # rank 0 keeps the run directory; the others wait for the move
        shutil.move(str(it_dir / "verifier_training" / "adapter"), str(it_dir / "verifier"))
        shutil.rmtree(it_dir / "verifier_training", ignore_errors=True)
    distributed.barrier()
    base = detach_adapter(verifier)
    del verifier
    release_memory()

    # --- k candidates per test problem from the last generator, scored by the verifier -----------
    gen = load_adapter(base, rundir.iter_dir(last) / "adapter")
    num_shots = cfg.task.num_few_shot if cfg.sampling.few_shot_after_training else 0
    prompts = [task.prompt(p, num_few_shot=num_shots) for p in test for _ in range(k)]
    with phases.phase("candidates"):
        gens = generator(cfg)(gen, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                              # drawn as the verifier's training samples were, so it scores what it learned on
                              max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.v_star.temperature,
                              top_p=cfg.sampling.top_p, stop_strings=task.stop_strings, desc=f"candidates @{k}")
    texts = [task.clean_completion(g.text) for g in gens]
    base = detach_adapter(gen)
    del gen
    verifier = load_verifier(base, it_dir / "verifier", reference)
    with phases.phase("verifier_scoring"), rl_precision(verifier, cfg, autocast=True):
        scores = verifier_scores(verifier, tokenizer, [task.format_question(p) for p in test for _ in range(k)],
                                 [task.format_completion(t) for t in texts], cfg.v_star.beta)
    candidates = []
    for n, (p, text) in enumerate(zip((p for p in test for _ in range(k)), texts)):
        candidates.append({"id": p.id, "sample": n % k, "completion": text, "answer": task.extract_answer(text),
                           "correct": task.is_correct(text, p), "verifier_score": scores[n],
                           "tokens": gens[n].num_tokens})
    write_jsonl(it_dir / "candidates.jsonl", candidates)
    row = choose_best_of_k(task, test, candidates, k,
                           greedy={r["id"]: r["correct"] for r in read_jsonl(rundir.iter_dir(last) / "eval.jsonl")})
    write_jsonl(it_dir / "eval.jsonl", row.pop("records"))
    result = {key: row.pop(key) for key in ("accuracy", "num_eval", "num_correct", "ci_low", "ci_high",
                                            "accuracy_by_difficulty")}
    finish_row(rundir, it, "verifier", t0, result, **row, num_pairs=len(pairs), verifier_steps=verifier_steps,
                verifier_loss=trained.train_loss,
                verifier_reward_accuracy=last_logged(trained.history, "rewards/accuracies"),
                trained_tokens=trained.trained_tokens, generator_iteration=last,
                eval_tokens=sum(c["tokens"] for c in candidates), candidate_temperature=cfg.v_star.temperature)
    return rundir.metrics()


def choose_best_of_k(task, problems, candidates: list[dict[str, Any]], k: int,
                     greedy: dict[str, bool]) -> dict[str, Any]:
    """Verifier best-of-k, majority@k and pass@k on the same k candidates per problem, and greedy, each
    with its 95% Wilson interval; ``records`` are the best-of-k choices (the stage's eval.jsonl).

    >>> from star_lite.tasks import load_task, Problem
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> p = Problem("a", "What is 1 + 1?", "2")
    >>> c = [{"id": "a", "completion": f"The answer is {x}.", "answer": x, "correct": x == "2",
    ...       "verifier_score": s} for x, s in (("3", 0.1), ("3", 0.2), ("2", 0.9))]
    >>> r = choose_best_of_k(t, [p], c, 3, greedy={"a": False})
    >>> r["accuracy"], r["maj@3"], r["pass@3"], r["greedy_accuracy"]
    (1.0, 0.0, 1.0, 0.0)
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for c in candidates:
        by_id.setdefault(c["id"], []).append(c)
    best = [max(by_id[p.id], key=lambda c: c["verifier_score"]) for p in problems]
    result = score(task, problems, [c["completion"] for c in best])
    records = [{"id": p.id, "question": p.question, "gold": p.answer, "completion": c["completion"],
                "answer": c["answer"], "correct": ok, "difficulty": task.difficulty(p),
                "verifier_score": c["verifier_score"]} for p, c, ok in zip(problems, best, result.pop("correct"))]
    n = len(problems)
    out = {**result, "records": records, f"best_of@{k}": result["accuracy"]}
    majority = [majority_correct([c["answer"] for c in by_id[p.id]], [c["correct"] for c in by_id[p.id]])
                for p in problems]
    for name, hits in ((f"maj@{k}", majority), (f"pass@{k}", [any(c["correct"] for c in by_id[p.id]) for p in problems]),
                       ("greedy_accuracy", [bool(greedy.get(p.id)) for p in problems])):
        low, high = wilson(sum(hits), n)
        out.update({name: sum(hits) / n if n else 0.0, f"{name}_ci_low": low, f"{name}_ci_high": high})
    right = [c["verifier_score"] for c in candidates if c["correct"]]
    wrong = [c["verifier_score"] for c in candidates if not c["correct"]]
    out["verifier_score_right_mean"] = sum(right) / len(right) if right else None
    out["verifier_score_wrong_mean"] = sum(wrong) / len(wrong) if wrong else None
    out.update(verifier_ranking(by_id))
    return out


def verifier_ranking(by_id: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """How well the verifier ranks within a problem, which is all best-of-k uses: the share of (right,
    wrong) candidate pairs of the same problem where the right one scores higher (ties count half; 0.5 =
    chance), with the number of pairs and a 95% Wilson interval.

    >>> c = {"a": [{"correct": True, "verifier_score": 2.0}, {"correct": False, "verifier_score": 1.0},
    ...            {"correct": False, "verifier_score": 3.0}]}
    >>> verifier_ranking(c)["verifier_pair_accuracy"], verifier_ranking(c)["verifier_pairs"]
    (0.5, 2)
    """
    wins, n = 0.0, 0
    for cands in by_id.values():
        for r in (c["verifier_score"] for c in cands if c["correct"]):
            for w in (c["verifier_score"] for c in cands if not c["correct"]):
                wins += 1.0 if r > w else 0.5 if r == w else 0.0
                n += 1
    low, high = wilson(round(wins), n) if n else (None, None)
    return {"verifier_pair_accuracy": wins / n if n else None, "verifier_pairs": n,
            "verifier_pair_ci_low": low, "verifier_pair_ci_high": high}
