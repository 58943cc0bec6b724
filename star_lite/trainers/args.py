"""The one place the settings every TRL trainer shares are built: device, precision, logging, seed,
checkpointing. SFT (``training.train_adapter``), the reward model, GRPO and DPO (``trainers.reward``,
``trainers.grpo``, ``trainers.dpo``) all start from ``shared_args`` and add only what is their own; the
last three also share the adapter's dtype and how a trained policy is saved (below)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import Config
from ..models import native_bfloat16, resolve_device, resolve_dtype
from ..progress import bars_enabled


def uses_bf16_autocast(setting: str, device: str, dtype: torch.dtype) -> bool:
    """Whether a trainer runs under bfloat16 autocast (SFT: ``train.autocast``; the others ``rl_bf16``). The trainable LoRA weights and the
    optimizer state stay float32 either way; only the matmuls run in bfloat16.

    >>> uses_bf16_autocast("off", "cpu", torch.float32), uses_bf16_autocast("bfloat16", "cpu", torch.float32)
    (False, True)
    """
    if setting != "auto":
        return setting == "bfloat16"
    if device == "cuda":
        return dtype == torch.bfloat16  # a GPU trains in the model's compute dtype
    return dtype == torch.float32 and native_bfloat16(device)  # emulated bfloat16 is slower than float32


def shared_args(cfg: Config, *, bf16: bool) -> dict[str, Any]:
    """The TrainingArguments fields every star_lite trainer sets alike; ``bf16``: bfloat16 autocast (SFT:
    ``uses_bf16_autocast(train.autocast)``, the others ``rl_bf16``). On a GPU without it, fp16 mixed
    precision where the model computes in float16.

    >>> from star_lite.config import from_dict
    >>> a = shared_args(from_dict({"model": {"device": "cpu"}}), bf16=False)
    >>> a["use_cpu"], a["bf16"], a["fp16"], a["save_strategy"], a["activation_checkpointing"]
    (True, False, False, 'no', False)
    """
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    return {"use_cpu": device == "cpu", "bf16": bf16, "fp16": device == "cuda" and dtype == torch.float16 and not bf16,
            "report_to": cfg.train.report_to, "save_strategy": "no", "seed": cfg.run.seed,
            "logging_steps": cfg.train.logging_steps, "disable_tqdm": not bars_enabled(),
            # TRL's trainers turn gradient checkpointing on by default (every layer computed twice)
            "activation_checkpointing": cfg.train.gradient_checkpointing}


def rl_bf16(cfg: Config) -> bool:
    """Whether the reward model, GRPO, DPO and the verifier compute under bfloat16 autocast: on a GPU as
    SFT does (``train.autocast``), on a CPU as ``train.rl_autocast`` says (auto: where the CPU multiplies
    bfloat16 natively and the base is unquantized float32, as ``sampling.autocast``; NF4 on a CPU under
    bfloat16 is not measured).

    >>> from star_lite.config import from_dict
    >>> rl_bf16(from_dict({"model": {"device": "cpu"}, "train": {"rl_autocast": "off"}}))
    False
    >>> rl_bf16(from_dict({"model": {"device": "cpu"}, "train": {"rl_autocast": "bfloat16", "autocast": "off"}}))
    True
    """
    device = resolve_device(cfg.model.device)
    if device == "cuda":
        return uses_bf16_autocast(cfg.train.autocast, device, resolve_dtype(cfg.model.compute_dtype, device))
    if cfg.train.rl_autocast == "auto" and cfg.model.load_in_4bit:
        return False
    return uses_bf16_autocast(cfg.train.rl_autocast, device, resolve_dtype(cfg.model.compute_dtype, device))


def trainer_args(cfg: Config) -> dict[str, Any]:
    """``shared_args`` as the reward model, GRPO and DPO take them (precision: ``rl_bf16``)."""
    return shared_args(cfg, bf16=rl_bf16(cfg))


@contextlib.contextmanager
def rl_precision(model, cfg: Config, *, autocast: bool = False) -> Iterator[bool]:
    """Around a reward, GRPO or DPO trainer's ``train()`` (or, with ``autocast``, the verifier's scoring):
    under ``rl_bf16`` on a CPU, the frozen float32 base as one bfloat16 copy (autocast would cast it at every
    matmul to the same values) and, with ``autocast``, the block under bfloat16 autocast (a trainer's forward
    has it from accelerate). Yields whether it applies; float32 again after."""
    device = resolve_device(cfg.model.device)
    if not (rl_bf16(cfg) and device == "cpu"):
        yield False
        return
    from peft.helpers import disable_input_dtype_casting

    from ..fastpaths import bfloat16_frozen_weights

    with contextlib.ExitStack() as stack:
        if autocast:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        stack.enter_context(bfloat16_frozen_weights(model))
        stack.enter_context(disable_input_dtype_casting(model))  # as in SFT: a bfloat16 input stays bfloat16
        yield True


@contextlib.contextmanager
def rl_lm_head(cfg: Config) -> Iterator[bool]:
    """``train.lm_head`` for TRL's DPO and GRPO trainers, around their ``train()``: with ``completion`` (``auto``
    on a CPU) TRL's fused head scores only the positions the loss reads, in plain torch
    (``fastpaths.scored_positions_head``); on a GPU (``auto``, ``trl``) TRL's Triton head runs. Yields whether
    it applies."""
    from ..fastpaths import scored_positions_head
    from .sft import lm_head_kind

    if lm_head_kind(cfg.train.lm_head, resolve_device(cfg.model.device)) != "completion":
        yield False
        return
    with scored_positions_head() as applied:
        yield applied


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
