"""What every method's stages share: the budget check between stages, evaluating a stage, its metrics row,
and the RL summaries. Each method module reads top to bottom with these."""

from __future__ import annotations

import time
from typing import Any

from pathlib import Path

from .. import distributed, phases, reuse
from ..budget import budget_spent
from ..config import Config
from ..evaluation import evaluate_into
from ..loop import log, peak_memory_mb
from ..models import detach_adapter
from ..rundir import RunDir
from ..trainers.sft import train_adapter
from ..training import num_steps, release_memory


def stopped_for_budget(rundir: RunDir, cfg: Config, where: str) -> bool:
    """Whether the finished stages spent the budget, so the next stage (``where``) does not start; if so,
    logged and recorded as the run's stop reason."""
    spent = budget_spent(rundir.metrics(), cfg)
    if spent:
        log(f"{rundir.root.name}: budget reached ({spent}) {where}")
        rundir.record_stop("budget", f"{spent}, {where}")
    return spent is not None


def rl_summary(trained) -> dict[str, Any]:
    """From ``train_rl``'s ``TrainResult`` (one history row per step): steps, the mean reward of the
    first and last steps and of the first and last quarter of them, the mean share of zero-variance
    groups trained on, groups dropped by dynamic sampling, the last KL to the reference (None with
    rl.beta = 0), the adapter's update norm, the mean completion length and the trained tokens."""
    history = trained.history

    def mean(key, rows):
        values = [h[key] for h in rows if h.get(key) is not None]
        return sum(values) / len(values) if values else None

    quarter = max(1, len(history) // 4)
    return {"rl_steps": history[-1].get("step", 0) if history else 0,
            "rl_reward_first": history[0]["reward"] if history else None,
            "rl_reward_last": history[-1]["reward"] if history else None,
            "rl_reward_first_quarter": mean("reward", history[:quarter]),
            "rl_reward_last_quarter": mean("reward", history[-quarter:]),
            "rl_zero_variance_share": mean("zero_variance_share", history),
            "rl_groups_dropped": sum(h.get("groups_dropped") or 0 for h in history),
            "rl_kl_last": history[-1].get("kl") if history else None,
            "rl_update_norm": history[-1].get("update_norm") if history else None,
            "rl_completion_length": mean("completion_length", history),
            "rl_stop_reason": trained.stop_reason,
            "trained_tokens": trained.trained_tokens, "train_world_size": trained.world_size}


def reward_false_positives(counter: dict[str, int]) -> dict[str, Any]:
    """The share of RL rollouts the grader rewarded that reached the answer through a wrong step."""
    right = counter.get("right", 0)
    return {"rl_false_positive_share": counter.get("false_positive", 0) / right if right else None}


@phases.timed("eval")
def evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg: Config, few_shot: bool) -> dict[str, Any]:
    """Held-out test accuracy of a stage (``eval.jsonl``) and, with ``task.num_validation`` > 0, its
    validation accuracy (``validation.jsonl``): what compare.tune chooses on, never test."""
    from ..loop import load_validation

    return evaluate_into(it_dir / "eval.jsonl", model, tokenizer, task, test, cfg, few_shot=few_shot,
                         validation=load_validation(cfg, task, train, test))


def finish_row(rundir: RunDir, it: int, stage: str, t0: float, result: dict, **extra) -> dict[str, Any]:
    row = {"iteration": it, "stage": stage, **result, "num_rationalized": 0, **extra,
           "seconds": round(time.time() - t0, 1), **phases.take(), **reuse.take(),
           "peak_memory_mb": round(peak_memory_mb())}
    row.setdefault("num_train_examples", 0)
    row.setdefault("generated_tokens", 0)
    rundir.add_metrics(row)
    log(f"{rundir.root.name} {stage}: accuracy {result['accuracy']:.3f}, {row['seconds']:.0f}s"
        + (f" (+{row['seconds_reused']:.0f}s of another method's identical work reused)" if row.get("seconds_reused") else ""))
    return row


def last_logged(history: list[dict[str, Any]], key: str):
    return next((h[key] for h in reversed(history) if key in h), None)


def first_logged(history: list[dict[str, Any]], key: str):
    return next((h[key] for h in history if key in h), None)


def sft_stage(rundir: RunDir, base, tokenizer, task, train, test, cfg: Config, kept: list[dict[str, Any]],
              t0: float, cache: Path, **row):
    """Stage 1 of grpo and self-motivated: a fresh adapter on the kept rationales for STaR's first-iteration
    steps, evaluated and recorded as stage "sft" (``row``: the method's own fields, e.g. what sampling
    them cost); the sampling ``cache`` is removed. Returns the base model with the adapter detached."""
    sft_dir = rundir.iter_dir(1)
    steps = num_steps(1, cfg.train.start_steps, cfg.train.step_growth)
    model, trained = train_adapter(base, tokenizer, [{"prompt": k["prompt"], "completion": k["completion"]}
                                                     for k in kept], cfg, steps, sft_dir, seed=cfg.run.seed + 1)
    result = evaluate_stage(sft_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
    finish_row(rundir, 1, "sft", t0, result, num_train_examples=len(kept), steps=steps, **row,
               train_loss=trained.train_loss, trained_tokens=trained.trained_tokens,
               train_world_size=trained.world_size)
    if distributed.is_main():
        cache.unlink(missing_ok=True)
    base = detach_adapter(model)
    del model
    release_memory()
    return base
