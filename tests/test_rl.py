"""The RL phase and self-motivated learning's data on a tiny random model: rollouts that stop,
what they cost, the KL reference, answer-conditioned rationales, the reward model's start."""

import contextlib
import re

import pytest
import torch

from star_lite.config import from_dict
from star_lite.methods import sample_conditioned_rationales
from star_lite.models import fresh_adapter, load_base_model, load_tokenizer
from star_lite.rl import (grpo_args, load_reward_base, make_reward, pair_accuracy_summary, preference_pairs,
                          reward_model_start, train_rl)
from star_lite.rundir import read_jsonl
from star_lite.sampling import Generation
from star_lite.stats import wilson
from star_lite.tasks import ArithmeticTask

from conftest import tiny_config_dict

RL = {"steps": 1, "num_generations": 2, "batch_size": 2, "learning_rate": 1e-3}


def _rl_config(model_dir, out, **rl):
    return from_dict(tiny_config_dict(model_dir, out, rl={**RL, **rl}))


# --- rollouts end at the task's stop strings ---------------------------------------------------

def test_rollout_tokens_after_the_stop_get_no_loss_and_are_not_counted(tiny_model_dir, tmp_path, monkeypatch):
    import trl

    cfg = _rl_config(tiny_model_dir, tmp_path, max_completion_length=40, rollout_sampler="trl")  # TRL's generate, cut
    tok = load_tokenizer(cfg.model.name_or_path)
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 2, 0)
    # the base model's habit: the answer, a blank line, then a question and answer of its own
    raw = tok(" 3 + 4 = 7. The answer is 7.\n\nQ: What is 1 + 2?\nA: 1 + 2 = 3.", add_special_tokens=False)["input_ids"]
    upto_stop = next(n for n in range(1, len(raw) + 1) if "\n\n" in tok.decode(raw[:n]))
    assert upto_stop < len(raw) - 5

    def generate_past_the_stop(self, prompt_ids, *args, **kwargs):  # stands in for model.generate
        return [list(raw) for _ in prompt_ids], None

    masks = []

    def record_loss_inputs(self, model, inputs):
        masks.append((inputs["completion_ids"].clone(), inputs["completion_mask"].clone()))
        return original_loss(self, model, inputs)

    original_loss = trl.GRPOTrainer._compute_loss
    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", generate_past_the_stop)
    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", record_loss_inputs)
    counter: dict[str, int] = {}
    reward = make_reward(task, {p.id: p for p in problems}, counter=counter, rollouts=tmp_path / "rollouts.jsonl")
    policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
    _, trained = train_rl(policy, tok, task, problems, reward, cfg, tmp_path, counter=counter)

    (ids, mask), = masks
    assert mask.sum(dim=1).tolist() == [upto_stop, upto_stop]  # no loss past the stop
    assert ids.shape[1] == upto_stop and ids[0].tolist() == raw[:upto_stop]
    assert counter["tokens"] == 2 * upto_stop
    prompt_tokens = sum(len(tok(task.prompt(p))["input_ids"]) for p in problems)
    assert trained.trained_tokens == prompt_tokens + 2 * upto_stop
    # item: each completion is logged, cut at the stop, with its reward and the reward's parts
    rows = read_jsonl(tmp_path / "rollouts.jsonl")
    assert len(rows) == 2 and {r["prompt_id"] for r in rows} <= {p.id for p in problems}
    for r in rows:
        assert r.keys() >= {"step", "prompt_id", "completion", "tokens", "reward", "reward_model", "grader"}
        assert (r["step"], r["completion"], r["tokens"]) == (0, "3 + 4 = 7. The answer is 7.", upto_stop)
        assert r["reward_model"] is None and r["reward"] == r["grader"]


class StopsAtE(ArithmeticTask):
    stop_strings = ("e",)  # in many tokens, so a random model meets it within a few


def test_rollout_generation_ends_when_every_rollout_has_stopped(tiny_model_dir, tmp_path, monkeypatch):
    import trl

    cfg = _rl_config(tiny_model_dir, tmp_path, max_completion_length=48, rollout_sampler="trl")
    tok = load_tokenizer(cfg.model.name_or_path)
    task = StopsAtE(1, 1)
    problems = task.load("train", 2, 0)
    generated = []
    original = trl.GRPOTrainer._generate_single_turn

    def record(self, *args, **kwargs):
        ids, logprobs = original(self, *args, **kwargs)
        generated.extend(ids)
        return ids, logprobs

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", record)
    counter: dict[str, int] = {}
    policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
    train_rl(policy, tok, task, problems, make_reward(task, {p.id: p for p in problems}, counter=counter), cfg,
             tmp_path, counter=counter)
    assert all("e" in tok.decode(ids) for ids in generated)
    assert max(len(ids) for ids in generated) < 48  # generate stopped, not ran to the cap and was cut after
    assert counter["tokens"] <= sum(len(ids) for ids in generated)


def test_star_lite_rollouts_follow_trl_generation(tiny_model_dir, tmp_path, monkeypatch):
    """rl.rollout_sampler: star_lite's sampler writes GRPO's rollouts (auto picks it here) from TRL's distribution:
    TRL's temperature, top-k, top-p and length, and, with the draw made deterministic, the same tokens as TRL's
    generate for prompts of different lengths in one batch, each ending at its stop."""
    import trl

    from star_lite.sampling import hf

    # the draw made deterministic: the most probable token of the warped distribution (the warping itself is
    # generate's, test_sampling; here the settings it is given must be TRL's)
    from star_lite.sampling import prefix_decode

    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples=1, **k: probs.argmax(-1, keepdim=True))
    monkeypatch.setattr(prefix_decode, "draw_by_cdf", lambda probs, uniform=None: probs.argmax(-1))  # sampling.draw
    task = StopsAtE(1, 3)
    problems = task.load("train", 4, 0)
    tok = load_tokenizer(str(tiny_model_dir))
    assert len({len(tok(task.prompt(p))["input_ids"]) for p in problems}) > 1  # prompts of different lengths
    calls, seen = [], {}
    original_generate = hf.generate
    monkeypatch.setattr(hf, "generate", lambda *a, **k: calls.append(k) or original_generate(*a, **k))
    original_loss = trl.GRPOTrainer._compute_loss

    def record(self, model, inputs):
        ids, mask = inputs["completion_ids"], inputs["completion_mask"].bool()
        seen.setdefault(self.rollout_sampler, []).extend(tuple(r[m].tolist()) for r, m in zip(ids, mask))
        return original_loss(self, model, inputs)

    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", record)
    from star_lite import fastpaths

    merged, original_merged = [], fastpaths.merged_lora

    @contextlib.contextmanager
    def record_merged(model, *a):
        with original_merged(model, *a) as n:
            merged.append(n)
            yield n

    monkeypatch.setattr(fastpaths, "merged_lora", record_merged)
    for sampler in ("trl", "auto"):
        cfg = _rl_config(tiny_model_dir, tmp_path / sampler, max_completion_length=24, rollout_sampler=sampler,
                         num_generations=2, batch_size=8, generation_temperature=0.7, trl_options={"top_k": 40})
        cfg.sampling.draw = "cdf"  # passed through to star_lite's rollouts (the default, auto, is cdf on a CPU)
        cfg.model.load_in_4bit = False  # a float32 base, which sampling.lora (auto: merged on a CPU) merges
        policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
        train_rl(policy, tok, task, problems, make_reward(task, {p.id: p for p in problems}), cfg, tmp_path / sampler)
    # auto: star_lite's sampler wrote the one step's 8 rollouts with TRL's settings; trl: TRL's generate
    assert [len(k["prompt_ids"]) for k in calls] == [8]
    assert merged == [2 * 7]  # star_lite's rollouts ran with the adapter merged into the 2 layers' 7 projections
    assert {key: calls[0][key] for key in ("temperature", "top_k", "top_p", "max_new_tokens", "stop_strings", "draw")} \
        == {"temperature": 0.7, "top_k": 40, "top_p": 1.0, "max_new_tokens": 24, "stop_strings": ("e",), "draw": "cdf"}
    assert sorted(seen["star_lite"]) == sorted(seen["trl"])
    assert any("e" in tok.decode(ids) for ids in seen["trl"]) and len({len(ids) for ids in seen["trl"]}) > 1


def test_rollout_sampler_star_lite_is_refused_where_it_cannot_sample_trls_distribution(tiny_model_dir, tmp_path):
    from star_lite.config import ConfigError

    cfg = _rl_config(tiny_model_dir, tmp_path, rollout_sampler="star_lite", trl_options={"repetition_penalty": 1.2})
    tok = load_tokenizer(cfg.model.name_or_path)
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 2, 0)
    policy = fresh_adapter(load_base_model(cfg.model), cfg.model)
    with pytest.raises(ConfigError, match="rl.rollout_sampler.*repetition_penalty"):
        train_rl(policy, tok, task, problems, make_reward(task, {p.id: p for p in problems}), cfg, tmp_path)


def test_rl_completion_length_defaults_to_the_sampling_length(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, run={"budget_tokens": 100}))
    assert grpo_args(cfg, tmp_path)["max_completion_length"] == cfg.sampling.max_new_tokens == 8
    cfg = _rl_config(tiny_model_dir, tmp_path, max_completion_length=5)
    assert grpo_args(cfg, tmp_path)["max_completion_length"] == 5


# --- the KL penalty's reference is the policy RL starts from ----------------------------------

def test_kl_reference_is_the_sft_adapter_by_default(tiny_model_dir, tmp_path):
    from peft import PeftModel

    cfg = _rl_config(tiny_model_dir, tmp_path, max_completion_length=4)
    assert cfg.rl.beta > 0 and cfg.rl.correctness_weight > 0  # the reward-hacking guards are on by default
    tok = load_tokenizer(cfg.model.name_or_path)
    base = load_base_model(cfg.model)
    torch.manual_seed(1)
    sft = fresh_adapter(base, cfg.model)
    for name, p in sft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # an SFT adapter far from the base
    sft.save_pretrained(str(tmp_path / "sft"))
    base = sft.unload()
    policy = PeftModel.from_pretrained(base, str(tmp_path / "sft"), is_trainable=True)
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 2, 0)
    model, trained = train_rl(policy, tok, task, problems, make_reward(task, {p.id: p for p in problems}), cfg,
                              tmp_path)
    # the first step's rollouts come from the SFT policy itself: KL 0 to it, far from 0 to the base
    assert trained.history[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert list(model.peft_config) == ["default"]
    assert not (tmp_path / "adapter" / "ref").exists()


# --- self-motivated learning: rationales for the gold answer and for wrong ones ----------------

class LeakyArithmetic(ArithmeticTask):
    def leaks_hint(self, completion, answer):
        return "hint" in completion.lower()


class NoWrongAnswers(ArithmeticTask):
    def wrong_answers(self, problem, num):
        return []


def _scripted_generator(prompts_seen):
    """A sampler that follows the hint: answers the hinted number, or without a hint a sum that is
    off by 5; it gives the hint away when the hint is one more than the sum."""

    def generate(model, tokenizer, prompts, *, on_batch=None, **_):
        gens = []
        for prompt in prompts:
            prompts_seen.append(prompt)
            last = prompt.rsplit("Q: ", 1)[1]
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", last).groups())
            hint = re.search(r"\(Hint: the answer is (\d+)\.\)", last)
            x = int(hint.group(1)) if hint else a + b + 5
            text = f" The hint says {x}." if x == a + b + 1 else f" {a} + {b} = {x}. The answer is {x}."
            gens.append(Generation(text + "\n\nQ: What", 9))
        if on_batch:
            on_batch(list(range(len(prompts))), gens)
        return gens

    return lambda cfg: generate


@pytest.mark.parametrize("task_cls", [LeakyArithmetic, NoWrongAnswers])
def test_self_motivated_conditions_rationales_on_gold_and_wrong_answers(task_cls, tiny_model_dir, tmp_path,
                                                                          monkeypatch):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["rl.wrong_answers_per_problem=2",
                                                                  "rl.samples_per_problem=2"])
    prompts: list[str] = []
    monkeypatch.setattr("star_lite.loop.generator", _scripted_generator(prompts))
    task = task_cls(1, 1)
    problems = task.load("train", 5, 0)
    samples, free = sample_conditioned_rationales(None, None, task, problems, cfg, tmp_path / "cache.jsonl")

    for p in problems:
        mine = [s for s in samples if s["id"] == p.id]
        if task_cls is NoWrongAnswers:  # the model's own wrong answer, from its free samples
            assert [s["hint_answer"] for s in mine] == [p.answer, str(int(p.answer) + 5)]
        else:
            assert [s["hint_answer"] for s in mine] == [p.answer] + task.wrong_answers(p, 2)
        assert [s["correct"] for s in mine] == [s["hint_answer"] == p.answer for s in mine]  # graded on gold
        assert all("\n\n" not in s["completion"] for s in mine)
    hinted = [q for q in prompts if q.rsplit("Q: ", 1)[1].count("(Hint: the answer is")]
    assert len(hinted) == len(samples)
    assert len(free) == (2 * len(problems) if task_cls is NoWrongAnswers else 0)

    usable = [s for s in samples if not s["leaked"]]
    if task_cls is LeakyArithmetic:  # the hint one above the sum is given away, and dropped
        assert [s["hint_answer"] for s in samples if s["leaked"]] == [str(int(p.answer) + 1) for p in problems
                                                                       if str(int(p.answer) + 1) in
                                                                       task.wrong_answers(p, 2)]
        assert any(s["leaked"] for s in samples)
    pairs = preference_pairs(task, problems, usable)
    assert {p["id"] for p in pairs} == {p.id for p in problems}  # every question yields a pair
    assert all("hint" not in p["rejected"].lower() for p in pairs)


# --- the reward model ---------------------------------------------------------------------------

def test_reward_model_starts_from_the_sft_adapter_or_fresh(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))
    assert cfg.rl.reward_model_init == "sft"
    tok = load_tokenizer(cfg.model.name_or_path)
    sft = fresh_adapter(load_base_model(cfg.model), cfg.model)
    for name, p in sft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    sft.save_pretrained(str(tmp_path / "sft"))
    sft_weights = {n.replace(".default", ""): p for n, p in sft.named_parameters() if "lora_" in n}

    from_sft = reward_model_start(cfg, tok, tmp_path / "sft")
    lora = {n.replace(".default", ""): p for n, p in from_sft.named_parameters() if "lora_" in n}
    assert lora.keys() == sft_weights.keys()
    assert all(torch.equal(lora[n], sft_weights[n]) for n in lora)
    assert any(p.requires_grad for n, p in from_sft.named_parameters() if "score" in n)  # the head trains
    fresh = reward_model_start(cfg, tok)
    assert all(not p.any() for n, p in fresh.named_parameters() if "lora_B" in n)


def test_pair_accuracy_comes_with_its_count_and_wilson_interval(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))
    tok = load_tokenizer(cfg.model.name_or_path)
    pairs = [{"prompt": f"Q: What is {i} + 2?\nA:", "chosen": f" {i} + 2 = {i + 2}.", "rejected": f" {i} + 2 = {i + 3}."}
             for i in range(7)]
    got = pair_accuracy_summary(load_reward_base(cfg, tok), tok, pairs)
    k = round(got["reward_model_pair_accuracy"] * 7)
    assert got["reward_model_heldout_pairs"] == 7
    assert (got["reward_model_pair_ci_low"], got["reward_model_pair_ci_high"]) == wilson(k, 7)


# --- RL stops at the shared budget ---------------------------------------------------------------

def test_grpo_stops_at_the_first_step_that_reaches_the_token_budget(tiny_model_dir, tmp_path):
    from star_lite.methods import run_method

    data = tiny_config_dict(tiny_model_dir, tmp_path / "unused", rl={**RL, "steps": 6, "grpo_init": "base"},
                            run={"budget_tokens": 12})
    data["compare"] = {"methods": ["grpo"], "output_dir": str(tmp_path), "seeds": [0]}
    row = run_method(from_dict(data), "grpo")[-1]
    rollouts = read_jsonl(tmp_path / "grpo" / "iter_001" / "rollouts.jsonl")
    per_step = {}
    for r in rollouts:
        per_step[r["step"]] = per_step.get(r["step"], 0) + r["tokens"]
    assert row["generated_tokens"] == sum(per_step.values())
    assert 0 < row["rl_steps"] == len(per_step) < 6  # stopped early ...
    assert row["generated_tokens"] >= 12  # ... because the budget was reached ...
    assert row["generated_tokens"] - per_step[max(per_step)] < 12  # ... and not a step later


# --- train.rl_autocast: the RL and preference trainers under bfloat16 on a CPU ---------------------------

def test_rl_autocast_is_automatic_only_where_the_cpu_computes_bfloat16(monkeypatch):
    """``train.rl_autocast: auto`` under both answers of the probe, never for a 4-bit base on a CPU; a GPU
    follows train.autocast; the trainers' arguments carry the answer."""
    import star_lite.trainers.args as args

    unquantized = ["model.device=cpu", "model.load_in_4bit=false"]
    for native in (True, False):
        monkeypatch.setattr(args, "native_bfloat16", lambda device, native=native: native)
        assert args.rl_bf16(from_dict({}, unquantized)) is native
        assert args.trainer_args(from_dict({}, unquantized))["bf16"] is native
        assert args.rl_bf16(from_dict({}, [*unquantized, "train.rl_autocast=bfloat16"]))
        assert not args.rl_bf16(from_dict({}, [*unquantized, "train.rl_autocast=off"]))
    monkeypatch.setattr(args, "native_bfloat16", lambda device: True)
    assert not args.rl_bf16(from_dict({}, ["model.device=cpu", "model.load_in_4bit=true"]))
    assert not args.rl_bf16(from_dict({}, [*unquantized, "train.autocast=bfloat16", "train.rl_autocast=off"]))


@pytest.mark.parametrize("sampler", ["star_lite", "trl"])
def test_grpo_under_rl_autocast_rolls_out_and_updates_in_bfloat16(tiny_model_dir, tmp_path, monkeypatch, sampler):
    """Under train.rl_autocast=bfloat16 the frozen base is a bfloat16 copy during GRPO, so its rollouts (either
    sampler) must run under autocast too (TRL's generate meets bfloat16 weights with a float32 input
    otherwise); the matmuls of the rollouts and of the updates are bfloat16, the float32 base and LoRA weights
    are back after."""
    from star_lite.trainers import grpo

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"rl_autocast": "bfloat16"},
                                     rl={**RL, "max_completion_length": 6, "rollout_sampler": sampler}))
    tok = load_tokenizer(cfg.model.name_or_path)
    base = load_base_model(cfg.model)
    policy = fresh_adapter(base, cfg.model)
    head = policy.base_model.model.model.layers[0].mlp.down_proj.base_layer
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype, m.weight.dtype)))
    task = ArithmeticTask(1, 1)
    problems = task.load("train", 2, 0)
    model, trained = train_rl(policy, tok, task, problems, make_reward(task, {p.id: p for p in problems}), cfg,
                              tmp_path)
    assert trained.history and all(r["reward"] is not None for r in trained.history)
    assert {dtype for _, dtype, _ in seen} == {torch.bfloat16}
    assert {dtype for _, _, dtype in seen} == {torch.bfloat16}  # the frozen base as one bfloat16 copy
    assert any(grad for grad, _, _ in seen) and any(not grad for grad, _, _ in seen)  # updates and rollouts
    assert head.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
