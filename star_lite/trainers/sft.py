"""SFT: one fresh LoRA adapter on the frozen base, trained with TRL's SFTTrainer (``train_adapter``).

Examples are prompt/completion pairs, so the loss falls on the completion (rationale and answer) only.
The adapter is written to a temporary directory and renamed into place (``training.save_adapter``), so
an ``adapter/`` directory that exists is always complete. What the other trainers share with it (the
step schedule, TrainResult, saving) is in ``star_lite/training.py``; the TRL settings in ``args.py``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from .. import fastpaths, phases, reuse
from ..config import Config
from ..models import fresh_adapter, resolve_device, resolve_dtype
from ..progress import quiet_libraries, quiet_trainer
from ..rundir import fault_point
from ..training import (TrainingError, TrainResult, collector_skips_existing_objects, release_memory,
                        remove_if_empty, save_adapter)
from .args import shared_args, uses_bf16_autocast


def lm_head_kind(setting: str, device: str) -> str:
    """``train.lm_head`` resolved: "completion" on a CPU, "trl" (TRL's chunked Triton head) on a GPU."""
    if setting != "auto":
        return setting
    return "completion" if device == "cpu" else "trl"


def _trainer_class(lm_head: str):
    """TRL's SFTTrainer, or (``lm_head="completion"``) one whose loss projects only the scored positions.

    TRL's fused head scores every position on a device without Triton (prompt tokens included), and
    computes each token's entropy and top-1 accuracy over the whole vocabulary for its logs; on a CPU
    that is about a third of a step for a 49k vocabulary. Nothing here reads those logs.
    """
    from trl import SFTTrainer

    if lm_head == "trl":
        return SFTTrainer

    class CompletionLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            scored, targets = fastpaths.next_token_positions(labels, labels != -100)
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs, use_cache=False, logits_to_keep=scored)
            logits = outputs.logits.reshape(-1, outputs.logits.size(-1))
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            # the same normalisation as TRL's: tokens of the whole accumulated batch when the Trainer gives them
            count = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # the count is every process's tokens and DDP averages the gradients: scale back up, as the
                # Trainer's own compute_loss does, or N processes would train at 1/N of the step
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return CompletionLossTrainer


def _callbacks():
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(value):
                    raise TrainingError(
                        f"training {key.replace('_', ' ')} became {value} at step {state.global_step}. Lower "
                        "train.learning_rate (e.g. halve it), or use model.compute_dtype=bfloat16 instead of float16.")

    class FaultPoint(TrainerCallback):  # crash tests kill the process after a step (rundir.fault_point)
        def on_step_end(self, args, state, control, **kwargs):
            fault_point("train_step")

    return [StopOnNonFiniteLoss(), FaultPoint()]


@collector_skips_existing_objects()
@phases.timed("training")
def train_adapter(base, tokenizer, examples: list[dict[str, str]], cfg: Config, steps: int, out_dir: Path,
                  seed: int = 0):
    """Train a new adapter on ``examples`` ({"prompt", "completion"}) for ``steps`` steps.

    The adapter's initial weights depend on ``seed`` alone (not on what ran before in the
    process), so a resumed run trains exactly the adapter an uninterrupted one would.
    Returns the trained PeftModel (in eval mode) and a ``TrainResult``; saves the adapter to
    ``out_dir/adapter``.
    """
    from datasets import Dataset
    from peft.helpers import disable_input_dtype_casting
    from transformers import set_seed
    from trl import SFTConfig

    quiet_libraries()
    if not examples:
        raise TrainingError("no training examples")
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    bf16 = uses_bf16_autocast(cfg.train.autocast, device, dtype)
    set_seed(seed)
    model = fresh_adapter(base, cfg.model)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    work_dir = out_dir / "trainer"  # TRL's report_to logs (tensorboard, ...) land here
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        learning_rate=cfg.train.learning_rate,
        warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay,
        # padding-free flattens each batch into one row; TRL then leaves truncation to us (below)
        max_length=None if cfg.train.padding_free else cfg.train.max_length,
        padding_free=cfg.train.padding_free,
        completion_only_loss=True,
        include_num_input_tokens_seen="non_padding",  # the comparison's cost counts trained tokens
        logging_nan_inf_filter=False,  # a NaN loss must reach the guard, not be averaged away
        dataset_num_proc=None,
        # device, precision (bfloat16 autocast on a capable CPU too: float32 LoRA weights and optimizer
        # state, bfloat16 matmuls), logging, seed, checkpointing: as every trainer sets them
        **shared_args(cfg, bf16=bf16),
    )
    trainer_class = _trainer_class(lm_head_kind(cfg.train.lm_head, device))
    trainer = quiet_trainer(trainer_class(model=model, args=args, train_dataset=Dataset.from_list(examples),
                                          processing_class=tokenizer, callbacks=_callbacks()))
    if cfg.train.padding_free:
        trainer.train_dataset = truncate(trainer.train_dataset, cfg.train.max_length)
    with contextlib.ExitStack() as fast:  # each undone after training (fastpaths)
        if fastpaths.resolve(cfg.train.packed_attention, "segments", cfg.train.padding_free):
            fast.enter_context(fastpaths.attention_by_segments(model))
        if fastpaths.resolve(cfg.train.frozen_weights, "bfloat16", True) and bf16:
            fast.enter_context(fastpaths.bfloat16_frozen_weights(model))
        if bf16:  # peft would cast a bfloat16 input up to the float32 LoRA weights' dtype and autocast back down,
            # for the same values (dropout's scale is applied in float32 either way): the input stays bfloat16
            fast.enter_context(disable_input_dtype_casting(model))
        if fastpaths.resolve(cfg.train.dropout, "fast", device == "cpu"):
            fast.enter_context(fastpaths.fast_lora_dropout(model))
        trainer.train()
    if cfg.train.gradient_checkpointing:  # sampling and evaluation next: KV cache on, no recomputation
        checkpointing_off(model.base_model.model)
    result = TrainResult.from_trainer(trainer)
    save_adapter(model, out_dir / "adapter")
    remove_if_empty(work_dir)
    del trainer  # release optimizer state before the next iteration
    release_memory()
    model.eval()
    return model, result


train_adapter = reuse.memoized_sft(train_adapter)  # compare.reuse: a run another method already trained


def truncate(dataset, max_length: int):
    """Cut tokenized examples (input_ids and the masks beside them) to ``max_length`` tokens,
    as TRL does itself when batches are padded."""
    columns = [c for c in dataset.column_names if c in ("input_ids", "labels", "completion_mask", "assistant_masks")]

    def cut(example):
        return {c: example[c][:max_length] for c in columns}

    return dataset.map(cut)


def checkpointing_off(model) -> None:
    """Activation (gradient) checkpointing off, by the name this transformers version has not deprecated."""
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    off()
