"""GRPO (Shao et al. 2024) through TRL's GRPOTrainer on the policy's LoRA adapter (TRL >= 1 has no
PPOTrainer): the reward (grader, plus the reward model in self-motivated learning), rollouts cut at the
task's stop strings (the tokens after the stop are cut from ``completion_ids`` before TRL builds its
loss mask and counts tokens, so the policy gradient never covers the model's invented next ``Q:``
turn), DAPO's dynamic sampling, star_lite's sampler for the rollouts, and the run until the budget."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Callable

import torch

from .. import distributed, phases
from ..budget import Budget
from ..config import Config, ConfigError
from ..progress import quiet_trainer
from ..progress import quiet as quiet_bars
from ..rundir import append_jsonl
from ..tasks import Problem, Task
from .reward import reward_scores
from .args import match_adapter_dtype, rl_lm_head, rl_precision, save_policy, trainer_args
from ..training import TrainingError, release_memory



def make_reward(task: Task, problems: dict[str, Problem], *, reward_model=None, tokenizer=None,
                reward_model_weight: float = 0.0, correctness_weight: float = 1.0,
                reward_model_scale: tuple[float, float] = (0.0, 1.0), num_generations: int = 0,
                counter: dict[str, int] | None = None, rollouts: Path | None = None) -> Callable[..., list[float]]:
    """A TRL reward function: weighted reward-model score plus the task's correctness (1 or 0).

    The completion is cut at the task's stop strings first, so text past the answer is not judged.
    Reward-model scores are standardised, ``(score - mean) / sd`` with ``reward_model_scale`` = (mean,
    sd) of its scores on its training pairs, so a weight of 1 means one standard deviation of the
    reward model against one right answer, and an uncentred model does not shift every reward.
    ``counter["tokens"]`` adds up the completion tokens; ``rollouts`` (a jsonl path) gets a row per
    completion: ``step`` (optimizer steps taken before it), ``prompt_id``, ``completion``, ``tokens``,
    ``reward``, its parts ``reward_model`` (standardised) and ``grader``, and with ``num_generations``
    (GRPO's group size) ``zero_variance``: whether every completion of its group got the same reward.
    The last call's totals are kept in ``reward.last`` (dynamic sampling reads them).

    >>> from star_lite.tasks import load_task
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> p = Problem("a", "What is 3 + 4?", "7")
    >>> make_reward(t, {"a": p})(["Q"] * 2, [" The answer is 7.\\n\\nQ:", " The answer is 8."], id=["a", "a"])
    [1.0, 0.0]
    """

    def reward(prompts, completions, id, completion_ids=None, trainer_state=None, **_):
        cleaned = [task.clean_completion(c) for c in completions]
        if counter is not None and completion_ids is not None:  # every process's rollouts (data-parallel)
            counter["tokens"] = counter.get("tokens", 0) + sum(distributed.gather(sum(len(x) for x in completion_ids)))
        grader = [float(task.is_correct(c, problems[pid])) for c, pid in zip(cleaned, id)]
        steps = [task.steps_are_right(c, problems[pid]) for c, pid in zip(cleaned, id)]
        if counter is not None:  # right answers, and right answers through a wrong step (false positives)
            counter["right"] = counter.get("right", 0) + sum(g == 1.0 for g in grader)
            counter["false_positive"] = counter.get("false_positive", 0) + sum(
                g == 1.0 and st is False for g, st in zip(grader, steps))
        scores: list[float | None] = [None] * len(cleaned)
        if reward_model_weight and reward_model is not None:
            bare = [task.format_question(problems[pid]) for pid in id]
            mean, sd = reward_model_scale
            scores = [(x - mean) / sd for x in
                      reward_scores(reward_model, tokenizer, bare, [task.format_completion(c) for c in cleaned])]
        total = [correctness_weight * g + (reward_model_weight * s if s is not None else 0.0)
                 for g, s in zip(grader, scores)]
        flat = zero_variance_groups(total, num_generations) if num_generations else []
        reward.last = total
        if rollouts is not None:
            step = trainer_state.global_step if trainer_state is not None else 0
            rows = [{"step": step, "prompt_id": pid, "completion": c,
                     "tokens": len(ids) if ids is not None else None, "reward": r, "reward_model": s, "grader": g,
                     "steps_right": steps[i],
                     **({"zero_variance": flat[i // num_generations]} if flat else {})}
                    for i, (pid, c, ids, r, s, g) in enumerate(zip(id, cleaned, completion_ids or [None] * len(cleaned),
                                                                   total, scores, grader))]
            append_jsonl(rollouts, [row for part in distributed.gather(rows) for row in part])  # rank 0 writes
        return total

    reward.__name__ = "reward"
    reward.last = []
    return reward


def zero_variance_groups(rewards: list[float], group_size: int) -> list[bool]:
    """Per group of ``group_size`` consecutive rewards (GRPO's completions of one prompt), whether all are
    equal: such a group has zero advantage and gives no gradient (DAPO's dynamic sampling drops it).

    >>> zero_variance_groups([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 2)
    [True, False, True]
    """
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards), group_size)]
    return [max(g) - min(g) <= 1e-9 * max(1.0, abs(max(g))) for g in groups]


def cut_at_stop(ids: list[int], tokenizer, stop_strings) -> list[int]:
    """The shortest prefix of ``ids`` whose text holds a stop string: the rollout up to and including
    the token that completes the stop; all of ``ids`` when none does (it ended at EOS or the cap)."""

    def stopped(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(s in text for s in stop_strings)

    if not stop_strings or not stopped(len(ids)):
        return ids
    lo, hi = 1, len(ids)  # a longer prefix of a stopped one is stopped too: bisect for the first
    while lo < hi:
        mid = (lo + hi) // 2
        if stopped(mid):
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo]


def _stopping_grpo_trainer():
    """GRPOTrainer whose rollouts end at the task's stop strings (a class made on first use, so that
    importing this module does not import TRL)."""
    import contextlib
    import functools

    from trl import GRPOTrainer

    @contextlib.contextmanager
    def stop_strings_in_generate(model, tokenizer, stop_strings):
        # TRL calls model.generate without the tokenizer transformers needs to watch for stop strings,
        # so hand both to this one call; a batch then ends when all its rollouts have stopped.
        own = model.__dict__.get("generate")  # a generate set on the instance (transformers' custom_generate)
        model.generate = functools.partial(model.generate, stop_strings=list(stop_strings), tokenizer=tokenizer)
        try:
            yield
        finally:
            if own is None:
                del model.generate  # back to the class's method
            else:
                model.generate = own

    class StoppingGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, stop_strings=(), dynamic_sampling=False, max_rounds=4, budget_reached=None,
                     sampling_seed=0, rollout_sampler="trl", draw="auto", merge_lora=False, **kwargs):
            super().__init__(*args, **kwargs)
            self.draw, self.merge_lora = draw, merge_lora
            self.stop_strings = tuple(stop_strings)
            self.rollout_sampler = rollouts_by(rollout_sampler, self)
            self.dynamic_sampling, self.max_rounds = dynamic_sampling, max_rounds
            self.budget_reached = budget_reached or (lambda: False)
            self.redraw_rng = random.Random(sampling_seed)
            self.step_groups: dict[str, int] = {}  # this step's groups: drawn, dropped, trained with zero variance

        @phases.timed("rl_rollouts")
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            size = self.num_generations
            flat = zero_variance_groups(self.reward_funcs[0].last, size)
            if not self.dynamic_sampling:
                self.step_groups = {"drawn": len(flat), "dropped": 0, "zero_variance": sum(flat)}
                return out
            # DAPO's dynamic sampling: a group whose rewards are all equal has zero advantage; drop it and draw
            # new prompts until the batch is full of informative groups, the budget is spent, or max_rounds redraws
            wanted, drawn = len(flat), len(flat)
            parts = [(out, [g for g, f in enumerate(flat) if not f])]
            have = len(parts[0][1])
            for _ in range(self.max_rounds):
                if have >= wanted or self.budget_reached():
                    break
                rows = self.redraw_rng.sample(range(len(self.train_dataset)), min(wanted - have, len(self.train_dataset)))
                extra = [self.train_dataset[i] for i in rows for _ in range(size)]
                more = super()._generate_and_score_completions(extra)
                more_flat = zero_variance_groups(self.reward_funcs[0].last, size)
                drawn += len(more_flat)
                keep = [g for g, f in enumerate(more_flat) if not f][:wanted - have]
                parts.append((more, keep))
                have += len(keep)
            if have < wanted:  # fill up with the first batch's flat groups: they train nothing, but the shapes hold
                parts.append((out, [g for g, f in enumerate(flat) if f][:wanted - have]))
            self.step_groups = {"drawn": drawn, "dropped": drawn - wanted, "zero_variance": max(0, wanted - have)}
            return merge_groups([(o, [g * size + j for g in groups for j in range(size)]) for o, groups in parts if groups],
                                pad_id=self._tokenizer.pad_token_id)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            # accelerate autocasts the model's forward, not generate: the rollouts get the same bfloat16
            # autocast as the updates (train.rl_autocast; on a CPU the frozen base is then a bfloat16 copy)
            bf16_on_cpu = self.args.bf16 and self.accelerator.device.type == "cpu"
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16_on_cpu else contextlib.nullcontext():
                return self._rollouts(prompt_ids, *args, **kwargs)

        def _rollouts(self, prompt_ids, *args, **kwargs):
            if self.rollout_sampler == "star_lite":
                return self._star_lite_rollouts(prompt_ids), None
            # Cut here, before TRL builds completion_mask and counts tokens from these lists: tokens past
            # the stop then get no loss, no KL and no count, whatever backend generated them (vLLM too).
            early = self.stop_strings and not self.use_vllm and not self.use_transformers_continuous_batching
            unwrapped = self.accelerator.unwrap_model(self.model_wrapped)
            with stop_strings_in_generate(unwrapped, self._tokenizer, self.stop_strings) if early \
                    else contextlib.nullcontext():
                completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            completion_ids = [cut_at_stop(ids, self._tokenizer, self.stop_strings) for ids in completion_ids]
            if logprobs is not None:
                logprobs = [lp[:len(ids)] for lp, ids in zip(logprobs, completion_ids)]
            return completion_ids, logprobs

        def _star_lite_rollouts(self, prompt_ids):
            """The rollouts from star_lite's sampler (rl.rollout_sampler): TRL's temperature, top-p, top-k and
            completion length, the prompts' shared prefix computed once, each row ending at its stop string or
            EOS and leaving the batch; the policy samples in eval mode (no LoRA dropout)."""
            from ..fastpaths import merged_lora
            from ..sampling.hf import generate

            unwrapped = self.accelerator.unwrap_model(self.model_wrapped)
            with quiet_bars(), merged_lora(unwrapped) if self.merge_lora else contextlib.nullcontext():
                gens = generate(unwrapped, self._tokenizer, (), prompt_ids=prompt_ids, batch_size=len(prompt_ids),
                                max_new_tokens=self.max_completion_length, temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k or 0, stop_strings=self.stop_strings,
                                desc="rollouts", draw=self.draw)
            return [list(g.token_ids) for g in gens]

    return StoppingGRPOTrainer


def rollouts_by(choice: str, trainer) -> str:
    """Who generates GRPO's rollouts: ``star_lite`` (its sampler) or ``trl`` (TRL's generate). ``auto`` is
    star_lite's where it gives TRL's distribution: one process, transformers generation (not vLLM or
    continuous batching), no logits processing beyond temperature/top-k/top-p (min_p, repetition penalty,
    extra generation_kwargs) and an architecture the sampler's decode loop supports."""
    from ..sampling import prefix_decode

    if choice == "trl":
        return "trl"
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    blockers = [why for why, blocked in (
        ("vLLM generation (rl.trl_options use_vllm)", trainer.use_vllm),
        ("transformers continuous batching", trainer.use_transformers_continuous_batching),
        ("more than one process", trainer.accelerator.num_processes > 1),
        ("min_p or repetition_penalty in rl.trl_options", trainer.min_p is not None or trainer.repetition_penalty != 1.0),
        ("generation_kwargs in rl.trl_options", bool(trainer.args.generation_kwargs)),
        (f"{model.config.model_type} attention or its generation config", not prefix_decode.supported(model)),
    ) if blocked]
    if not blockers:
        return "star_lite"
    if choice == "star_lite":
        raise ConfigError(f"rl.rollout_sampler: star_lite's sampler cannot produce these rollouts ({'; '.join(blockers)}); "
                          "set rl.rollout_sampler to auto or trl")
    return "trl"


def merge_groups(parts: list[tuple[dict[str, Any], list[int]]], pad_id: int) -> dict[str, Any]:
    """One GRPO batch from the chosen rows of several ``_generate_and_score_completions`` outputs: row
    tensors are concatenated, prompts re-padded on the left and completions (and their per-token values)
    on the right, and ``num_items_in_batch`` recounted from the merged completion mask.

    >>> a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7]]),
    ...      "completion_mask": torch.tensor([[1]]), "advantages": torch.tensor([1.0]), "num_items_in_batch": 1}
    >>> b = {"prompt_ids": torch.tensor([[6]]), "completion_ids": torch.tensor([[8, 9]]),
    ...      "completion_mask": torch.tensor([[1, 1]]), "advantages": torch.tensor([-1.0]), "num_items_in_batch": 2}
    >>> m = merge_groups([(a, [0]), (b, [0])], pad_id=0)
    >>> m["prompt_ids"].tolist(), m["completion_ids"].tolist(), int(m["num_items_in_batch"])
    ([[5, 6], [0, 6]], [[7, 0], [8, 9]], 3)
    """
    first = parts[0][0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and key != "num_items_in_batch"):
            merged[key] = value
            continue
        chosen = [o[key][torch.tensor(rows, dtype=torch.long, device=o[key].device)] for o, rows in parts]
        if value.dim() == 2:
            width = max(c.shape[1] for c in chosen)
            fill = pad_id if key.endswith("_ids") else 0
            left = key.startswith("prompt_")
            chosen = [torch.nn.functional.pad(c, (width - c.shape[1], 0) if left else (0, width - c.shape[1]),
                                              value=fill) for c in chosen]
        merged[key] = torch.cat(chosen)
    if "completion_mask" in merged:
        merged["num_items_in_batch"] = merged["completion_mask"].sum()
    return merged


# GRPOConfig fields star_lite sets from its own keys; rl.trl_options may not set them a second time
_GRPO_OWN_KEYS = {"max_steps": "rl.steps", "per_device_train_batch_size": "rl.batch_size",
                  "num_generations": "rl.num_generations", "learning_rate": "rl.learning_rate", "beta": "rl.beta",
                  "temperature": "rl.generation_temperature", "max_completion_length": "rl.max_completion_length",
                  "report_to": "train.report_to", "seed": "run.seed", "logging_steps": None,
                  "output_dir": "run.output_dir", "loss_type": "rl.loss_type", "scale_rewards": "rl.scale_rewards",
                  "epsilon": "rl.epsilon", "epsilon_high": "rl.epsilon_high"}


def check_trl_options(cfg: Config) -> None:
    """Refuse ``rl.trl_options`` keys GRPOConfig lacks, or that a star_lite key sets, naming the fix."""
    import dataclasses
    import difflib

    from trl import GRPOConfig

    fields = sorted(f.name for f in dataclasses.fields(GRPOConfig))
    if cfg.rl.trl_options.get("mask_truncated_completions"):
        raise ConfigError("rl.trl_options.mask_truncated_completions: rollouts end at the task's stop strings, "
                          "which TRL cannot tell from a cut at rl.max_completion_length, so it would mask nearly "
                          "every rollout; leave it out")
    for key in cfg.rl.trl_options:
        if key in _GRPO_OWN_KEYS:
            own = _GRPO_OWN_KEYS[key]
            raise ConfigError(f"rl.trl_options.{key}: star_lite sets GRPOConfig's {key} "
                              + (f"from {own}; set that key instead" if own else "itself (every RL step is logged)"))
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ConfigError(f"rl.trl_options.{key}: TRL's GRPOConfig has no such option."
                              + (f" Did you mean '{close[0]}'?" if close else ""))


def grpo_args(cfg: Config, output_dir: Path) -> dict[str, Any]:
    """GRPOConfig's keyword arguments: the rl section, the device settings, then ``rl.trl_options``
    (for example TRL's vLLM options: use_vllm, vllm_mode, vllm_gpu_memory_utilization)."""
    check_trl_options(cfg)
    return {"output_dir": str(output_dir), "max_steps": rl_max_steps(cfg),
            "per_device_train_batch_size": cfg.rl.batch_size, "num_generations": cfg.rl.num_generations,
            "learning_rate": cfg.rl.learning_rate, "beta": cfg.rl.beta,
            "temperature": cfg.rl.generation_temperature, "max_completion_length": max_completion_length(cfg),
            "loss_type": cfg.rl.loss_type, "scale_rewards": cfg.rl.scale_rewards, "epsilon": cfg.rl.epsilon,
            "epsilon_high": cfg.rl.epsilon_high or None,
            **trainer_args(cfg), "logging_steps": 1,  # every step's reward, KL and variance: none hidden
            **cfg.rl.trl_options}


def rl_max_steps(cfg: Config) -> int:
    """GRPO's step count: ``rl.steps`` when set, else as many as the token budget could pay for (each
    completion costs at least a token), stopped by the budget before that (``train_rl``).

    >>> from star_lite.config import from_dict
    >>> rl_max_steps(from_dict({"rl": {"steps": 0, "batch_size": 16}, "run": {"budget_tokens": 1600}}))
    100
    >>> rl_max_steps(from_dict({"rl": {"steps": 7}, "run": {"budget_tokens": 1600}}))
    7
    """
    if cfg.rl.steps:
        return cfg.rl.steps
    if cfg.run.budget_tokens:
        return max(1, math.ceil(cfg.run.budget_tokens / cfg.rl.batch_size))
    if cfg.run.budget_seconds:
        return 1_000_000  # the clock stops it
    raise ConfigError("rl.steps: 0 means 'until run.budget_tokens or run.budget_seconds is spent', and neither is "
                      "set; give RL a step count (rl.steps) or the run a budget")


def max_completion_length(cfg: Config) -> int:
    """``rl.max_completion_length``, where 0 means the task's sampling length (GSM8K needs 256, not 64).

    >>> from star_lite.config import from_dict
    >>> max_completion_length(from_dict({"sampling": {"max_new_tokens": 256}}))
    256
    """
    return cfg.rl.max_completion_length or cfg.sampling.max_new_tokens


@phases.timed("rl")
def train_rl(policy, tokenizer, task: Task, problems: list[Problem], reward_fn, cfg: Config, out_dir: Path,
             *, num_few_shot: int = 0, budget: Budget | None = None, counter: dict[str, int] | None = None):
    """RL with TRL's GRPOTrainer on the policy's LoRA adapter; saves it to ``out_dir/adapter``.

    With ``rl.beta`` > 0 TRL copies the policy's adapter, as it is now, into a frozen "ref" adapter
    and takes the KL reference from it: from the SFT adapter that is the SFT policy, from a fresh
    adapter (B = 0) the base. Training runs ``rl.steps`` steps, or (0) until ``budget`` is spent
    (it is charged the completion tokens, with ``run.budget_axis: all`` also the tokens trained on, and
    its clock runs): the step that spends the budget is the last. Every step writes a row to
    ``out_dir/rl_steps.jsonl``: mean reward, its spread, the share of zero-variance groups it trained on
    (and, with ``rl.dynamic_sampling``, the groups dropped and redrawn), KL to the reference, mean
    completion length and the norm of the adapter's change since the start. Returns the model and a
    ``TrainResult`` (its history holds those rows; trained tokens: prompt + completion tokens of every
    rollout).
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig

    already = budget.tokens if budget is not None else 0  # what the run's earlier stages spent
    steps_file = out_dir / "rl_steps.jsonl"
    if distributed.is_main():
        steps_file.unlink(missing_ok=True)  # an interrupted attempt's steps
    trainer = None  # the callbacks below read it; they are added once it is built

    def spent_tokens() -> int:
        tokens = counter.get("tokens", 0) if counter else 0
        if cfg.run.budget_axis == "all" and trainer is not None:
            tokens += int(trainer.state.num_input_tokens_seen or 0)
        return tokens

    def budget_reached() -> bool:
        if budget is None:
            return False
        budget.tokens = already + spent_tokens()
        budget.cut = budget.spent()
        return budget.cut is not None

    class StopAtBudget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if distributed.broadcast(budget_reached()):  # rank 0's clock decides: all processes stop at one step
                control.should_training_stop = True

    class RecordSteps(TrainerCallback):
        """One row per step: what a user looks at to see whether RL learned."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.model, self.norm, self.rows = model, 0.0, []

        def on_step_end(self, args, state, control, **kwargs):
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                self.norm = sum(float((params[n].detach().float() - p0).pow(2).sum()) for n, p0 in self.start.items()) ** 0.5

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            groups = trainer.step_groups
            trained = groups.get("drawn", 0) - groups.get("dropped", 0)
            row = {"step": state.global_step, "reward": logs.get("reward"), "reward_std": logs.get("reward_std"),
                   "zero_variance_share": groups["zero_variance"] / trained if trained else logs.get("frac_reward_zero_std"),
                   "groups_drawn": groups.get("drawn"), "groups_dropped": groups.get("dropped"),
                   "kl": logs.get("kl"), "completion_length": logs.get("completions/mean_length"),
                   "update_norm": self.norm, "loss": logs.get("loss"), "spent_tokens": spent_tokens()}
            self.rows.append(row)
            if distributed.is_main():
                append_jsonl(steps_file, [row])

    args = GRPOConfig(**grpo_args(cfg, out_dir / "rl_trainer"))
    data = Dataset.from_list([{"prompt": task.prompt(p, num_few_shot=num_few_shot), "id": p.id} for p in problems])
    if cfg.rl.dynamic_sampling and distributed.world_size() > 1:
        raise TrainingError("rl.dynamic_sampling redraws prompts inside one process; run it without accelerate launch "
                            "or set rl.dynamic_sampling=false")
    recorder = RecordSteps()
    from ..sampling import merges_lora

    trainer = _stopping_grpo_trainer()(model=policy, reward_funcs=[reward_fn], args=args, train_dataset=data,
                                       processing_class=tokenizer, stop_strings=task.stop_strings,
                                       dynamic_sampling=cfg.rl.dynamic_sampling,
                                       max_rounds=cfg.rl.dynamic_sampling_max_rounds, budget_reached=budget_reached,
                                       sampling_seed=cfg.run.seed, rollout_sampler=cfg.rl.rollout_sampler,
                                       draw=cfg.sampling.draw, merge_lora=merges_lora(cfg))
    quiet_trainer(trainer)
    trainer.add_callback(StopAtBudget())
    trainer.add_callback(recorder)
    match_adapter_dtype(trainer.model, cfg)
    with rl_precision(trainer.model, cfg), rl_lm_head(cfg):
        trainer.train()
    model, result = save_policy(trainer, out_dir, out_dir / "rl_trainer", key="reward")
    result.stop_reason = "budget" if budget_reached() else "steps"
    result.history = recorder.rows  # one row per step, with star_lite's diagnostics beside TRL's logs
    del trainer
    release_memory()
    return model, result
