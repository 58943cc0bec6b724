"""sft-direct: one adapter trained on gold answers with no rationale, as many steps as all of STaR's
iterations together (STaR's "direct fine-tuning" baseline, Zelikman et al. 2022)."""

from __future__ import annotations

from typing import Any

from .. import phases
from ..config import Config
from ..loop import start_run
from ..rundir import RunDir, write_jsonl
from ..trainers.sft import train_adapter
from ..training import num_steps
from .common import evaluate_stage, finish_row
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.train.start_steps = sum(num_steps(i, cfg.train.start_steps, cfg.train.step_growth)
                              for i in range(1, cfg.star.iterations + 1))
    c.star.iterations = 1


@register("sft-direct", summary="one adapter on gold answers, as many steps as STaR's iterations together",
          configure=configure)
def run_sft_direct(cfg: Config) -> list[dict[str, Any]]:
    """Fine-tune on gold answers, no rationale (STaR's 'direct fine-tune' baseline)."""
    started = start_run(cfg)
    if started is None:
        return RunDir(cfg.run.output_dir).metrics()
    rundir, task, train, test, tokenizer, base, _ = started
    t0, it_dir = phases.start(), rundir.iter_dir(1)
    examples = [{"prompt": task.format_question(p), "completion": task.format_completion(task.direct_answer(p))}
                for p in train]
    write_jsonl(it_dir / "train.jsonl", examples)
    model, trained = train_adapter(base, tokenizer, examples, cfg, cfg.train.start_steps, it_dir,
                                   seed=cfg.run.seed + 1)
    result = evaluate_stage(it_dir, model, tokenizer, task, train, test, cfg, few_shot=False)
    finish_row(rundir, 1, "sft-direct", t0, result, num_train_examples=len(examples),
                steps=cfg.train.start_steps, train_loss=trained.train_loss, trained_tokens=trained.trained_tokens,
                train_world_size=trained.world_size)
    rundir.record_stop("schedule", f"{cfg.train.start_steps} steps on gold answers; generates nothing")
    return rundir.metrics()
