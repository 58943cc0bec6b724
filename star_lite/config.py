"""Typed run configuration: YAML in, validated dataclasses out.

One level of nesting (model, task, sampling, star, train, eval, rest_em, rl, dpo, v_star, adastar, compare,
run). Unknown keys are rejected with the closest valid name; wrong types name the field and the expected form.

>>> cfg = from_dict({"star": {"iterations": 2}}, overrides=["train.start_steps=10"])
>>> cfg.star.iterations, cfg.train.start_steps
(2, 10)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def method_names(built_in_only: bool = False) -> tuple[str, ...]:
    """Every registered method (star_lite/methods/registry.py): the built-in ones, and any a user's module has
    registered."""
    from .methods.registry import names

    return names(built_in_only=built_in_only)


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # config.METHODS: the registered methods, read when asked (they register on import)
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the field and the fix."""


def at_least(default: Any, minimum: Any) -> Any:
    """A config field whose value must be at least ``minimum``; ``validate`` checks it and names the field."""
    return field(default=default, metadata={"range": (minimum, None)})


def between(default: Any, low: Any, high: Any) -> Any:
    """A config field whose value must lie in [``low``, ``high``]."""
    return field(default=default, metadata={"range": (low, high)})


def one_of(default: str, *others: str) -> Any:
    """A config field that takes ``default`` or one of ``others``."""
    return field(default=default, metadata={"choices": frozenset((default, *others))})


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"  # embedded model, a Hub id, or a local directory
    load_in_4bit: bool = True  # bitsandbytes NF4 with double quantization
    compute_dtype: str = one_of("auto", "bfloat16", "float16", "float32")  # auto: bfloat16 on GPU, float32 on CPU
    device: str = one_of("auto", "cpu", "cuda")  # auto: cuda if available, else cpu
    lora_r: int = at_least(16, 1)
    lora_alpha: int = 32
    lora_dropout: float = between(0.05, 0.0, 1.0)
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TaskConfig:
    name: str = "arithmetic"  # a built-in task, or "package.module:ClassName"
    num_train: int = at_least(256, 0)  # training problems STaR writes rationales for (0 = all)
    num_test: int = at_least(100, 0)  # held-out problems for evaluation (0 = all)
    num_validation: int = at_least(0, 0)  # > 0: also evaluate every iteration on this many validation problems (what
    #   stopping looks at)
    num_few_shot: int = at_least(8, 0)  # worked examples in the prompt (paper: 7-10)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the task's constructor
    split_seed: int | None = None  # seed that draws the problems; None = run.seed (compare fixes it across seeds)


@dataclass
class SamplingConfig:
    batch_size: int = at_least(16, 1)
    max_new_tokens: int = at_least(64, 1)
    temperature: float = at_least(0.0, 0.0)  # 0 = greedy, as in the STaR paper (sampling gave worse models)
    top_p: float = between(1.0, 0.0, 1.0)
    few_shot_after_training: bool = False  # trained adapters see the bare question, as in their training data
    backend: str = one_of("hf", "vllm")  # hf: transformers (everywhere); vllm: a vLLM engine (GPU; pip install
    #   star-lite[vllm])
    # hf: "shared" keeps the few-shot prefix's keys and values once for the batch, in star_lite's own decode
    # loop; "copied" copies them into every row for transformers' generate. Greedy: the same tokens;
    # temperature: the same distribution (generate's warpers), another random stream (tested)
    prefix_attention: str = one_of("auto", "copied", "shared")  # auto: shared
    # hf: generation (sampling, rationalization, evaluation, v-star's candidates) under bfloat16 autocast with a
    # bfloat16 copy of the frozen base, as SFT trains (train.autocast). auto: on a CPU that multiplies bfloat16
    # natively (AVX512-BF16, AMX) and an unquantized float32 base; off elsewhere (a GPU already samples in
    # model.compute_dtype). GRPO's rollouts stay in the RL trainer's dtype. (docs/speed.md, with accuracy)
    autocast: str = one_of("auto", "bfloat16", "off")
    # hf shared-prefix loop, temperature > 0: how a token is drawn from the warped distribution. "cdf": one uniform
    # number per row against the cumulative probabilities; "multinomial": torch.multinomial, which on a CPU draws
    # an exponential number for every vocabulary entry (a third of a sampling step here). The same distribution,
    # another random stream. auto: cdf on a CPU, multinomial elsewhere. GRPO's star_lite rollouts follow it.
    draw: str = one_of("auto", "cdf", "multinomial")
    # hf: a LoRA adapter's weights added into a copy of each adapted layer's weight for the call (W + scale B A,
    # what peft's merge computes), so a token costs the base's matmuls alone; the base's own weights are back
    # after, bit for bit. float32: the same greedy tokens; under sampling.autocast bfloat16 one rounding of the
    # sum instead of two products. A 4-bit base is never merged (that would re-quantize). auto: merged on a CPU,
    # separate elsewhere (the copy costs the adapted weights' memory once more); never under FSDP. (docs/speed.md)
    lora: str = one_of("auto", "merged", "separate")
    vllm_options: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM, e.g. gpu_memory_utilization


@dataclass
class StarConfig:
    iterations: int = at_least(3, 0)
    rationalization: bool = True  # retry wrong problems with the gold answer as a hint
    stop_on_empty: bool = True  # stop the run when an iteration keeps no rationale
    samples_per_problem: int = at_least(1, 1)  # STaR: 1 greedy rationale; ReST-EM samples many at temperature
    max_kept_per_problem: int = at_least(0, 0)  # 0 = no cap; ReST-EM keeps at most 10 per problem
    stop_when_validation_stops_rising: bool = False  # paper step 6; needs task.num_validation > 0, never looks at test
    adaptive_sampling: bool = False  # AdaSTaR: sample a prioritized share of the problems (adastar section)


@dataclass
class TrainConfig:
    start_steps: int = at_least(40, 1)  # paper: 40 steps in the first iteration
    step_growth: float = at_least(1.2, 1.0)  # paper: +20% per iteration
    epochs: float = at_least(0.0, 0.0)  # > 0: at least this many passes over the kept examples (never fewer steps than
    #   the schedule)
    learning_rate: float = at_least(2e-4, 0.0)  # paper's 1e-6 is for a full fine-tune; LoRA needs more
    warmup_steps: int = at_least(5, 0)  # paper: 100, scaled to the short LoRA schedules
    batch_size: int = at_least(8, 1)  # paper: 8 sequences
    gradient_accumulation_steps: int = at_least(1, 1)
    max_length: int = at_least(512, 8)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1.3x slower (TRL's default
    #   is on)
    # CPU: bfloat16 autocast where the CPU multiplies bfloat16 natively (AVX512-BF16, AMX); LoRA weights and
    # optimizer state stay float32. GPU: as model.compute_dtype says. (docs/speed.md, with accuracy)
    autocast: str = one_of("auto", "bfloat16", "off")  # auto | bfloat16 | off
    # CPU: the reward model, GRPO (its updates and rollouts), DPO and the verifier (its training and scoring) under
    # bfloat16 autocast as SFT is (train.autocast), the frozen base as one bfloat16 copy. GPU: they follow
    # train.autocast. (docs/speed.md, with accuracy)
    rl_autocast: str = one_of("auto", "bfloat16", "off")  # auto | bfloat16 | off
    # which LM head computes the loss: "completion" projects only the positions the loss scores (transformers'
    # logits_to_keep in SFT; in TRL's DPO and GRPO their fused head on the scored positions alone, in plain
    # torch), "trl" is TRL's chunked fused head, which in SFT also logs entropy and token accuracy
    lm_head: str = one_of("auto", "completion", "trl")  # auto: completion on CPU, trl on GPU (Triton kernels; never
    #   builds the full logits)
    padding_free: bool = True  # one row per batch, no padding tokens (TRL padding_free); same loss (docs/speed.md)
    # how a padding-free row attends: "segments" runs attention example by example (cost: each example's
    # length squared), "mask" over the whole row with a block mask (the row's length squared); same result
    packed_attention: str = one_of("auto", "mask", "segments")  # auto: segments with padding_free under SDPA/eager
    #   attention
    # under bfloat16 autocast, frozen float32 base weights as a bfloat16 copy for the training (cast once,
    # not at every matmul; bit-identical; costs half the float32 weights' memory while training)
    frozen_weights: str = one_of("auto", "as_loaded", "bfloat16")  # auto: bfloat16 when training autocasts to bfloat16
    #   | as_loaded
    # LoRA dropout: "fast" draws only the dropped positions (geometric gaps; 16-bit integers above p = 0.25),
    # "torch" is nn.Dropout (one Bernoulli draw per element)
    dropout: str = one_of("auto", "fast", "torch")  # auto: fast on CPU (about 2x cheaper there), torch on GPU
    weight_decay: float = 0.0
    logging_steps: int = 10
    report_to: str = "none"  # any of TRL/transformers' report_to values: tensorboard, trackio, wandb


@dataclass
class EvalConfig:
    batch_size: int = at_least(32, 1)
    max_new_tokens: int = at_least(64, 1)
    pass_k: int = at_least(0, 0)  # > 0: also pass@k and majority-vote@k from k samples per problem
    k_temperature: float = at_least(1.0, 0.0)  # ReST-EM's pass@k setting: T=1.0, top-p 0.95
    k_top_p: float = between(0.95, 0.0, 1.0)


@dataclass
class RestEMConfig:
    samples_per_problem: int = at_least(8, 1)  # paper: 32 (MATH), 64 (APPS); fewer fit a small GPU
    temperature: float = at_least(0.7, 0.0)  # paper's E-step temperature
    max_kept_per_problem: int = at_least(10, 0)  # paper: at most 10 correct solutions per problem
    # M-step length: at least this many passes over the kept set (the paper fine-tunes on the whole
    # E-step set), and never fewer steps than STaR's schedule, so a small kept set is not trained
    # for a handful of steps (measured: 27 kept examples, 4 steps, accuracy below the base) and
    # k samples per problem never mean k times fewer passes per example.
    epochs: float = at_least(1.0, 0.0)


@dataclass
class RLConfig:
    # --- self-motivated learning: rationales conditioned on the gold answer and on wrong ones
    wrong_answers_per_problem: int = at_least(2, 1)  # wrong answers to write a rationale for, per question: 2 gives
    #   each question two right-over-wrong pairs at 3 rationales' cost, and leaves one candidate to spare when
    #   a rationale is dropped for leaking its hint; CommonsenseQA has 4 wrong choices, arithmetic 8 slips
    samples_per_problem: int = at_least(4, 1)  # free samples per question, only for tasks with no wrong_answers (GSM8K,
    #   user tasks): the model's own wrong answers among them become the wrong candidates
    temperature: float = at_least(0.7, 0.0)  # of the free samples and the answer-conditioned rationales
    reward_model_init: str = one_of("sft", "base")  # sft: the reward model starts from the SFT adapter's weights (as
    #   InstructGPT and the paper's RLHF recipe do): it already reads the task's rationales, so a few hundred pairs go
    #   further than from the base; base: a fresh adapter on the base model
    reward_steps: int = at_least(40, 1)  # reward model (RewardTrainer) steps
    reward_learning_rate: float = 1e-4
    reward_batch_size: int = at_least(8, 1)
    heldout_fraction: float = between(0.2, 0.0, 0.9)  # questions whose pairs measure the reward model's pairwise
    #   accuracy
    center_rewards_coefficient: float = at_least(0.01, 0.0)  # RewardTrainer's auxiliary loss pulling scores towards 0
    #   (TRL's documented value, from Eisenstein et al. 2023); RL also standardises the scores (make_reward)
    # --- RL (GRPOTrainer): self-motivated from the SFT adapter, grpo from rl.grpo_init
    steps: int = at_least(0, 0)  # at most this many RL steps; 0 = until run.budget_tokens / budget_seconds is spent
    learning_rate: float = 1e-5
    num_generations: int = at_least(8, 2)  # completions per prompt (GRPO's group; TRL's default): a group of 4 from a
    #   model right 15% of the time is all wrong half the time (zero advantage, no gradient)
    batch_size: int = at_least(16, 2)  # completions per step; a multiple of num_generations
    generation_temperature: float = 1.0
    loss_type: str = one_of("dapo", "bnpo", "dr_grpo", "grpo")  # TRL's default: token-level normalisation (DAPO); grpo
    #   | dr_grpo | bnpo also
    scale_rewards: str = one_of("group", "batch", "none")  # TRL's default: advantages divided by the group's sd; none =
    #   Dr. GRPO; batch
    epsilon: float = at_least(0.2, 0.0)  # PPO-style clip range (TRL's default)
    epsilon_high: float = at_least(0.0, 0.0)  # upper clip; 0 = epsilon (TRL's default); DAPO's clip-higher uses 0.28
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal and draw new prompts in their
    #   place, so a step trains on informative groups; the dropped rollouts count against the budget
    dynamic_sampling_max_rounds: int = at_least(4, 0)  # redraws per step before training on what it has
    rollout_sampler: str = one_of("auto", "star_lite", "trl")  # who writes GRPO's rollouts: star_lite (its sampler:
    #   rows leave the batch as they stop, a shared prefix computed once) or trl (TRL's generate); auto = star_lite
    #   where it samples
    #   TRL's distribution (one process, no vLLM, no min_p or repetition penalty), else trl
    grpo_init: str = one_of("sft", "base")  # method grpo starts from: sft = an adapter trained on the base's own right
    #   rationales (one STaR iteration without rationalization), as DeepSeekMath starts GRPO from an SFT model;
    #   base = a fresh adapter on the base model (measured: right 15% of the time at T=1, most groups flat)
    max_completion_length: int = at_least(0, 0)  # 0 = sampling.max_new_tokens: rollouts get the room the task's
    #   rationales get
    beta: float = at_least(0.04, 0.0)  # KL penalty to the starting policy (self-motivated and grpo: their SFT adapter),
    #   TRL's former default: guards against reward hacking of an imperfect reward model
    reward_model_weight: float = at_least(1.0, 0.0)  # self-motivated reward = w_rm * reward model + w_task *
    #   correctness
    correctness_weight: float = at_least(1.0, 0.0)  # the grader beside the reward model, so a hacked reward model score
    #   cannot outweigh a wrong answer
    trl_options: dict[str, Any] = field(default_factory=dict)  # passed to TRL's GRPOConfig, e.g. use_vllm: true


@dataclass
class IterativeDPOConfig:
    # iterative DPO on the model's own pairs (method dpo): sample, SFT on the right ones, DPO right-over-wrong
    samples_per_problem: int = at_least(4, 1)  # rationales per problem per iteration, so a question can get right and
    #   wrong
    temperature: float = at_least(0.7, 0.0)  # of those samples (greedy gives one rationale, so no pair)
    max_pairs_per_problem: int = at_least(4, 1)  # right-over-wrong pairs per question
    policy_init: str = one_of("sft", "base")  # sft: DPO continues the SFT adapter (the reference); base: a fresh
    #   adapter from the base
    pairs_from: str = one_of("policy", "previous")  # policy: the SFT adapter DPO starts from samples the pairs
    #   (Iterative RPO samples from the current policy; pairs from the model before SFT hold rationales SFT already made
    #   near-certain);
    #   previous: the pairs come from the samples SFT trained on (no second sampling)
    epochs: float = at_least(3.0, 0.0)  # DPO passes over the pairs (transformers' default num_train_epochs): steps
    #   follow the number of pairs, so 6 pairs are not trained for 20 steps nor 500 for 20
    steps: int = at_least(0, 0)  # at most this many DPOTrainer steps per iteration (0 = no cap)
    learning_rate: float = at_least(5e-5, 0.0)
    batch_size: int = at_least(8, 1)  # pairs per step
    beta: float = at_least(0.1, 0.0)  # DPO's KL strength (TRL's default)
    nll_weight: float = at_least(0.0, 0.0)  # > 0: add NLL on the chosen rationale with this weight (Iterative RPO,
    #   2404.19733: 1.0)
    evaluate_sft: bool = True  # also evaluate the SFT adapter DPO starts from (sft_accuracy, sft_eval.jsonl), so the
    #   row shows what DPO itself changed; evaluation is outside the budget


@dataclass
class VStarConfig:
    # V-STaR (Hosseini et al. 2024): STaR's generator sampling many at temperature, a DPO verifier on
    # all its right and wrong samples across iterations, best-of-k by the verifier at test time
    samples_per_problem: int = at_least(4, 2)  # generator samples per training problem per iteration (paper: 16)
    temperature: float = at_least(0.7, 0.0)  # of the generator's samples (paper: 0.7)
    k: int = at_least(8, 1)  # test-time candidates per problem: greedy, majority@k and verifier best-of-k on the same k
    max_pairs_per_problem: int = at_least(8, 1)  # verifier pairs per question, over all iterations
    epochs: float = at_least(3.0, 0.0)  # verifier DPO passes over its pairs (transformers' default num_train_epochs)
    steps: int = at_least(0, 0)  # at most this many verifier DPOTrainer steps (0 = no cap)
    learning_rate: float = at_least(5e-5, 0.0)
    batch_size: int = at_least(8, 1)
    beta: float = at_least(0.1, 0.0)  # DPO's beta; the verifier's score is beta * log(pi_verifier / pi_reference)


@dataclass
class AdaSTaRConfig:
    # AdaSTaR (Koh et al. 2025): each iteration samples only a prioritized share of the problems
    sample_fraction: float = between(0.5, 0.0, 1.0)  # share of the training problems sampled per iteration (1.0 = all,
    #   as STaR)
    curriculum: bool = True  # mix in easy problems when training accuracy is low (the paper's alpha^2 rule)


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: list(method_names(built_in_only=True)))
    output_dir: str = "runs/compare"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # every method once per seed; one seed cannot show
    #   spread
    resample_split: bool = False  # false: every seed sees the same problems, so methods pair problem by problem
    reference: str = "sft-direct"  # paired differences are method minus this (STaR's direct baseline)
    # per method, a grid of its own knobs: {method: {section.key: [values]}}; every point runs at the same budget
    # and the one with the best validation accuracy is the method's result (needs task.num_validation > 0).
    # Every trained method gets the same number of points (default: the config's values alone, one point)
    tune: dict[str, Any] = field(default_factory=dict)
    # processes running (seed, method) jobs side by side, longest first (0 = auto: one on a GPU or under
    # accelerate launch; on a CPU STAR_LITE_COMPARE_WORKERS when set, else the usable cores, at most one per
    # 6 GB of available memory and one per job). 1 = every job in this process, one after another
    workers: int = at_least(0, 0)
    # work two methods compute alike (the same weights, prompts or examples, settings and random state:
    # rest-em's iterations are v-star's generator, dpo's first SFT is rest-em's) computed once and handed to the
    # other, bit for bit (star_lite/reuse.py). auto: on, except under accelerate launch, with the vLLM backend,
    # a run.budget_seconds (a reused result costs no seconds) or a 4-bit base (model.load_in_4bit, the default:
    # a quantized base does not come out of SFT as it went in). off: every method computes all its own work
    reuse: str = one_of("auto", "off")


@dataclass
class RunConfig:
    output_dir: str = "runs/star"
    seed: int = 0
    # Checked after every sampling batch: an iteration that reaches it stops sampling (overshoot at most
    # one batch), trains on what it kept, is evaluated, and is the last one (0 = no limit).
    budget_tokens: int = at_least(0, 0)
    budget_seconds: float = at_least(0.0, 0.0)  # likewise for wall seconds; the cut iteration's training and eval still
    #   run
    budget_axis: str = one_of("generated", "all")  # what budget_tokens counts: generated tokens, or all = generated +
    #   trained on
    # torch threads on a CPU: 0 = auto (OMP_NUM_THREADS when set, else the usable cores shared among the
    # star_lite processes running on this machine, so seeds run side by side do not oversubscribe them)
    threads: int = at_least(0, 0)
    # where torch's CPU memory comes from: auto = retain on a CPU (freed blocks reused, not handed back to
    # the kernel and faulted in again: star_lite/allocator.py), default = the C library's own settings
    malloc: str = one_of("auto", "retain", "default")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    star: StarConfig = field(default_factory=StarConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rest_em: RestEMConfig = field(default_factory=RestEMConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    dpo: IterativeDPOConfig = field(default_factory=IterativeDPOConfig)
    v_star: VStarConfig = field(default_factory=VStarConfig)
    adastar: AdaSTaRConfig = field(default_factory=AdaSTaRConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys that may differ from a run's saved config when it is continued: they change how
# much is done or how fast, never what an already finished iteration means.
RESUMABLE_KEYS = {
    "star.iterations",
    "star.stop_on_empty",
    "star.stop_when_validation_stops_rising",
    "sampling.batch_size",
    "sampling.backend",
    "sampling.prefix_attention",
    "sampling.draw",  # the same distribution, another random stream
    "sampling.lora",  # float32: the same tokens; bfloat16: the same weights, rounded once
    "rl.rollout_sampler",  # the same distribution, another sampler
    "sampling.vllm_options",
    "eval.batch_size",
    "train.logging_steps",
    "train.padding_free",
    "train.lm_head",
    "train.packed_attention",
    "train.frozen_weights",
    "train.dropout",  # which generator draws the same dropout distribution
    "train.report_to",
    "run.output_dir",
    "run.budget_tokens",
    "run.budget_seconds",
    "run.threads",  # how fast, not what is computed
    "run.malloc",  # where memory comes from, not what is computed
    # which methods and seeds a comparison lists, and its reference, do not change what one
    # method's run means: a seed or method added later (or one seed run per process) resumes
    "compare.methods",
    "compare.seeds",
    "compare.reference",
    "compare.tune",  # which grid points exist; each point's run holds its own values
    "compare.workers",  # how many run side by side, not what each computes
    "compare.reuse",  # whether work computed alike is computed once: the same results either way
}

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (key: value), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare off / on (no / yes) as a boolean
            return "on" if value else "off"
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{where}{key}'.{hint} Valid keys: {', '.join(valid)}")


def _build_section(cls: type, data: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {data!r}")
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, names, f"{section}.")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def _field_checks(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Every field with a range or a set of choices (``at_least``, ``between``, ``one_of``), as dotted names."""
    return [(f"{section.name}.{f.name}", dict(f.metadata)) for section in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, section.name)) if f.metadata]


def _is_method(name: str) -> bool:
    """Whether ``name`` is a registered method; a module it names that cannot be imported raises ConfigError."""
    from .methods.registry import UnknownMethod, get

    try:
        get(name)
    except UnknownMethod:
        return False
    return True


def validate(cfg: Config) -> Config:
    """Check ranges and choices; raise ConfigError naming the field."""
    for dotted, spec in _field_checks(cfg):
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if "range" in spec:
            lo, hi = spec["range"]
            if value < lo or (hi is not None and value > hi):
                bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                raise ConfigError(f"{dotted}: must be {bound}, got {value!r}")
        if "choices" in spec and value not in spec["choices"]:
            raise ConfigError(f"{dotted}: must be one of {sorted(spec['choices'])}, got {value!r}")
    if cfg.rl.batch_size % cfg.rl.num_generations:
        raise ConfigError(f"rl.batch_size ({cfg.rl.batch_size}) must be a multiple of rl.num_generations "
                          f"({cfg.rl.num_generations}): GRPO scores each prompt's completions as a group")
    if cfg.adastar.sample_fraction <= 0:
        raise ConfigError(f"adastar.sample_fraction: must be above 0 (a share of the training problems), "
                          f"got {cfg.adastar.sample_fraction!r}")
    for section in ("dpo", "v_star"):
        if getattr(cfg, section).beta <= 0:
            raise ConfigError(f"{section}.beta: must be above 0 (DPO divides by it), "
                              f"got {getattr(cfg, section).beta!r}")
    if cfg.star.stop_when_validation_stops_rising and not cfg.task.num_validation:
        raise ConfigError("star.stop_when_validation_stops_rising: needs task.num_validation > 0; stopping on "
                          "test accuracy would choose by the numbers the run reports")
    unknown = [m for m in cfg.compare.methods if not _is_method(m)]
    if unknown:
        raise ConfigError(f"compare.methods: unknown method(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(method_names())}, or a registered one as package.module:name")
    if not cfg.compare.methods:
        raise ConfigError(f"compare.methods: list at least one of {', '.join(method_names())}")
    if not cfg.compare.seeds or len(set(cfg.compare.seeds)) != len(cfg.compare.seeds):
        raise ConfigError(f"compare.seeds: list one or more different seeds, e.g. [0, 1, 2]; got {cfg.compare.seeds}")
    if not _is_method(cfg.compare.reference):
        raise ConfigError(f"compare.reference: unknown method {cfg.compare.reference!r}; choose from "
                          f"{', '.join(method_names())}")
    check_tune(cfg)
    tp = cfg.sampling.vllm_options.get("tensor_parallel_size", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"sampling.vllm_options.tensor_parallel_size: must be a whole number of GPUs, at least "
                          f"1 (one vLLM engine per node spans that many), got {tp!r}")
    return cfg


def tune_points(cfg: Config, method: str) -> list[dict[str, Any]]:
    """The grid points ``compare.tune`` gives ``method``: one dict of dotted keys per point ([{}] = the
    config's values alone), in the order of the product of the listed values.

    >>> cfg = from_dict({"task": {"num_validation": 20}, "compare": {"methods": ["few-shot", "grpo"],
    ...     "reference": "few-shot", "tune": {"grpo": {"rl.learning_rate": [1e-5, 1e-4], "rl.beta": [0.0]}}}})
    >>> tune_points(cfg, "grpo"), tune_points(cfg, "star")
    ([{'rl.learning_rate': 1e-05, 'rl.beta': 0.0}, {'rl.learning_rate': 0.0001, 'rl.beta': 0.0}], [{}])
    """
    import itertools

    grid = cfg.compare.tune.get(method) or {}
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


def check_tune(cfg: Config) -> None:
    """compare.tune: known methods and keys, lists of values, validation to choose on, and the same number
    of points for every trained method (the same tuning budget)."""
    sections = {f.name: {g.name for g in dataclasses.fields(f.type if isinstance(f.type, type) else
                                                                  typing.get_type_hints(Config)[f.name])}
                for f in dataclasses.fields(Config)}
    for method, grid in cfg.compare.tune.items():
        if not _is_method(method):
            raise ConfigError(f"compare.tune.{method}: unknown method; choose from {', '.join(method_names())}")
        if not isinstance(grid, dict):
            raise ConfigError(f"compare.tune.{method}: expected a mapping of section.key: [values], got {grid!r}")
        for dotted, values in grid.items():
            section, _, key = dotted.partition(".")
            if section not in sections or key not in sections[section] or section in ("compare", "run", "task"):
                raise ConfigError(f"compare.tune.{method}.{dotted}: not a method setting (a key of model, sampling, "
                                  "star, train, eval, rest_em, rl, dpo, v_star or adastar)")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"compare.tune.{method}.{dotted}: expected a non-empty list of values, got {values!r}")
    sizes = {m: len(tune_points(cfg, m)) for m in cfg.compare.methods if m != "few-shot"}
    if any(n > 1 for n in sizes.values()):
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{m} {n}" for m, n in sizes.items())
            raise ConfigError(f"compare.tune: every trained method gets the same number of grid points (the same "
                              f"tuning budget); now {listed}. Give each method in compare.methods a grid of "
                              f"{max(sizes.values())} points")
        if not cfg.task.num_validation:
            raise ConfigError("compare.tune: choosing a grid point needs task.num_validation > 0; choosing on test "
                              "would report the best of several test scores")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. star.iterations=3")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: the key must be section.key, e.g. train.learning_rate "
                              "(or deeper inside a mapping, e.g. task.options.data_files.test)")
        value = yaml.safe_load(raw) if raw.strip() else ""
        target = data
        for part in parts[:-1]:  # section, then (for task.options.x.y) the mappings inside it
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{dotted}: '{part}' is not a mapping of keys")
        target[parts[-1]] = value
    return data


def from_dict(data: dict[str, Any] | None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from nested dicts (YAML's shape) plus --set overrides."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    data = apply_overrides(data, overrides or [])
    sections = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    built = {}
    for name, value in data.items():
        if name not in sections:
            raise _unknown_key(name, list(sections), "")
        built[name] = _build_section(hints[name], value or {}, name)
    return validate(Config(**built))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the defaults when path is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, task, ...) at the top")
    return from_dict(data, overrides)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def diff_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
