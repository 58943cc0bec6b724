"""Padding-free SFT trains the same adapter as padded batches, with no padding tokens; the speed
switches (train.lm_head, train.autocast, train.gradient_checkpointing) do what they say."""

import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from star_lite.config import from_dict
from star_lite.models import load_tokenizer
from star_lite.tasks import load_task
from trl import SFTTrainer

from star_lite.trainers import args as trainer_args
from star_lite.training import train_adapter, uses_bf16_autocast

from conftest import tiny_config_dict


def _examples(n: int):
    # 1- to 3-digit sums: lengths differ, so padded batches carry padding
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="scratchpad")
    return [{"prompt": task.format_question(p), "completion": task.format_completion(task.exemplars()[0].rationale
                                                                                        if i % 3 == 0 else p.answer)}
            for i, p in enumerate(task.load("train", n, 0))]


def _lora_weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


@pytest.fixture
def batches(monkeypatch):
    """The batches the real trainer (TRL's collator included) hands to the model, as they reach the loss."""
    seen = []
    training_step = SFTTrainer.training_step  # star_lite's own loss (train.lm_head) is a subclass's compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
        return training_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", spy)
    return seen


def test_padding_free_matches_padded_training(tiny_model_dir, tmp_path, batches):
    tok = load_tokenizer(str(tiny_model_dir))
    examples = _examples(12)
    lengths = {len(tok(e["prompt"] + e["completion"])["input_ids"]) for e in examples}
    assert len(lengths) > 3  # the test means something only when a batch would need padding
    results = {}
    for padding_free in (False, True):
        cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                         train={"padding_free": padding_free, "learning_rate": 1e-2}))
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        batches.clear()
        model, trained = train_adapter(base, tok, examples, cfg, 3, tmp_path / str(padding_free), seed=1)
        results[padding_free] = ([h["loss"] for h in trained.history], _lora_weights(model))
        assert len(batches) == 3
        if padding_free:  # each batch is one row of 4 examples laid end to end, with no padding
            for b in batches:
                assert b["input_ids"].shape[0] == 1 and "position_ids" in b
                assert (b["position_ids"][0] == 0).sum() == cfg.train.batch_size  # 4 sequences restart at 0
                assert "attention_mask" not in b or bool(b["attention_mask"].all())
        else:  # padded: one row per example, shorter rows padded
            assert all(b["input_ids"].shape[0] == cfg.train.batch_size for b in batches)
            assert any(not bool(b["attention_mask"].all()) for b in batches)
    (padded_loss, padded_w), (free_loss, free_w) = results[False], results[True]
    assert len(padded_loss) == 3 and padded_loss == pytest.approx(free_loss, rel=1e-4)
    assert padded_w.keys() == free_w.keys()
    for k in padded_w:
        torch.testing.assert_close(padded_w[k], free_w[k], rtol=1e-3, atol=1e-5)
    # and training moved the adapter, so equal weights are not two untouched initialisations
    assert any(padded_w[k].abs().sum() > 0 for k in padded_w if "lora_B" in k)


@pytest.mark.parametrize("padding_free", [True, False])
def test_examples_longer_than_max_length_are_cut_on_the_way_to_the_model(tiny_model_dir, tmp_path, batches,
                                                                         padding_free):
    tok = load_tokenizer(str(tiny_model_dir))
    long = {"prompt": "Q: What is 1 + 1?\nA:", "completion": " 1 + 1 = 2." * 20 + " The answer is 2."}
    short = {"prompt": "Q: What is 2 + 2?\nA:", "completion": " The answer is 4."}
    full = [len(tok(e["prompt"] + e["completion"])["input_ids"]) + 1 for e in (long, short)]  # + EOS
    max_length = 32
    assert full[0] > max_length > full[1]
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"padding_free": padding_free, "max_length": max_length,
                                            "batch_size": 2}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model, trained = train_adapter(base, tok, [long, short], cfg, 1, tmp_path, seed=1)
    (b,) = batches
    if padding_free:  # one row: the long example cut to max_length, then the short one whole
        assert b["input_ids"].shape == (1, max_length + full[1])
        assert b["position_ids"][0].tolist() == list(range(max_length)) + list(range(full[1]))
    else:
        assert b["input_ids"].shape == (2, max_length)
    # the loss mask was cut with the tokens: the long example's completion still ends at max_length
    labels = b["labels"].reshape(-1)
    assert int((labels != -100).sum()) == max_length - len(tok(long["prompt"])["input_ids"]) + full[1] - len(
        tok(short["prompt"])["input_ids"])
    # tokens counted as trained: the cut length (an EOS equal to the pad token is not counted)
    assert trained.trained_tokens == pytest.approx(max_length + full[1], abs=2)


def test_gradient_checkpointing_is_off_after_training(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"gradient_checkpointing": True}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, trained = train_adapter(base, tok, _examples(8), cfg, 2, tmp_path, seed=1)
    assert len(trained.history) == 2
    assert not base.is_activation_checkpointing  # the next sampling pass runs with the KV cache
    # star_lite's own call turns it off by the name transformers has not deprecated
    assert not [w for w in caught if "gradient_checkpointing_disable" in str(w.message)]


def test_train_loss_and_tokens_are_recorded_when_no_step_was_logged(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"logging_steps": 10, "batch_size": 2}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = _examples(4)
    model, trained = train_adapter(base, tok, examples, cfg, 2, tmp_path, seed=1)
    assert trained.history == []  # 2 steps, logged every 10: nothing logged
    assert trained.train_loss is not None and trained.train_loss > 0  # the trainer's own mean loss
    # 2 steps of 2 examples: every token of the 4 examples went through forward and backward once
    lengths = [len(tok(e["prompt"] + e["completion"])["input_ids"]) + 1 for e in examples]  # + EOS
    assert trained.trained_tokens == pytest.approx(sum(lengths), abs=len(examples))


@pytest.mark.parametrize("padding_free", [True, False])
def test_completion_head_trains_the_same_adapter_as_trls_head(tiny_model_dir, tmp_path, padding_free):
    tok = load_tokenizer(str(tiny_model_dir))
    examples = _examples(12)
    results = {}
    for head in ("trl", "completion"):
        cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                         train={"lm_head": head, "padding_free": padding_free,
                                                "gradient_accumulation_steps": 2}))
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model, trained = train_adapter(base, tok, examples, cfg, 3, tmp_path / head, seed=1)
        results[head] = ([h["loss"] for h in trained.history], _lora_weights(model), trained.history)
    (trl_loss, trl_w, trl_hist), (own_loss, own_w, own_hist) = results["trl"], results["completion"]
    assert len(trl_loss) == 3 and own_loss == pytest.approx(trl_loss, rel=1e-4)
    for k in trl_w:
        torch.testing.assert_close(own_w[k], trl_w[k], rtol=1e-3, atol=1e-5)
    assert any(trl_w[k].abs().sum() > 0 for k in trl_w if "lora_B" in k)
    # what the completion head saves: TRL's per-token metrics, which nothing here reads
    assert "mean_token_accuracy" in trl_hist[0] and "mean_token_accuracy" not in own_hist[0]


def _lm_head_dtypes(tiny_model_dir, tmp_path, autocast: str) -> tuple[set, dict]:
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"autocast": autocast}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    seen = set()
    base.lm_head.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    model, trained = train_adapter(base, tok, _examples(8), cfg, 2, tmp_path / autocast, seed=1)
    return seen, {"losses": [h["loss"] for h in trained.history], "lora": _lora_weights(model)}


def test_bf16_autocast_keeps_lora_weights_float32_and_trains_close_to_float32(tiny_model_dir, tmp_path):
    seen_bf16, bf16 = _lm_head_dtypes(tiny_model_dir, tmp_path, "bfloat16")
    seen_fp32, fp32 = _lm_head_dtypes(tiny_model_dir, tmp_path, "off")
    assert seen_bf16 == {torch.bfloat16} and seen_fp32 == {torch.float32}  # the matmuls ran in bfloat16
    assert all(w.dtype == torch.float32 for w in bf16["lora"].values())  # the trained weights did not
    assert bf16["losses"] == pytest.approx(fp32["losses"], rel=2e-2)


def _cpu_computes_bfloat16() -> bool:
    """The answer native_bfloat16("cpu") must give, from /proc/cpuinfo and torch's kernel choice."""
    import os
    import re
    flags = set(re.findall(r"[a-z0-9_]+", Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0]))
    chosen = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and chosen not in {"avx2", "default"} \
        and torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def test_the_bfloat16_probe_and_the_auto_autocast_follow_this_cpu(tiny_model_dir, tmp_path):
    """No monkeypatch: the suite runs natively and under ATEN_CPU_CAPABILITY=avx2 and =default (README, docs/tests.md),
    so this sees both answers of the probe and checks what ``train.autocast: auto`` then does."""
    from star_lite.models import native_bfloat16
    expected = _cpu_computes_bfloat16()
    assert native_bfloat16("cpu") is expected
    seen, _ = _lm_head_dtypes(tiny_model_dir, tmp_path, "auto")
    assert seen == ({torch.bfloat16} if expected else {torch.float32})


def test_bf16_autocast_is_automatic_only_where_the_cpu_computes_bfloat16(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(trainer_args, "native_bfloat16", lambda device, native=native: native)
        assert uses_bf16_autocast("auto", "cpu", torch.float32) is native
    monkeypatch.setattr(trainer_args, "native_bfloat16", lambda device: True)
    assert not uses_bf16_autocast("auto", "cpu", torch.float16)  # a base already in half precision stays as is
    assert uses_bf16_autocast("auto", "cuda", torch.bfloat16) and not uses_bf16_autocast("auto", "cuda", torch.float32)


def test_gradient_checkpointing_stays_off_unless_asked(tiny_model_dir, tmp_path):
    """TRL's SFTConfig turns gradient checkpointing on by default; train.gradient_checkpointing=false
    must reach it, or every layer is computed twice."""
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    calls = []
    enable = base.activation_checkpointing_enable  # what the Trainer calls (gradient_checkpointing_* is its old name)
    base.activation_checkpointing_enable = lambda *a, **k: (calls.append(1), enable(*a, **k))
    train_adapter(base, tok, _examples(8), cfg, 1, tmp_path, seed=1)
    assert not cfg.train.gradient_checkpointing and calls == []
    # and asked for, it is switched on: the spy sees the call the Trainer makes
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     train={"gradient_checkpointing": True}))
    train_adapter(base, tok, _examples(8), cfg, 1, tmp_path / "on", seed=1)
    assert calls


def _train(tiny_model_dir, tmp_path, name, steps=3, model=None, **train):
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False, **(model or {})},
                                     train={"learning_rate": 1e-2, **train}))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model_, trained = train_adapter(base, tok, _examples(12), cfg, steps, tmp_path / name, seed=1)
    return base, [h["loss"] for h in trained.history], _lora_weights(model_)


def test_attention_by_segments_trains_the_same_adapter_as_the_block_mask(tiny_model_dir, tmp_path, monkeypatch):
    from star_lite import fastpaths

    calls = []
    segment_attention = fastpaths.segment_attention

    def spy(module, query, *args, **kwargs):
        calls.append(fastpaths.packed_segments(kwargs.get("position_ids")))
        return segment_attention(module, query, *args, **kwargs)

    monkeypatch.setattr(fastpaths, "segment_attention", spy)
    _, mask_loss, mask_w = _train(tiny_model_dir, tmp_path, "mask", packed_attention="mask")
    assert calls == []
    base, seg_loss, seg_w = _train(tiny_model_dir, tmp_path, "segments", packed_attention="segments")
    # every layer of every step attended example by example: 4 examples per padding-free row
    assert len(calls) == 3 * base.config.num_hidden_layers and all(c is not None and len(c) == 4 for c in calls)
    assert base.config._attn_implementation == "sdpa"  # the loaded implementation is back for sampling
    assert seg_loss == pytest.approx(mask_loss, rel=1e-4)
    for k in mask_w:
        torch.testing.assert_close(seg_w[k], mask_w[k], rtol=1e-3, atol=1e-5)
    assert any(mask_w[k].abs().sum() > 0 for k in mask_w if "lora_B" in k)
    # on a CPU the examples attend as one padded batch; past the size limit (as on a GPU) one SDPA call each
    padded = []
    padded_attention = fastpaths.padded_causal_attention
    monkeypatch.setattr(fastpaths, "padded_causal_attention", lambda *a: padded.append(1) or padded_attention(*a))
    _train(tiny_model_dir, tmp_path, "padded", steps=1, packed_attention="segments")
    assert len(padded) == base.config.num_hidden_layers
    padded.clear()
    monkeypatch.setattr(fastpaths, "PADDED_SCORES_LIMIT", 0)
    _, one_loss, one_w = _train(tiny_model_dir, tmp_path, "one_by_one", packed_attention="segments")
    assert padded == []
    assert one_loss == pytest.approx(mask_loss, rel=1e-4)
    for k in mask_w:
        torch.testing.assert_close(one_w[k], mask_w[k], rtol=1e-3, atol=1e-5)


def test_bfloat16_frozen_weights_train_the_identical_adapter_and_are_undone(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: seen.append(w.dtype) or linear(x, w, b))
    _, cast_loss, cast_w = _train(tiny_model_dir, tmp_path, "cast", autocast="bfloat16", frozen_weights="as_loaded")
    assert torch.bfloat16 not in seen  # as loaded: float32 weights, cast by autocast at each matmul
    seen.clear()
    base, copy_loss, copy_w = _train(tiny_model_dir, tmp_path, "copy", autocast="bfloat16", frozen_weights="bfloat16")
    assert torch.bfloat16 in seen and torch.float32 in seen  # the base's copies and the LoRA weights
    assert copy_loss == cast_loss  # autocast casts to the same values: bit-identical
    for k in cast_w:
        torch.testing.assert_close(copy_w[k], cast_w[k], rtol=0, atol=0)
    assert all(p.dtype == torch.float32 for p in base.parameters())  # the float32 originals are back
    # off when training does not autocast: the copies would change what float32 training computes
    seen.clear()
    _train(tiny_model_dir, tmp_path, "off", steps=1, autocast="off", frozen_weights="bfloat16")
    assert torch.bfloat16 not in seen


def test_bfloat16_frozen_weights_keep_tied_weights_tied():
    from star_lite.fastpaths import bfloat16_frozen_weights

    a, b, trained = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    b.weight = a.weight
    a.weight.requires_grad_(False)
    model = torch.nn.Sequential(a, b, trained)
    with bfloat16_frozen_weights(model) as replaced:
        assert replaced == 2 and a.weight is b.weight and a.weight.dtype == torch.bfloat16  # one copy, shared
        assert trained.weight.dtype == torch.float32  # a trained weight is never copied
    assert a.weight is b.weight and a.weight.dtype == torch.float32


def test_fast_dropout_drops_at_the_rate_keeps_the_mean_and_is_swapped_only_while_training(tiny_model_dir, tmp_path,
                                                                                           monkeypatch):
    from star_lite.fastpaths import FastDropout

    torch.manual_seed(0)
    x = torch.ones(2000, 2000)
    out = FastDropout(0.05).train()(x)
    # 4M elements: the dropped share's standard error is 1.1e-4, so 6e-4 is over 5 of them, and a rate
    # 3% off (0.0515) is 14 of them away
    assert (out == 0).float().mean().item() == pytest.approx(0.05, abs=6e-4)
    assert out.mean().item() == pytest.approx(1.0, abs=0.003)  # survivors scaled by 1 / (1 - p)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.95)]
    # a fresh mask on every call, independent of the last: both drop an element with probability p^2
    again = FastDropout(0.05).train()(x)
    assert ((out == 0) & (again == 0)).float().mean().item() == pytest.approx(0.05 ** 2, abs=2.5e-4)
    x = x[:400, :1000]
    assert torch.equal(FastDropout(0.05).eval()(x), x)
    # the gradient passes where the element was kept, scaled as the element was
    leaf = torch.ones(300, 200, requires_grad=True)
    out = FastDropout(0.05).train()(leaf)
    out.sum().backward()
    assert torch.equal(leaf.grad, out.detach())
    # above p = 0.25 the mask comes from 16-bit integers: the same rate and mean
    out = FastDropout(0.5).train()(x)
    assert (out == 0).float().mean().item() == pytest.approx(0.5, abs=0.003)  # standard error 7.9e-4
    assert out.mean().item() == pytest.approx(1.0, abs=0.006)
    again = FastDropout(0.5).train()(x)
    assert ((out == 0) & (again == 0)).float().mean().item() == pytest.approx(0.25, abs=0.003)
    calls = []
    forward = FastDropout.forward
    monkeypatch.setattr(FastDropout, "forward", lambda self, x: calls.append(self.p) or forward(self, x))
    for setting, used in (("torch", False), ("fast", True)):
        calls.clear()
        base, losses, _ = _train(tiny_model_dir, tmp_path, setting, steps=2, model={"lora_dropout": 0.1},
                                 dropout=setting)
        assert bool(calls) is used and set(calls) <= {0.1}
        assert all(x == x for x in losses)  # finite losses
    # the adapter left on the base after training has torch's dropout modules again
    assert not any(isinstance(m, FastDropout) for m in base.modules())


def test_bfloat16_lora_inputs_stay_bfloat16_for_the_identical_adapter(tiny_model_dir, tmp_path, monkeypatch):
    """Under bfloat16 autocast peft's upcast of a bfloat16 input to the float32 LoRA weights is off:
    dropout sees the bfloat16 input, and the adapter is the same, bit for bit."""
    import contextlib

    import peft.helpers
    from star_lite.fastpaths import FastDropout

    seen = []
    forward = FastDropout.forward
    monkeypatch.setattr(FastDropout, "forward", lambda self, x: seen.append(x.dtype) or forward(self, x))
    base, kept_loss, kept_w = _train(tiny_model_dir, tmp_path, "kept", model={"lora_dropout": 0.1},
                                     autocast="bfloat16", dropout="fast")
    assert torch.bfloat16 in seen and torch.float32 in seen  # o_proj/down_proj inputs bfloat16, the others float32
    lora_layers = [m for m in base.modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
    assert lora_layers and all(m.cast_input_dtype_enabled for m in lora_layers)  # peft's casting is back after
    seen.clear()
    monkeypatch.setattr(peft.helpers, "disable_input_dtype_casting", lambda model: contextlib.nullcontext())
    _, cast_loss, cast_w = _train(tiny_model_dir, tmp_path, "cast", model={"lora_dropout": 0.1},
                                  autocast="bfloat16", dropout="fast")
    assert torch.bfloat16 not in seen  # peft cast every input up to float32
    assert kept_loss == cast_loss
    for k in cast_w:
        torch.testing.assert_close(kept_w[k], cast_w[k], rtol=0, atol=0)


def test_training_leaves_the_base_model_collectable(tiny_model_dir, tmp_path, monkeypatch):
    """While the trainer trains, the collector skips the objects that existed before (gc.freeze); after it,
    nothing stays frozen, so a base model that a run drops is freed, cycles and all."""
    import gc
    import weakref

    freeze_counts = []
    unfreeze = gc.unfreeze
    monkeypatch.setattr(gc, "unfreeze", lambda: freeze_counts.append(gc.get_freeze_count()) or unfreeze())
    base, losses, _ = _train(tiny_model_dir, tmp_path, "collect", steps=1)
    assert freeze_counts and freeze_counts[0] > 0  # the base and the libraries were frozen while training
    assert gc.get_freeze_count() == 0
    weight = weakref.ref(base.model.layers[0].mlp.gate_proj.base_layer.weight)
    del base
    gc.collect()
    assert weight() is None
