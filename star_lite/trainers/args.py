"""The one place the settings every TRL trainer shares are built: device, precision, logging, seed,
checkpointing. SFT (``training.train_adapter``), the reward model, GRPO and DPO (``trainers.reward``,
``trainers.grpo``, ``trainers.dpo``) all start from ``shared_args`` and add only what is their own; the
last three also share the adapter's dtype and how a trained policy is saved (below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models import native_bfloat16, resolve_device, resolve_dtype
from ..progress import bars_enabled


def uses_bf16_autocast(setting: str, device: str, dtype: torch.dtype) -> bool:
    """Whether SFT runs under bfloat16 autocast (``train.autocast``). The trainable LoRA weights and the
    optimizer state stay float32 either way; only the matmuls run in bfloat16.

    >>> uses_bf16_autocast("off", "cpu", torch.float32), uses_bf16_autocast("bfloat16", "cpu", torch.float32)
    (False, True)
    """
    if setting != "auto":
        return setting == "bfloat16"
    if device == "cuda":
        return dtype == torch.bfloat16  # a GPU trains in the model's compute dtype
    return dtype == torch.float32 and native_bfloat16(device)  # emulated bfloat16 is slower than float32


def shared_args(cfg: Config, *, cpu_autocast: bool) -> dict[str, Any]:
    """The TrainingArguments fields every star_lite trainer sets alike.

    Precision: on a GPU the model's compute dtype (bf16 or fp16 mixed precision). On a CPU,
    ``cpu_autocast`` decides: SFT passes True and follows ``train.autocast`` (bfloat16 autocast where the
    CPU computes it natively); the reward model, GRPO and DPO pass False and train in float32 on a CPU,
    as every comparison so far measured them (their bfloat16 accuracy is not measured yet).

    >>> from star_lite.config import from_dict
    >>> a = shared_args(from_dict({"model": {"device": "cpu"}}), cpu_autocast=False)
    >>> a["use_cpu"], a["bf16"], a["fp16"], a["save_strategy"], a["activation_checkpointing"]
    (True, False, False, 'no', False)
    """
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    if device == "cuda" or cpu_autocast:
        bf16 = uses_bf16_autocast(cfg.train.autocast, device, dtype)
    else:
        bf16 = False
    return {"use_cpu": device == "cpu", "bf16": bf16, "fp16": device == "cuda" and dtype == torch.float16 and not bf16,
            "report_to": cfg.train.report_to, "save_strategy": "no", "seed": cfg.run.seed,
            "logging_steps": cfg.train.logging_steps, "disable_tqdm": not bars_enabled(),
            # TRL's trainers turn gradient checkpointing on by default (every layer computed twice)
            "activation_checkpointing": cfg.train.gradient_checkpointing}


def trainer_args(cfg: Config) -> dict[str, Any]:
    """``shared_args`` as the reward model, GRPO and DPO take them: float32 on a CPU (their bfloat16 autocast
    was not measured)."""
    return shared_args(cfg, cpu_autocast=False)


def match_adapter_dtype(model, cfg: Config) -> None:
    """TRL casts QLoRA adapter weights to bfloat16; keep them in the compute dtype instead, which
    on a CPU is float32 (bfloat16 adapters on a float32 base fail with a dtype mismatch)."""
    dtype = resolve_dtype(cfg.model.compute_dtype, resolve_device(cfg.model.device))
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def save_policy(trainer, out_dir: Path, work_dir: Path, key: str = "loss"):
    """After a TRL preference or RL run on a LoRA policy: its TrainResult, and the policy without TRL's
    frozen "ref" adapter, saved to ``out_dir/adapter`` and in eval mode."""
    from ..training import TrainResult, remove_if_empty, save_adapter  # training imports this module

    result = TrainResult.from_trainer(trainer, key=key)
    model = trainer.model
    if "ref" in model.peft_config:  # TRL's frozen reference: not part of the trained policy
        model.delete_adapter("ref")
    save_adapter(model, out_dir / "adapter")
    remove_if_empty(work_dir)
    return model.eval(), result
