"""grpo: GRPO (Shao et al. 2024) rewarded by the task's grader, from an SFT adapter on the base's own right
rationales (rl.grpo_init: sft, as DeepSeekMath starts from an SFT model) or from the base, until the budget
is spent; DAPO's dynamic sampling (Yu et al. 2025) redraws groups whose rewards are all equal."""

from __future__ import annotations

from typing import Any

from .. import distributed, phases
from ..budget import Budget
from ..config import Config
from ..loop import clear_unfinished, keep_examples, log, sample_rationales, start_run
from ..models import fresh_adapter
from ..rundir import RunDir, write_jsonl
from .common import evaluate_stage, finish_row, reward_false_positives, rl_summary, sft_stage, stopped_for_budget
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.iterations = 2 if cfg.rl.grpo_init == "sft" else 1  # (the SFT adapter, then) GRPO


@register("grpo", summary="an SFT adapter on the base's own right rationales, then GRPO until the budget",
          sections=("rl",), configure=configure)
def run_grpo(cfg: Config) -> list[dict[str, Any]]:
    """GRPO rewarded by the task's grader alone, from ``rl.grpo_init``: "sft" (default) first trains an SFT
    adapter on the base model's own right rationales (greedy, few-shot, filtered by the grader: one STaR
    iteration without rationalization; stage 1), then runs GRPO from it on bare questions, KL-anchored to
    it (stage 2), as DeepSeekMath starts GRPO from an SFT model; "base" runs GRPO from a fresh adapter on
    few-shot prompts (the base needs them), anchored to the base (a fresh adapter starts equal to it).
    GRPO runs until the budget is spent (``rl.steps`` 0) or ``rl.steps``."""
    from peft import PeftModel
    from transformers import set_seed

    from ..trainers.grpo import make_reward, train_rl

    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, finished = started
    from_sft = cfg.rl.grpo_init == "sft"
    if from_sft and 1 not in finished:
        # --- the SFT start: the base's own right rationales ------------------------------------
        t0, sft_dir = phases.start(), rundir.iter_dir(1)
        clear_unfinished(sft_dir)
        cache = sft_dir / "samples.partial.jsonl"
        budget = Budget.for_iteration(rundir.metrics(), cfg, cache, started=t0)
        samples = sample_rationales(base, tokenizer, task, train, cfg, hint=False, few_shot=True, cache=cache,
                                    budget=budget)
        write_jsonl(sft_dir / "samples.jsonl", samples)
        kept = keep_examples(task, train, samples)
        write_jsonl(sft_dir / "train.jsonl", kept)
        if not kept:
            log("grpo: the base answered no training problem right, so no SFT start; try rl.grpo_init=base")
            rundir.record_stop("no_data", "no right rationale for the SFT start")
            return rundir.metrics()
        base = sft_stage(rundir, base, tokenizer, task, train, test, cfg, kept, t0, cache,
                         generated_tokens=sum(s["tokens"] for s in samples), budget_exhausted=budget.cut is not None)
    if stopped_for_budget(rundir, cfg, "before RL"):
        return rundir.metrics()

    # --- GRPO, rewarded by the grader ----------------------------------------------------------
    it = 2 if from_sft else 1
    t0, it_dir = phases.start(), rundir.iter_dir(it)
    it_dir.mkdir(parents=True, exist_ok=True)
    counter: dict[str, int] = {}
    if distributed.is_main():
        (it_dir / "rollouts.jsonl").unlink(missing_ok=True)  # an interrupted attempt's rollouts
    reward = make_reward(task, {p.id: p for p in train}, correctness_weight=1.0, counter=counter,
                         num_generations=cfg.rl.num_generations, rollouts=it_dir / "rollouts.jsonl")
    set_seed(cfg.run.seed + it)
    policy = (PeftModel.from_pretrained(base, str(rundir.iter_dir(1) / "adapter"), is_trainable=True) if from_sft
              else fresh_adapter(base, cfg.model))
    model, trained = train_rl(policy, tokenizer, task, train, reward, cfg, it_dir,
                              num_few_shot=0 if from_sft else cfg.task.num_few_shot,
                              budget=Budget.from_rows(rundir.metrics(), cfg), counter=counter)
    result = evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg, few_shot=not from_sft)
    summary = rl_summary(trained)
    finish_row(rundir, it, "rl", t0, result, generated_tokens=counter.get("tokens", 0), rl_init=cfg.rl.grpo_init,
                **summary, **reward_false_positives(counter))
    rundir.record_stop(trained.stop_reason, f"RL: {summary['rl_steps']} steps")
    return rundir.metrics()
