"""The reward model (self-motivated learning, Feng et al. 2024): TRL's RewardTrainer on right-over-wrong
pairs, a LoRA adapter with a one-output head, its scores, its held-out pairwise accuracy and their
standardisation before RL mixes them with the grader."""

from __future__ import annotations

from pathlib import Path
from typing import Any
import torch

from .. import phases
from ..config import Config
from ..models import (bnb_config, lora_config, process_device, quantized_placement, resolve_device, resolve_dtype,
                     resolve_model_path)
from ..progress import quiet_libraries, quiet_trainer
from ..stats import wilson
from .args import match_adapter_dtype, rl_precision, trainer_args
from ..training import TrainingError, TrainResult, release_memory, remove_if_empty, save_adapter


def load_reward_base(cfg: Config, tokenizer):
    """The base model with a one-output sequence-classification head, 4-bit when configured."""
    from transformers import AutoModelForSequenceClassification

    quiet_libraries()
    device = resolve_device(cfg.model.device)
    kwargs: dict[str, Any] = {"num_labels": 1, "dtype": resolve_dtype(cfg.model.compute_dtype, device)}
    if cfg.model.load_in_4bit:
        kwargs.update(quantization_config=bnb_config(cfg.model, device), **quantized_placement(device))
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model.name_or_path), **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not cfg.model.load_in_4bit:
        model.to(process_device(device))
    return model


def reward_model_start(cfg: Config, tokenizer, init_adapter: str | Path | None = None):
    """The reward model before training: the base with a score head and a LoRA adapter, fresh
    (``init_adapter`` None) or holding the LoRA weights of a causal-LM adapter (the SFT one)."""
    from peft import TaskType, get_peft_model
    from safetensors.torch import load_file

    lcfg = lora_config(cfg.model)
    lcfg.task_type = TaskType.SEQ_CLS  # also trains the new score head (peft's modules_to_save)
    model = get_peft_model(load_reward_base(cfg, tokenizer), lcfg)
    if init_adapter is not None:
        # copied by name: peft's loader expects the score head in the file, and the SFT adapter has none
        weights = load_file(str(Path(init_adapter) / "adapter_model.safetensors"))
        lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
        saved = {n.replace(".default.", "."): n for n in lora}
        if set(saved) != set(weights):
            raise TrainingError(f"the adapter in {init_adapter} does not fit the reward model's LoRA layers "
                                f"(model.lora_* settings changed?): {sorted(set(saved) ^ set(weights))[:3]}")
        with torch.no_grad():
            for key, name in saved.items():
                lora[name].copy_(weights[key].to(lora[name].dtype))
    return model


@phases.timed("reward_model")
def train_reward_model(cfg: Config, tokenizer, pairs: list[dict[str, Any]], out_dir: Path,
                       init_adapter: str | Path | None = None):
    """Train a LoRA reward model on preference pairs, from ``reward_model_start``; saves it to
    ``out_dir/reward_model``. Returns the model and a ``TrainResult`` (loss, trained tokens)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if not pairs:
        raise TrainingError("no preference pairs: no question got both a right and a wrong rationale; "
                            "raise rl.wrong_answers_per_problem (or rl.samples_per_problem for tasks without "
                            "wrong_answers)")
    args = RewardConfig(output_dir=str(out_dir / "reward_trainer"), max_steps=cfg.rl.reward_steps,
                        per_device_train_batch_size=cfg.rl.reward_batch_size,
                        learning_rate=cfg.rl.reward_learning_rate, max_length=cfg.train.max_length,
                        include_num_input_tokens_seen="non_padding",  # the comparison's cost counts them
                        center_rewards_coefficient=cfg.rl.center_rewards_coefficient or None,
                        **{**trainer_args(cfg), "logging_steps": 1})
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = quiet_trainer(RewardTrainer(model=reward_model_start(cfg, tokenizer, init_adapter), args=args,
                                          train_dataset=data, processing_class=tokenizer))
    match_adapter_dtype(trainer.model, cfg)
    with rl_precision(trainer.model, cfg):
        trainer.train()
    model = trainer.model
    save_adapter(model, out_dir / "reward_model")
    remove_if_empty(out_dir / "reward_trainer")
    result = TrainResult.from_trainer(trainer)
    del trainer
    release_memory()
    return model.eval(), result


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16) -> list[float]:
    """The reward model's scalar score for each prompt + completion."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for i in range(0, len(prompts), batch_size):
        texts = [p + c for p, c in zip(prompts[i:i + batch_size], completions[i:i + batch_size])]
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        scores += model(**enc).logits[:, 0].float().tolist()
    return scores


def pairwise_accuracy(model, tokenizer, pairs: list[dict[str, Any]]) -> float | None:
    """Share of pairs whose chosen completion scores above the rejected one; None without pairs."""
    if not pairs:
        return None
    prompts = [p["prompt"] for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs])
    rejected = reward_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def pair_accuracy_summary(model, tokenizer, heldout: list[dict[str, Any]]) -> dict[str, Any]:
    """The reward model's held-out pairwise accuracy with its number of pairs and 95% Wilson interval
    (a handful of pairs says little, and the row should show how little)."""
    acc = pairwise_accuracy(model, tokenizer, heldout)
    n = len(heldout)
    low, high = wilson(round(acc * n), n) if n else (None, None)
    return {"reward_model_pair_accuracy": acc, "reward_model_heldout_pairs": n,
            "reward_model_pair_ci_low": low, "reward_model_pair_ci_high": high}


def reward_model_standardisation(model, tokenizer, pairs: list[dict[str, Any]]) -> tuple[float, float]:
    """(mean, sd) of the reward model's scores on both sides of ``pairs`` (its training pairs): what
    make_reward divides out. (0, 1), leaving scores as they are, without pairs or spread."""
    if not pairs:
        return 0.0, 1.0
    prompts = [p["prompt"] for p in pairs] * 2
    scores = reward_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    mean = sum(scores) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores) / len(scores)) ** 0.5
    return mean, sd if sd > 1e-6 else 1.0


def load_reward_model(cfg: Config, tokenizer, path: str | Path):
    """A saved reward model (``iter_002/reward_model`` of a self-motivated run), ready to score."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_reward_base(cfg, tokenizer), str(path)).eval()
