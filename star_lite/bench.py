"""`star-lite bench`: sampling and SFT throughput, side by side with plain `model.generate` and
with TRL's `SFTTrainer` at its defaults.

Both samplers get the same prompts (the task's few-shot prompts), batch size and greedy
settings, alternately, in the same process; both trainers the same examples, steps, batch size
and learning rate. The table reports medians and the spread over ``--repeats``. Useful tokens
are those up to each sequence's stop, never padding.

    star-lite bench configs/quickstart.yaml --repeats 3
    star-lite bench configs/quickstart.yaml --random-weights Llama-3.1-8B --set model.load_in_4bit=true
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .sampling import _num_generated, generator, in_bfloat16, merges_lora, uses_autocast

# Sizes of real architectures, for speed and memory figures with random weights (no download).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
}


def random_weights_checkpoint(arch: str, tokenizer_source: str, out_dir: Path) -> Path:
    """Save a model of ``arch``'s sizes with random weights (and a tokenizer) as a checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import load_tokenizer

    if arch not in ARCHITECTURES:
        raise ValueError(f"--random-weights: unknown architecture '{arch}'; known: {', '.join(ARCHITECTURES)}")
    spec = dict(ARCHITECTURES[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), max_position_embeddings=4096, **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    load_tokenizer(tokenizer_source).save_pretrained(out_dir)  # a real tokenizer; ids stay below vocab_size
    return out_dir


@torch.no_grad()
def plain_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                   stop_strings) -> tuple[list[str], int]:
    """The baseline: `model.generate` on left-padded batches in the given order; (texts, useful tokens)."""
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id}
    texts, tokens = [], 0
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=list(stop_strings),
                             tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        batch = tokenizer.batch_decode(new, skip_special_tokens=True)
        texts += batch
        tokens += sum(_num_generated(row, tokenizer.pad_token_id, eos, text, stop_strings)
                      for row, text in zip(new, batch))
    return texts, tokens


def padding_share(lengths: list[int], batch_size: int, trials: int = 200, seed: int = 0) -> float:
    """Expected share of padding tokens in padded batches of ``batch_size`` drawn in random order
    (as the trainer draws them); what padding-free batches save.

    >>> padding_share([10, 10, 10, 10], 2)
    0.0
    >>> round(padding_share([10, 30], 2), 2)
    0.33
    """
    import random

    rng = random.Random(seed)
    padded = real = 0
    for _ in range(trials):
        order = rng.sample(lengths, len(lengths))
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            padded += len(batch) * max(batch)
            real += sum(batch)
    return 1 - real / padded


def train_trl_defaults(base, tokenizer, examples: list[dict[str, str]], cfg: Config, steps: int, out_dir: Path):
    """The SFT baseline: TRL's ``SFTTrainer`` as its defaults leave it (padded batches, gradient
    checkpointing, bfloat16 autocast, its fused LM head with entropy and token-accuracy logs), given
    only what the run fixes: steps, batch size, learning rate, warm-up, seed, device. Returns the
    trained PeftModel."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .models import fresh_adapter, resolve_device
    from .trainers.sft import checkpointing_off

    set_seed(0)
    model = fresh_adapter(base, cfg.model)
    args = SFTConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=cfg.train.batch_size,
                     gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                     learning_rate=cfg.train.learning_rate, warmup_steps=cfg.train.warmup_steps, seed=cfg.run.seed,
                     use_cpu=resolve_device(cfg.model.device) == "cpu", save_strategy="no", report_to="none",
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    trainer.train()
    if args.gradient_checkpointing:  # the base model is shared with the next measurement
        checkpointing_off(model.base_model.model)
    return model.eval()


def rollout_rates(model, tokenizer, task, problems, cfg: Config, repeats: int, out_dir: Path,
                  steps: int = 4) -> dict[str, list[float]]:
    """GRPO's rollouts written by star_lite's sampler and by TRL's own generation, both through one
    GRPOTrainer's ``_generate_single_turn`` (stop handling included) on the same prompts, group size
    (``rl.num_generations``) and step size (``rl.batch_size``), in alternating order: useful tokens/s of
    each, per repeat. The prompts are what method grpo prompts with (zero-shot from an SFT start, few-shot
    from the base). Leaves ``model`` without the adapter it borrowed."""
    from datasets import Dataset
    from trl import GRPOConfig

    from .models import fresh_adapter
    from .progress import quiet_trainer
    from .trainers.grpo import _stopping_grpo_trainer, grpo_args, rollouts_by

    shots = 0 if cfg.rl.grpo_init == "sft" else cfg.task.num_few_shot
    prompts = [task.prompt(p, num_few_shot=shots) for p in problems]
    policy = fresh_adapter(model, cfg.model)
    one_step = copy.deepcopy(cfg)
    one_step.rl.steps = 1  # the trainer only generates here; no budget needed
    args = GRPOConfig(**{**grpo_args(one_step, out_dir), "report_to": "none"})
    trainer = quiet_trainer(_stopping_grpo_trainer()(
        model=policy, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), processing_class=tokenizer,
        stop_strings=task.stop_strings, rollout_sampler="trl", draw=cfg.sampling.draw,
        merge_lora=merges_lora(cfg)))  # as a run's rollouts
    fast = rollouts_by("auto", trainer)
    group, per_step = cfg.rl.num_generations, max(1, cfg.rl.batch_size // cfg.rl.num_generations)
    ids = tokenizer(prompts)["input_ids"]
    batches = [[ids[(s * per_step + j) % len(ids)] for j in range(per_step) for _ in range(group)] for s in range(steps)]
    rates: dict[str, list[float]] = {"star_lite": [], "trl": [], "sampler": [fast]}
    for r in range(repeats):
        for which in ("star_lite", "trl") if r % 2 == 0 else ("trl", "star_lite"):
            trainer.rollout_sampler = fast if which == "star_lite" else "trl"
            tokens, seconds = 0, 0.0
            for batch in batches:
                (completions, _), sec = _timed(lambda: trainer._generate_single_turn(batch, None, {}, group))
                tokens, seconds = tokens + sum(len(c) for c in completions), seconds + sec
            rates[which].append(tokens / seconds)
    del trainer
    policy.unload()
    return rates


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - t


def _summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:10.1f} ({min(values):.1f}-{max(values):.1f})"


def bench(cfg: Config, *, repeats: int = 3, num_prompts: int = 64, sft_steps: int = 5,
          random_weights: str | None = None) -> dict[str, Any]:
    """Measure and print sampling (star_lite vs plain generate) and SFT throughput; return the figures."""
    from .loop import build_task, peak_memory_mb
    from .models import load_adapter, load_base_model, load_tokenizer, resolve_device
    from .trainers.sft import train_adapter

    from .allocator import apply_malloc
    from .threads import apply_threads, registered

    cfg = copy.deepcopy(cfg)
    device = resolve_device(cfg.model.device)
    with registered():
        threads = apply_threads(cfg.run.threads)
    retained = apply_malloc(cfg.run.malloc, device)
    tmp = tempfile.TemporaryDirectory(prefix="star_lite_bench_")
    if random_weights:
        cfg.model.name_or_path = str(random_weights_checkpoint(random_weights, cfg.model.name_or_path, Path(tmp.name)))
    task, train, test = build_task(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = load_base_model(cfg.model)
    # the same prompts, in the same length-sorted order, for both samplers
    pairs = sorted(((task.prompt(p, num_few_shot=cfg.task.num_few_shot), p) for p in (test + train)[:num_prompts]),
                   key=lambda x: len(x[0]))
    prompts = [prompt for prompt, _ in pairs]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bs, mnt = cfg.sampling.batch_size, cfg.sampling.max_new_tokens
    generate = generator(cfg)  # star_lite's sampler for sampling.backend (hf or vllm)
    autocast = cfg.sampling.backend == "hf" and uses_autocast(cfg)
    plain = in_bfloat16(plain_generate) if autocast else plain_generate  # the same numerics as the sampler
    figures: dict[str, list[float]] = {k: [] for k in ("fast_tps", "plain_tps", "fast_s", "plain_s", "prefill_s",
                                                       "sft_tps", "sft_trl_tps")}

    def side_by_side(path_prompts: list[str], r: int, desc: str) -> dict[str, tuple[float, float, list[str]]]:
        """star_lite's sampler and plain generate on the same prompts, in an order alternating with ``r``
        to share the machine's drift: {"fast"|"plain": (useful tokens/s, seconds, texts)}."""
        timed = {}
        for which in ("fast", "plain") if r % 2 == 0 else ("plain", "fast"):
            if which == "fast":
                gens, sec = _timed(lambda: generate(model, tokenizer, path_prompts, batch_size=bs, max_new_tokens=mnt,
                                                    stop_strings=task.stop_strings, desc=desc))
                timed["fast"] = (sum(g.num_tokens for g in gens) / sec, sec, [g.text for g in gens])
            else:
                (texts, tokens), sec = _timed(lambda: plain(model, tokenizer, path_prompts, bs, mnt,
                                                            task.stop_strings))
                timed["plain"] = (tokens / sec, sec, texts)
        return timed

    differing = 0
    fast_texts: list[str] = []
    for r in range(repeats):
        timed = side_by_side(prompts, r, "bench")
        for which in ("fast", "plain"):
            figures[f"{which}_tps"].append(timed[which][0])
            figures[f"{which}_s"].append(timed[which][1])
        fast_texts = timed["fast"][2]
        differing = sum(a != b for a, b in zip(fast_texts, timed["plain"][2]))
        _, sec = _timed(lambda: generate(model, tokenizer, prompts, batch_size=bs, max_new_tokens=1,
                                         stop_strings=task.stop_strings, desc="prefill"))
        figures["prefill_s"].append(sec)
    # the loop's other generation paths, each against plain generate on the same prompts: rationalization
    # (hinted few-shot prompts of the same problems) and evaluation (what evaluate prompts after training)
    eval_shots = cfg.task.num_few_shot if cfg.sampling.few_shot_after_training else 0
    paths = {"rationalization": sorted((task.prompt(p, hint=True, num_few_shot=cfg.task.num_few_shot) for _, p in pairs),
                                       key=len),
             "evaluation": sorted((task.prompt(p, num_few_shot=eval_shots) for _, p in pairs), key=len)}
    for name, path_prompts in paths.items():
        figures[f"{name}_ratio"], figures[f"{name}_differing"] = [], []
        for r in range(repeats):
            timed = side_by_side(path_prompts, r, name)
            figures[f"{name}_ratio"].append(timed["fast"][0] / timed["plain"][0])
            figures[f"{name}_differing"].append(sum(a != b for a, b in zip(timed["fast"][2], timed["plain"][2])))
    if autocast:  # what sampling.autocast itself gives: the sampler under bfloat16 autocast against float32
        as_float32 = copy.deepcopy(cfg)
        as_float32.sampling.autocast = "off"
        float32_generate = generator(as_float32)
        figures["autocast_ratio"], figures["autocast_differing"] = [], []
        for r in range(repeats):
            timed = {}
            for which, fn in (("bf16", generate), ("fp32", float32_generate))[::1 if r % 2 == 0 else -1]:
                gens, sec = _timed(lambda: fn(model, tokenizer, paths["evaluation"], batch_size=bs, max_new_tokens=mnt,
                                              stop_strings=task.stop_strings, desc="evaluation"))
                timed[which] = (sum(g.num_tokens for g in gens) / sec, [g.text for g in gens])
            figures["autocast_ratio"].append(timed["bf16"][0] / timed["fp32"][0])
            figures["autocast_differing"].append(sum(a != b for a, b in zip(timed["bf16"][1], timed["fp32"][1])))
    rollouts = rollout_rates(model, tokenizer, task, [p for _, p in pairs], cfg, repeats, Path(tmp.name) / "grpo")
    figures["rollouts_ratio"] = [f / p for f, p in zip(rollouts["star_lite"], rollouts["trl"])]
    sampling_peak = peak_memory_mb(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # SFT on what STaR would train on: the model's own rationales for these problems
    own = [{"prompt": task.format_question(p), "completion": task.format_completion(task.clean_completion(text))}
           for (_, p), text in zip(pairs, fast_texts)]
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    examples = [own[i % len(own)] for i in range(per_step * sft_steps)]
    lengths = [len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) + 1 for e in examples]  # + EOS
    n_tokens = sum(lengths)
    padding = padding_share(lengths, cfg.train.batch_size)
    for r in range(repeats):
        for which in ("star_lite", "trl") if r % 2 == 0 else ("trl", "star_lite"):
            out = Path(tmp.name) / f"sft_{r}_{which}"
            if which == "star_lite":
                (trained, _), sec = _timed(lambda: train_adapter(model, tokenizer, examples, cfg, sft_steps, out))
            else:
                trained, sec = _timed(lambda: train_trl_defaults(model, tokenizer, examples, cfg, sft_steps, out))
            model = trained.unload()
            figures["sft_tps" if which == "star_lite" else "sft_trl_tps"].append(n_tokens / sec)
        out = Path(tmp.name) / f"sft_{r}_star_lite"
    # ... and evaluation with the trained adapter, so the peak covers one whole STaR iteration
    adapted = load_adapter(model, out / "adapter")
    generate(adapted, tokenizer, prompts, batch_size=bs, max_new_tokens=mnt, stop_strings=task.stop_strings,
             desc="evaluating")
    merges = cfg.sampling.backend == "hf" and merges_lora(cfg) and not cfg.model.load_in_4bit
    if merges:  # what sampling.lora=merged gives: the trained adapter merged for the call against LoRA apart
        as_separate = copy.deepcopy(cfg)
        as_separate.sampling.lora = "separate"
        separate_generate = generator(as_separate)
        figures["lora_ratio"], figures["lora_differing"] = [], []
        for r in range(repeats):
            timed = {}
            for which, fn in (("merged", generate), ("separate", separate_generate))[::1 if r % 2 == 0 else -1]:
                gens, sec = _timed(lambda: fn(adapted, tokenizer, paths["evaluation"], batch_size=bs,
                                              max_new_tokens=mnt, stop_strings=task.stop_strings, desc="evaluation"))
                timed[which] = (sum(g.num_tokens for g in gens) / sec, [g.text for g in gens])
            figures["lora_ratio"].append(timed["merged"][0] / timed["separate"][0])
            figures["lora_differing"].append(sum(a != b for a, b in zip(timed["merged"][1], timed["separate"][1])))
    result = {
        "device": device, "backend": cfg.sampling.backend, "model": random_weights or cfg.model.name_or_path,
        "generation_autocast": autocast,
        "lora_merged_speedup": statistics.median(figures["lora_ratio"]) if merges else None,
        "4bit": cfg.model.load_in_4bit,
        "prompts": len(prompts), "batch_size": bs, "repeats": repeats,
        "median": {k: statistics.median(v) for k, v in figures.items()},
        "spread": {k: (min(v), max(v)) for k, v in figures.items()},
        "threads": threads[0], "malloc_retained": retained, **{f"{name}_speedup": statistics.median(figures[f"{name}_ratio"]) for name in paths},
        **{f"{name}_differing": max(figures[f"{name}_differing"]) for name in paths},
        "speedup": statistics.median(f / p for f, p in zip(figures["fast_tps"], figures["plain_tps"])),
        "rollouts_speedup": statistics.median(figures["rollouts_ratio"]), "rollouts_sampler": rollouts["sampler"][0],
        "rollouts_tps": statistics.median(rollouts["star_lite"]), "rollouts_trl_tps": statistics.median(rollouts["trl"]),
        "sft_speedup": statistics.median(f / p for f, p in zip(figures["sft_tps"], figures["sft_trl_tps"])),
        "sft_padding_share": padding, "differing_sequences": differing, "peak_memory_mb_sampling": sampling_peak,
        "peak_memory_mb": max(sampling_peak, peak_memory_mb(device)),
    }
    decode = [max(0.0, f - p) for f, p in zip(figures["fast_s"], figures["prefill_s"])]
    print(f"star-lite bench: {result['model']} on {device} ({'4-bit NF4' if result['4bit'] else 'full precision'}), "
          f"{len(prompts)} few-shot prompts, batch {bs}, {repeats} repeats: median (min-max)")
    print(f"{'torch threads (run.threads)':<42}{threads[0]:10d} ({threads[1]})")
    print(f"{'freed memory kept for reuse (run.malloc)':<42}{'yes' if retained else 'no':>10}")
    print(f"{'sampling useful tokens/s, star_lite ' + cfg.sampling.backend:<42}{_summary(figures['fast_tps'])}")
    print(f"{'sampling useful tokens/s, plain generate':<42}{_summary(figures['plain_tps'])}")
    print(f"{'speed-up (same-run ratio, median)':<42}{result['speedup']:10.2f}x")
    for name in paths:
        ratios = figures[f"{name}_ratio"]
        print(f"{name + ' speed-up vs plain generate':<42}{statistics.median(ratios):10.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), greedy outputs differing: {max(figures[name + '_differing'])}")
    if autocast:
        ratios = figures["autocast_ratio"]
        print(f"{'evaluation, bf16 autocast vs float32':<42}{statistics.median(ratios):10.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), greedy outputs differing: {max(figures['autocast_differing'])} "
              "(sampling.autocast; the lines above compare both samplers under it)")
    if merges:
        ratios = figures["lora_ratio"]
        print(f"{'evaluation after SFT, LoRA merged vs apart':<42}{statistics.median(ratios):10.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), greedy outputs differing: {max(figures['lora_differing'])} "
              f"(sampling.lora{', under bf16 autocast' if autocast else ''})")
    ratios = figures["rollouts_ratio"]
    print(f"{'GRPO rollouts tokens/s, ' + rollouts['sampler'][0] + ' sampler':<42}{_summary(rollouts['star_lite'])}")
    print(f"{'GRPO rollouts tokens/s, TRL generation':<42}{_summary(rollouts['trl'])}")
    print(f"{'rollouts speed-up vs TRL generation':<42}{statistics.median(ratios):10.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}), groups of {cfg.rl.num_generations}, "
          f"{max(1, cfg.rl.batch_size // cfg.rl.num_generations)} prompts a step, T={cfg.rl.generation_temperature}")
    print(f"{'star_lite prefill seconds (1 new token)':<42}{_summary(figures['prefill_s'])}")
    print(f"{'star_lite decode seconds (total - prefill)':<42}{_summary(decode)}")
    print(f"{'SFT training tokens/s, star_lite':<42}{_summary(figures['sft_tps'])}")
    print(f"{'SFT training tokens/s, TRL defaults':<42}{_summary(figures['sft_trl_tps'])}")
    print(f"{'SFT speed-up vs TRL defaults (same-run ratio)':<42}{result['sft_speedup']:10.2f}x")
    print(f"{'padding in padded SFT batches (expected)':<42}{padding:10.0%} of tokens, lengths "
          f"{min(lengths)}-{max(lengths)}")
    print(f"{'peak memory MB, sampling':<42}{sampling_peak:10.0f}")
    print(f"{'peak memory MB, sample + train + evaluate':<42}{result['peak_memory_mb']:10.0f}")
    print(f"{'greedy outputs differing from plain':<42}{differing:10d} of {len(prompts)}")
    tmp.cleanup()
    return result
