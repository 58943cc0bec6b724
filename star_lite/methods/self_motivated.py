"""self-motivated (Feng et al. 2024): rationales written for the gold answer and for wrong answers, ranked
by the grader; SFT on the right ones (stage 1), a reward model on right-over-wrong pairs of the same question,
then RL (GRPO) from the SFT policy with the reward model's standardised score plus the grader (stage 2)."""

from __future__ import annotations

import copy
from typing import Any

from .. import distributed, phases
from ..budget import Budget
from ..config import Config
from ..loop import keep_examples, log, sample_rationales, start_run
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..training import release_memory
from .common import evaluate_stage, finish_row, reward_false_positives, rl_summary, sft_stage, stopped_for_budget
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.iterations = 2  # SFT, then the reward model and RL


def sample_conditioned_rationales(model, tokenizer, task, problems, cfg: Config, cache) -> tuple[list, list]:
    """Self-motivated learning's data: for every question, one rationale hinted with the gold answer
    and one per wrong answer (``task.wrong_answers``; for a task that has none, the model's own wrong
    answers among ``rl.samples_per_problem`` free samples). Each is graded against the gold answer;
    one that gives its hint away (``task.leaks_hint``) is marked ``leaked``. Returns the conditioned
    rationales and the free samples (for their token cost)."""
    n = cfg.rl.wrong_answers_per_problem
    sample_cfg = copy.deepcopy(cfg)
    sample_cfg.sampling.temperature = cfg.rl.temperature
    wrong = {p.id: [a for a in task.wrong_answers(p, n) if a != p.answer][:n] for p in problems}
    need = [p for p in problems if not wrong[p.id]]
    free = []
    if need:
        free = sample_rationales(model, tokenizer, task, need, sample_cfg, hint=False, few_shot=True, cache=cache,
                                 num_samples=cfg.rl.samples_per_problem)
        for s in free:
            if not s["correct"] and s["answer"] is not None and s["answer"] not in wrong[s["id"]] \
                    and len(wrong[s["id"]]) < n:
                wrong[s["id"]].append(s["answer"])
    conditioned = sample_rationales(model, tokenizer, task, problems, sample_cfg, hint=True, few_shot=True,
                                    cache=cache, hint_answers={p.id: [p.answer] + wrong[p.id] for p in problems})
    for s in conditioned:  # sample_rationales judged the raw text against the answer it was hinted
        s["leaked"] = s.get("rejected") == "hint"
    return conditioned, free


@register("self-motivated", summary="SFT on answer-conditioned rationales, a reward model, then GRPO",
          sections=("rl",), configure=configure)
def run_self_motivated(cfg: Config) -> list[dict[str, Any]]:
    """Self-motivated learning (Feng et al. 2024): rationales for the right and for wrong answers, SFT
    on the right ones (1), then a reward model on right-over-wrong pairs and RL from the SFT policy (2)."""
    from ..trainers.grpo import make_reward, train_rl
    from ..trainers.pairs import preference_pairs, split_pairs
    from ..trainers.reward import pair_accuracy_summary, reward_model_standardisation, train_reward_model

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    sft_dir = rundir.iter_dir(1)
    if 1 not in finished:
        # --- rationales conditioned on the gold answer and on wrong ones, graded -----------
        t0 = phases.start()
        samples, free = sample_conditioned_rationales(base, tokenizer, task, train, cfg,
                                                      cache=sft_dir / "samples.partial.jsonl")
        write_jsonl(sft_dir / "samples.jsonl", samples)
        write_jsonl(sft_dir / "free_samples.jsonl", free)
        kept = keep_examples(task, train, [s for s in samples if not s["leaked"]])
        write_jsonl(sft_dir / "train.jsonl", kept)
        if not kept:
            log("self-motivated: no right rationale to train on, even hinted with the gold answer; stopping")
            rundir.record_stop("no_data", "no right rationale, even hinted")
            return rundir.metrics()

        # --- SFT on the right ones ------------------------------------------------------------
        base = sft_stage(rundir, base, tokenizer, task, train, test, cfg, kept, t0, sft_dir / "samples.partial.jsonl",
                         num_rejected_hint=sum(s["leaked"] for s in samples),
                         generated_tokens=sum(s["tokens"] for s in samples + free))

    if stopped_for_budget(rundir, cfg, "after SFT, before the reward model and RL"):
        return rundir.metrics()

    # --- reward model on right-over-wrong pairs of the same question -------------------------
    t0, rl_dir = phases.start(), rundir.iter_dir(2)
    pairs = preference_pairs(task, train, [s for s in read_jsonl(sft_dir / "samples.jsonl") if not s.get("leaked")])
    train_pairs, held_pairs = split_pairs(pairs, cfg.rl.heldout_fraction, cfg.run.seed)
    write_jsonl(rl_dir / "pairs.jsonl", [dict(p, heldout=p in held_pairs) for p in pairs])
    init = sft_dir / "adapter" if cfg.rl.reward_model_init == "sft" else None
    reward_model, rm = train_reward_model(cfg, tokenizer, train_pairs, rl_dir, init_adapter=init)
    pair_acc = pair_accuracy_summary(reward_model, tokenizer, held_pairs)
    log(f"self-motivated: reward model pairwise accuracy {pair_acc['reward_model_pair_accuracy']} on "
        f"{len(held_pairs)} held-out pairs (95% interval {pair_acc['reward_model_pair_ci_low']}"
        f"-{pair_acc['reward_model_pair_ci_high']})")

    # --- RL from the SFT policy, KL-anchored to it ----------------------------------------------
    from peft import PeftModel

    policy = PeftModel.from_pretrained(base, str(sft_dir / "adapter"), is_trainable=True)
    counter: dict[str, int] = {}
    if distributed.is_main():
        (rl_dir / "rollouts.jsonl").unlink(missing_ok=True)  # an interrupted attempt's rollouts
    scale = reward_model_standardisation(reward_model, tokenizer, train_pairs)
    reward = make_reward(task, {p.id: p for p in train}, reward_model=reward_model, tokenizer=tokenizer,
                         reward_model_weight=cfg.rl.reward_model_weight, reward_model_scale=scale,
                         correctness_weight=cfg.rl.correctness_weight, counter=counter,
                         num_generations=cfg.rl.num_generations, rollouts=rl_dir / "rollouts.jsonl")
    budget = Budget.from_rows(rundir.metrics(), cfg, trained=rm.trained_tokens)  # the reward model's training counts
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, rl_dir, budget=budget, counter=counter)
    del reward_model
    release_memory()
    result = evaluate_stage(rl_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
    summary = rl_summary(trained)
    summary["trained_tokens"] += rm.trained_tokens  # the reward model's training is part of the method's cost
    finish_row(rundir, 2, "rl", t0, result, generated_tokens=counter.get("tokens", 0),
                reward_model_pairs=len(train_pairs), **pair_acc,
                reward_model_loss=rm.history[-1]["loss"] if rm.history else None,
                reward_model_trained_tokens=rm.trained_tokens, reward_model_init=cfg.rl.reward_model_init,
                reward_model_score_mean=scale[0], reward_model_score_sd=scale[1], **summary,
                **reward_false_positives(counter))
    rundir.record_stop(trained.stop_reason, f"RL: {summary['rl_steps']} steps")
    return rundir.metrics()
