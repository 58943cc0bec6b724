"""Reward model and RL phase (Self-motivated Learning, Feng et al. 2024; GRPO, Shao et al. 2024).

Self-motivated learning ranks the model's own rationales by whether they reach the right
answer: right ones train an SFT adapter; pairs (right preferred over wrong, same question)
train a reward model with TRL's ``RewardTrainer``; an RL phase from the SFT adapter, with
TRL's ``GRPOTrainer`` (TRL >= 1 has no PPOTrainer), is rewarded by that reward model,
optionally mixed with the task's correctness reward. Both trainers use the 4-bit base + LoRA.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config
from .models import lora_config, resolve_device, resolve_dtype, resolve_model_path, bnb_config
from .tasks import Problem, Task
from .training import TrainingError, release_memory, remove_if_empty, save_adapter


def preference_pairs(task: Task, problems: list[Problem], samples: list[dict[str, Any]],
                     max_pairs_per_problem: int = 4) -> list[dict[str, Any]]:
    """(prompt, chosen, rejected) pairs: a right rationale preferred over a wrong one, same question.

    >>> from star_lite.tasks import load_task
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> p = t.load("train", 1, 0)[0]
    >>> s = [{"id": p.id, "completion": "x. The answer is 1.", "correct": True},
    ...      {"id": p.id, "completion": "y. The answer is 2.", "correct": False}]
    >>> [(r["chosen"], r["rejected"]) for r in preference_pairs(t, [p], s)]
    [(' x. The answer is 1.', ' y. The answer is 2.')]
    """
    by_id = {p.id: p for p in problems}
    right: dict[str, list[str]] = {}
    wrong: dict[str, list[str]] = {}
    for s in samples:
        bucket = right if s["correct"] else wrong
        text = task.format_completion(s["completion"])
        if text not in bucket.setdefault(s["id"], []):
            bucket[s["id"]].append(text)
    pairs = []
    for pid in right:
        combos = [(c, r) for c in right[pid] for r in wrong.get(pid, [])][:max_pairs_per_problem]
        for chosen, rejected in combos:
            pairs.append({"id": pid, "prompt": task.format_question(by_id[pid]), "chosen": chosen,
                          "rejected": rejected})
    return pairs


def split_pairs(pairs: list[dict[str, Any]], heldout_fraction: float, seed: int):
    """Split by problem, so held-out pairs ask questions the reward model never saw."""
    ids = sorted({p["id"] for p in pairs})
    random.Random(seed).shuffle(ids)
    n_held = max(1, round(len(ids) * heldout_fraction)) if len(ids) > 1 else 0
    held = set(ids[:n_held])
    return [p for p in pairs if p["id"] not in held], [p for p in pairs if p["id"] in held]


def _trainer_device_args(cfg: Config) -> dict[str, Any]:
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    return {"use_cpu": device == "cpu", "bf16": device == "cuda" and dtype == torch.bfloat16,
            "fp16": device == "cuda" and dtype == torch.float16, "report_to": cfg.train.report_to,
            "save_strategy": "no", "seed": cfg.run.seed, "logging_steps": cfg.train.logging_steps,
            "disable_tqdm": bool(os.environ.get("CI")) or os.environ.get("STAR_LITE_PROGRESS") == "0"}


def match_adapter_dtype(model, cfg: Config) -> None:
    """TRL casts QLoRA adapter weights to bfloat16; keep them in the compute dtype instead, which
    on a CPU is float32 (bfloat16 adapters on a float32 base fail with a dtype mismatch)."""
    dtype = resolve_dtype(cfg.model.compute_dtype, resolve_device(cfg.model.device))
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def load_reward_base(cfg: Config, tokenizer):
    """The base model with a one-output sequence-classification head, 4-bit when configured."""
    from transformers import AutoModelForSequenceClassification

    device = resolve_device(cfg.model.device)
    kwargs: dict[str, Any] = {"num_labels": 1, "dtype": resolve_dtype(cfg.model.compute_dtype, device)}
    if cfg.model.load_in_4bit:
        kwargs.update(quantization_config=bnb_config(cfg.model, device), device_map={"": device})
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model.name_or_path), **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not cfg.model.load_in_4bit:
        model.to(device)
    return model


def train_reward_model(cfg: Config, tokenizer, pairs: list[dict[str, Any]], out_dir: Path):
    """Train a LoRA reward model on preference pairs; saves it to ``out_dir/reward_model``."""
    from datasets import Dataset
    from peft import TaskType
    from trl import RewardConfig, RewardTrainer

    if not pairs:
        raise TrainingError("no preference pairs: the model never produced both a right and a wrong rationale "
                            "for one question; raise rl.samples_per_problem or rl.temperature")
    lcfg = lora_config(cfg.model)
    lcfg.task_type = TaskType.SEQ_CLS
    args = RewardConfig(output_dir=str(out_dir / "reward_trainer"), max_steps=cfg.rl.reward_steps,
                        per_device_train_batch_size=cfg.rl.reward_batch_size,
                        learning_rate=cfg.rl.reward_learning_rate, max_length=cfg.train.max_length,
                        **_trainer_device_args(cfg))
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = RewardTrainer(model=load_reward_base(cfg, tokenizer), args=args, train_dataset=data,
                            processing_class=tokenizer, peft_config=lcfg)
    match_adapter_dtype(trainer.model, cfg)
    trainer.train()
    model = trainer.model
    save_adapter(model, out_dir / "reward_model")
    remove_if_empty(out_dir / "reward_trainer")
    history = [h for h in trainer.state.log_history if "loss" in h]
    del trainer
    release_memory()
    return model.eval(), history


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


def make_reward(task: Task, problems: dict[str, Problem], *, reward_model=None, tokenizer=None,
                reward_model_weight: float = 0.0, correctness_weight: float = 1.0,
                counter: dict[str, int] | None = None) -> Callable[..., list[float]]:
    """A TRL reward function: weighted reward-model score plus the task's correctness (1 or 0).

    The completion is cut at the task's stop strings first, so text past the answer is not judged.
    """

    def reward(prompts, completions, id, completion_ids=None, **_):
        cleaned = [task.clean_completion(c) for c in completions]
        if counter is not None and completion_ids is not None:
            counter["tokens"] = counter.get("tokens", 0) + sum(len(x) for x in completion_ids)
        total = [0.0] * len(cleaned)
        if correctness_weight:
            for i, (c, pid) in enumerate(zip(cleaned, id)):
                total[i] += correctness_weight * float(task.is_correct(c, problems[pid]))
        if reward_model_weight and reward_model is not None:
            bare = [task.format_question(problems[pid]) for pid in id]
            scores = reward_scores(reward_model, tokenizer, bare, [task.format_completion(c) for c in cleaned])
            total = [t + reward_model_weight * s for t, s in zip(total, scores)]
        return total

    reward.__name__ = "reward"
    return reward


# GRPOConfig fields star_lite sets from its own keys; rl.trl_options may not set them a second time
_GRPO_OWN_KEYS = {"max_steps": "rl.steps", "per_device_train_batch_size": "rl.batch_size",
                  "num_generations": "rl.num_generations", "learning_rate": "rl.learning_rate", "beta": "rl.beta",
                  "temperature": "rl.generation_temperature", "max_completion_length": "rl.max_completion_length",
                  "report_to": "train.report_to", "seed": "run.seed", "logging_steps": "train.logging_steps",
                  "output_dir": "run.output_dir"}


def check_trl_options(cfg: Config) -> None:
    """Refuse ``rl.trl_options`` keys GRPOConfig lacks, or that a star_lite key sets, naming the fix."""
    import dataclasses
    import difflib

    from trl import GRPOConfig

    from .config import ConfigError

    fields = sorted(f.name for f in dataclasses.fields(GRPOConfig))
    for key in cfg.rl.trl_options:
        if key in _GRPO_OWN_KEYS:
            raise ConfigError(f"rl.trl_options.{key}: star_lite sets GRPOConfig's {key} from "
                              f"{_GRPO_OWN_KEYS[key]}; set that key instead")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ConfigError(f"rl.trl_options.{key}: TRL's GRPOConfig has no such option."
                              + (f" Did you mean '{close[0]}'?" if close else ""))


def grpo_args(cfg: Config, output_dir: Path) -> dict[str, Any]:
    """GRPOConfig's keyword arguments: the rl section, the device settings, then ``rl.trl_options``
    (for example TRL's vLLM options: use_vllm, vllm_mode, vllm_gpu_memory_utilization)."""
    check_trl_options(cfg)
    return {"output_dir": str(output_dir), "max_steps": cfg.rl.steps,
            "per_device_train_batch_size": cfg.rl.batch_size, "num_generations": cfg.rl.num_generations,
            "learning_rate": cfg.rl.learning_rate, "beta": cfg.rl.beta,
            "temperature": cfg.rl.generation_temperature, "max_completion_length": cfg.rl.max_completion_length,
            **_trainer_device_args(cfg), **cfg.rl.trl_options}


def train_rl(policy, tokenizer, task: Task, problems: list[Problem], reward_fn, cfg: Config, out_dir: Path,
             *, num_few_shot: int = 0, budget_tokens: int = 0, budget_seconds: float = 0.0,
             counter: dict[str, int] | None = None):
    """RL with TRL's GRPOTrainer on the policy's LoRA adapter; saves it to ``out_dir/adapter``.

    Training stops early once ``budget_tokens`` completion tokens were generated or
    ``budget_seconds`` passed (0 = no limit), so RL methods stop at the same cost as the others.
    """
    import time
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    deadline = time.time() + budget_seconds if budget_seconds else None

    class StopAtBudget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if budget_tokens and counter and counter.get("tokens", 0) >= budget_tokens:
                control.should_training_stop = True
            if deadline is not None and time.time() >= deadline:
                control.should_training_stop = True

    args = GRPOConfig(**grpo_args(cfg, out_dir / "rl_trainer"))
    data = Dataset.from_list([{"prompt": task.prompt(p, num_few_shot=num_few_shot), "id": p.id} for p in problems])
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward_fn], args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[StopAtBudget()])
    match_adapter_dtype(trainer.model, cfg)
    trainer.train()
    history = [h for h in trainer.state.log_history if "reward" in h]
    model = trainer.model
    save_adapter(model, out_dir / "adapter")
    remove_if_empty(out_dir / "rl_trainer")
    del trainer
    release_memory()
    return model.eval(), history


def load_reward_model(cfg: Config, tokenizer, path: str | Path):
    """A saved reward model (``iter_002/reward_model`` of a self-motivated run), ready to score."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_reward_base(cfg, tokenizer), str(path)).eval()
