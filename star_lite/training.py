"""What every star_lite trainer shares: its error, its result (``TrainResult``), the step schedule, saving an
adapter so that an ``adapter/`` directory that exists is always complete, and freeing memory after it.

SFT itself (``train_adapter``, one fresh LoRA adapter on the frozen base with TRL's SFTTrainer) is in
``star_lite/trainers/sft.py``, and importable from here as before.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .models import mark_adapter
from .rundir import fault_point
from .trainers.args import uses_bf16_autocast  # noqa: F401 (importable here too)

class TrainingError(RuntimeError):
    """Training cannot go on; the message says what to change."""


@dataclass
class TrainResult:
    """What one training run reports besides its adapter."""

    history: list[dict[str, Any]] = field(default_factory=list)  # the trainer's logged rows with a loss
    train_loss: float | None = None  # the trainer's mean training loss over all steps (logged or not)
    trained_tokens: int = 0  # tokens through forward and backward, padding excluded (the cost axis)
    world_size: int = 1  # processes the trainer trained on (data-parallel under accelerate launch)
    stop_reason: str | None = None  # RL: "budget" (run.budget_* spent) or "steps" (rl.steps reached)

    @classmethod
    def from_trainer(cls, trainer, key: str = "loss") -> "TrainResult":
        logs = trainer.state.log_history
        summary = next((h for h in reversed(logs) if "train_loss" in h), {})
        return cls(history=[h for h in logs if key in h], train_loss=summary.get("train_loss"),
                   trained_tokens=int(trainer.state.num_input_tokens_seen or 0),
                   world_size=trainer.accelerator.num_processes)


def num_steps(iteration: int, start_steps: int, growth: float) -> int:
    """Training steps for ``iteration`` (1-based): start_steps * growth^(iteration-1).

    >>> [num_steps(i, 40, 1.2) for i in (1, 2, 3)]
    [40, 48, 57]
    """
    return max(1, int(start_steps * growth ** (iteration - 1)))


def training_steps(iteration: int, num_examples: int, train) -> int:
    """Steps of one iteration's training (``train``: the TrainConfig): STaR's growing schedule, and
    with ``train.epochs`` > 0 at least that many passes over the iteration's ``num_examples``
    (ReST-EM's M-step fine-tunes on the whole E-step set, so a large kept set gets more steps;
    a small one still trains as long as the schedule, so ReST-EM never trains less than STaR).

    >>> from star_lite.config import TrainConfig
    >>> rest_em = TrainConfig(epochs=1.0, batch_size=8)
    >>> training_steps(2, 100, TrainConfig()), training_steps(2, 100, rest_em), training_steps(2, 1000, rest_em)
    (48, 48, 125)
    """
    scheduled = num_steps(iteration, train.start_steps, train.step_growth)
    if train.epochs > 0:
        per_step = train.batch_size * train.gradient_accumulation_steps
        return max(scheduled, math.ceil(train.epochs * num_examples / per_step))
    return scheduled


@contextlib.contextmanager
def collector_skips_existing_objects():
    """While inside, the cyclic garbage collector leaves alone every object that existed on entry (``gc.freeze``):
    the libraries, the tokenizer, the base model, which accelerate's collection
    at the end of ``Trainer.train`` and star_lite's after it would otherwise walk, to free only the trainer.
    They are back in the collector's reach on exit (``gc.unfreeze``, which also releases objects the caller
    froze), so whatever of them becomes garbage later is still freed."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def save_adapter(model, target: Path) -> None:
    """Save a peft adapter under a temporary name and rename it, so ``target`` is always complete.
    Under accelerate launch rank 0 saves and the others wait for it (a vLLM engine in any process
    loads the adapter from there)."""
    if distributed.is_main():
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    distributed.barrier()
    mark_adapter(model, target)
    fault_point("adapter_saved")


def remove_if_empty(path: Path) -> None:
    """Drop a trainer's output directory unless a logger (report_to) wrote into it."""
    if distributed.is_main() and path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_SFT_NAMES = ("checkpointing_off", "lm_head_kind", "train_adapter", "truncate")


def __getattr__(name: str):
    """SFT's names, importable from here as before; they live in trainers/sft.py, which imports this module."""
    if name in _SFT_NAMES:
        from .trainers import sft

        return getattr(sft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
