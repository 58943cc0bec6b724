"""The fast sampler gives plain `generate`'s greedy outputs token for token."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from star_lite.config import from_dict
from star_lite.models import fresh_adapter, load_tokenizer
from star_lite.sampling import _batch_inputs, generate, shared_prefix
from star_lite.tasks import load_task

from conftest import tiny_config_dict


def _plain_generate(model, tok, prompts, max_new_tokens, stop):
    """Plain `generate`, one prompt at a time (no padding to tell apart from an EOS): (decoded text,
    generated token ids, up to and including the stop or EOS) per prompt."""
    out = []
    for prompt in prompts:
        enc = tok([prompt], return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=list(stop),
                             tokenizer=tok, pad_token_id=tok.pad_token_id)
        row = ids[0, enc["input_ids"].shape[1]:].tolist()
        out.append((tok.decode(row, skip_special_tokens=True), tuple(row)))
    return out


@pytest.mark.parametrize("with_adapter", [False, True])
def test_fast_sampler_equals_plain_generate(tiny_model_dir, tmp_path, with_adapter, monkeypatch):
    from star_lite.sampling import prefix_decode

    greedy_calls = []
    decode = prefix_decode.decode
    monkeypatch.setattr(prefix_decode, "decode", lambda *a, **k: greedy_calls.append(len(a[3])) or decode(*a, **k))
    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if with_adapter:
        cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))
        model = fresh_adapter(model, cfg.model)
        with torch.no_grad():  # a non-trivial adapter: B is zero at init
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        model.eval()
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=3) for p in task.load("test", 13, 0)]
    # the tiny random model never writes a blank line: stop also at a word it writes mid-way, so stops happen
    free = _plain_generate(model, tok, prompts, 12, ("\n\n",))
    word = tok.decode(free[0][1][5:6])
    stop = ("\n\n", word)
    plain = _plain_generate(model, tok, prompts, 12, stop)
    for share_prefix, prefix_attention in ((True, "shared"), (True, "copied"), (False, "shared")):
        greedy_calls.clear()
        fast = generate(model, tok, prompts, batch_size=5, max_new_tokens=12, stop_strings=stop,
                        share_prefix=share_prefix, prefix_attention=prefix_attention)
        # star_lite's own decode loop ran every batch (5, 5, 3 rows), with or without a shared prefix, only when asked to
        assert greedy_calls == ([5, 5, 3] if prefix_attention == "shared" else [])
        # the fast sampler sorts by length; compare per prompt, token for token
        assert [g.token_ids for g in fast] == [ids for _, ids in plain]
        assert [g.text for g in fast] == [text for text, _ in plain]
        assert all(g.num_tokens == len(g.token_ids) for g in fast)
    # each sequence ends at its first stop string, or at the token limit
    stopped = 0
    for g in fast:
        text = tok.decode(g.token_ids, skip_special_tokens=True)
        before = tok.decode(g.token_ids[:-1], skip_special_tokens=True)
        if any(s in text for s in stop):
            stopped += 1
            assert not any(s in before for s in stop), (text, "ran past its stop")
        else:
            assert g.num_tokens == 12 or g.token_ids[-1] == tok.eos_token_id, text
    assert stopped > 0, "no sequence stopped: the test shows nothing about stopping"


def test_prompts_without_a_shared_prefix_decode_as_each_prompt_alone(tiny_model_dir):
    """Zero-shot prompts (evaluation after training, GRPO from an SFT start) share no prefix: they take star_lite's
    loop with no prefix at all, padded on the left in one batch, and give plain generate's tokens one by one."""
    from star_lite.sampling import prefix_decode

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=0) for p in task.load("test", 9, 0)]
    ids = tok(prompts)["input_ids"]
    assert shared_prefix(ids) == [] and len({len(r) for r in ids}) > 2  # no prefix; padding in the batch
    free = _plain_generate(model, tok, prompts, 10, ("\n\n",))
    stop = ("\n\n", tok.decode(free[0][1][4:5]))
    plain = _plain_generate(model, tok, prompts, 10, stop)
    calls = []
    decode = prefix_decode.decode
    prefix_decode.decode, restore = (lambda *a, **k: calls.append(a[1]) or decode(*a, **k)), decode
    try:
        fast = generate(model, tok, prompts, batch_size=len(prompts), max_new_tokens=10, stop_strings=stop)
    finally:
        prefix_decode.decode = restore
    assert calls == [None]  # one batch, star_lite's loop, no prefix cache
    assert [g.token_ids for g in fast] == [ids for _, ids in plain]
    assert any(len(g.token_ids) < 10 for g in fast)  # some rows stopped and left the batch


def test_shared_prefix_sampling_follows_generate(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import GenerationConfig

    from star_lite.sampling.prefix_decode import _warpers

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model.generation_config.top_k = 7
    # the logits warped as generate warps them (temperature, then top-k, then top-p)
    config = GenerationConfig(**model.generation_config.to_dict())
    config.update(do_sample=True, temperature=0.7, top_p=0.9)
    theirs = model._get_logits_processor(config, device="cpu")
    assert len(theirs) == 3
    logits, ids = torch.randn(4, 49152) * 3, torch.zeros(4, 3, dtype=torch.long)
    assert torch.equal(_warpers(model, 0.7, 0.9)(ids, logits.clone()), theirs(ids, logits.clone()))
    # with the draw made deterministic (the most probable token), the sampling path gives generate's
    # tokens: the same warped distribution at every step, rows leaving as they stop
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples=1, **k: probs.argmax(-1, keepdim=True))
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=3) for p in task.load("test", 7, 0)]
    runs = [generate(model, tok, prompts, batch_size=4, max_new_tokens=10, temperature=0.7, top_p=0.9,
                     stop_strings=("\n\n",), prefix_attention=how, draw="multinomial") for how in ("shared", "copied")]
    assert [g.token_ids for g in runs[0]] == [g.token_ids for g in runs[1]]


def test_shared_prefix_loop_only_for_plain_causal_attention(tiny_model_dir):
    from transformers import AutoConfig

    from star_lite.sampling.prefix_decode import supported

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert supported(model)
    model.generation_config.repetition_penalty = 1.3  # logits processing the loop lacks: generate does it
    assert not supported(model)
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000)
    assert supported(AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **sizes)))
    sliding = AutoConfig.for_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0, **sizes)
    assert not supported(AutoModelForCausalLM.from_config(sliding))  # a window the loop does not apply


def test_shared_prefix_and_middle_padding():
    assert shared_prefix([[1, 2, 3], [1, 2, 3]], min_len=1) == [1, 2]  # each row keeps a token of its own
    assert shared_prefix([[1, 2], [3, 4]], min_len=1) == []
    enc = _batch_inputs([[7, 7, 1], [7, 7, 2, 3, 4]], prefix_len=2, pad_id=0, device="cpu")
    assert enc["input_ids"].tolist() == [[7, 7, 0, 0, 1], [7, 7, 2, 3, 4]]
    assert enc["attention_mask"].tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


def test_bench_smoke_prints_side_by_side_figures(tiny_model_dir, tmp_path, capsys):
    from star_lite.bench import bench

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["model.load_in_4bit=false", "task.num_few_shot=3"])
    result = bench(cfg, repeats=2, num_prompts=6, sft_steps=1)
    out = capsys.readouterr().out
    for line in ("useful tokens/s, star_lite hf", "useful tokens/s, plain generate", "speed-up",
                 "SFT training tokens/s, star_lite", "SFT training tokens/s, TRL defaults",
                 "SFT speed-up vs TRL defaults (same-run ratio)",
                 "padding in padded SFT batches", "peak memory MB, sample + train + evaluate",
                 "rationalization speed-up vs plain generate", "evaluation speed-up vs plain generate",
                 "torch threads (run.threads)", "GRPO rollouts tokens/s, star_lite sampler",
                 "GRPO rollouts tokens/s, TRL generation", "rollouts speed-up vs TRL generation"):
        assert line in out
    assert result["rollouts_sampler"] == "star_lite" and result["rollouts_tps"] > 0 and result["rollouts_trl_tps"] > 0
    assert result["differing_sequences"] == result["rationalization_differing"] == result["evaluation_differing"] == 0
    assert result["rationalization_speedup"] > 0 and result["evaluation_speedup"] > 0
    assert all(result["median"][k] > 0 for k in ("fast_tps", "plain_tps", "sft_tps", "sft_trl_tps"))
    # peaks in MB: at least the weights the process holds, at most the machine's memory (a KiB/MB slip fails)
    weights_mb = sum(p.numel() * p.element_size() for p in
                     AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()) / 2**20
    machine_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    for key in ("peak_memory_mb_sampling", "peak_memory_mb"):
        assert weights_mb < result[key] < machine_mb, (key, result[key], weights_mb)
    assert f"{result['peak_memory_mb']:10.0f}" in out
    assert 0.0 <= result["sft_padding_share"] < 1.0


def test_bench_random_weights_of_a_named_architecture(tiny_model_dir, tmp_path, capsys):
    from star_lite.bench import bench

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["model.load_in_4bit=true", "task.num_few_shot=2"])
    result = bench(cfg, repeats=1, num_prompts=4, sft_steps=1, random_weights="tiny-llama")
    assert result["model"] == "tiny-llama" and result["4bit"] and result["differing_sequences"] == 0
    with pytest.raises(ValueError, match="unknown architecture 'GPT-5'"):
        bench(cfg, repeats=1, num_prompts=2, sft_steps=1, random_weights="GPT-5")


@pytest.mark.parametrize("prefix_attention", ["shared", "copied"])
def test_rows_whose_tails_differ_in_length_decode_as_each_prompt_alone(tiny_model_dir, prefix_attention):
    # one batch holding every prompt: questions of 1 to 4 digits give tails of different lengths after the
    # shared few-shot prefix, so the padded rows' masks and positions decide the tokens
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # sharper attention than at initialisation, so what a row attends to moves its tokens
        for name, p in model.named_parameters():
            if "self_attn" in name:
                p.mul_(4.0)
    task = load_task("arithmetic", min_digits=1, max_digits=4, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=2) for p in task.load("test", 8, 0)]
    ids = tok(prompts)["input_ids"]
    prefix = shared_prefix(ids)
    assert len({len(r) - len(prefix) for r in ids}) >= 3, "the tails must differ in length"
    alone = _plain_generate(model, tok, prompts, 8, ("\n\n",))
    together = generate(model, tok, prompts, batch_size=len(prompts), max_new_tokens=8, stop_strings=("\n\n",),
                        prefix_attention=prefix_attention)
    assert [g.token_ids for g in together] == [row for _, row in alone]


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@pytest.mark.parametrize("draw", ["cdf", "multinomial"])
@pytest.mark.parametrize("temperature, top_k, top_p", [(0.5, 0, 1.0), (1.0, 4, 1.0), (1.0, 0, 0.6)])
def test_sampled_tokens_follow_temperature_top_k_and_top_p(tiny_model_dir, temperature, top_k, top_p, draw):
    """The first sampled token of many copies of one prompt, against the distribution worked out here from
    the model's logits: softmax(logits / T), cut to the k most likely, then to the smallest set reaching p;
    drawn either way (sampling.draw)."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # a peaked next-token distribution: a handful of tokens carry the mass
        model.get_output_embeddings().weight.mul_(40.0)
    model.generation_config.top_k = top_k or None
    task = load_task("arithmetic", min_digits=1, max_digits=1, rationale="plain")
    prompt = task.prompt(task.load("test", 1, 0)[0], num_few_shot=2)
    with torch.no_grad():
        logits = model(**tok([prompt], return_tensors="pt")).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)
    if top_k:
        probs[probs < probs.topk(top_k).values[-1]] = 0
    if top_p < 1.0:
        probs = probs / probs.sum()
        ranked, order = probs.sort(descending=True)
        probs[order[ranked.cumsum(0) - ranked >= top_p]] = 0  # the more likely tokens already reach p
    want = probs / probs.sum()
    plain = torch.softmax(logits, -1)
    assert _tv(want, plain) > 0.2, "the setting must change the distribution for the test to show anything"
    torch.manual_seed(0)
    n = 1200
    got = generate(model, tok, [prompt] * n, batch_size=400, max_new_tokens=1, temperature=temperature,
                   top_p=top_p, stop_strings=("\n\n",), draw=draw)
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in got]), minlength=len(want)).double()
    assert counts[want == 0].sum() == 0, "a token outside top-k / top-p was drawn"
    # 1,200 draws: the total-variation distance of the empirical distribution is about 0.03 or less here
    assert _tv(counts / n, want) < 0.08, (_tv(counts / n, want), _tv(counts / n, plain))


def test_sampling_passes_the_cache_by_its_current_name(tiny_model_dir, tmp_path):
    """No deprecation from star_lite's own calls: the KV cache goes by the name this transformers takes."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))
    adapted = fresh_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), cfg.model)
    task = load_task("arithmetic", min_digits=1, max_digits=2, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=2) for p in task.load("test", 4, 0)]
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    hf_logging.get_logger().addHandler(handler)
    hf_logging.warning_once.cache_clear()  # said once per process: say it again here if it is due
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for m in (model, adapted.eval()):
                for how in ("shared", "copied"):
                    generate(m, tok, prompts, batch_size=4, max_new_tokens=3, prefix_attention=how)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    said = records + [str(w.message) for w in caught]
    assert not [m for m in said if "past_key_values" in m or "deprecated" in m.lower()], said


def test_generation_autocast_is_automatic_only_where_the_cpu_computes_bfloat16(monkeypatch):
    """``sampling.autocast: auto`` under both answers of the probe (the suite also runs natively and under
    ATEN_CPU_CAPABILITY=avx2, docs/tests.md), and never for a 4-bit or already half-precision base."""
    import star_lite.models as models
    from star_lite.sampling import uses_autocast

    unquantized = ["model.device=cpu", "model.load_in_4bit=false"]
    for native in (True, False):
        monkeypatch.setattr(models, "native_bfloat16", lambda device, native=native: native)
        assert uses_autocast(from_dict({}, unquantized)) is native
        assert uses_autocast(from_dict({}, [*unquantized, "sampling.autocast=bfloat16"]))
        assert not uses_autocast(from_dict({}, [*unquantized, "sampling.autocast=off"]))
    monkeypatch.setattr(models, "native_bfloat16", lambda device: True)
    assert not uses_autocast(from_dict({}, ["model.device=cpu", "model.load_in_4bit=true"]))
    assert not uses_autocast(from_dict({}, [*unquantized, "model.compute_dtype=bfloat16"]))
    assert uses_autocast(from_dict({}, unquantized))


@pytest.mark.parametrize("setting", ["bfloat16", "off"])
def test_generation_under_autocast_multiplies_in_bfloat16_and_gives_the_weights_back(tiny_model_dir, tmp_path, setting):
    from star_lite.sampling import generator

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     sampling={"autocast": setting}))
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = fresh_adapter(model, cfg.model).eval()
    proj = model.base_model.model.model.layers[0].self_attn.q_proj
    weights = {n: p for n, p in model.named_parameters()}
    seen = []
    hook = proj.base_layer.register_forward_hook(lambda m, args, out: seen.append((m.weight.dtype, out.dtype)))
    gens = generator(cfg)(model, tok, ["1 + 2 =", "3 + 4 ="], batch_size=2, max_new_tokens=3)
    hook.remove()
    assert len(gens) == 2 and seen
    expected = torch.bfloat16 if setting == "bfloat16" else torch.float32
    assert set(seen) == {(expected, expected)}
    # the float32 weights are back, the very tensors, and the LoRA weights were never copied
    assert all(p is weights[n] and p.dtype == torch.float32 for n, p in model.named_parameters())
    assert not torch.is_autocast_enabled("cpu")


def test_bench_prints_what_generation_autocast_gives(tiny_model_dir, tmp_path, capsys):
    from star_lite.bench import bench

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path),
                    ["model.load_in_4bit=false", "task.num_few_shot=2", "sampling.autocast=bfloat16"])
    result = bench(cfg, repeats=1, num_prompts=2, sft_steps=1)
    printed = capsys.readouterr().out
    assert "evaluation, bf16 autocast vs float32" in printed
    assert result["generation_autocast"] and result["median"]["autocast_ratio"] > 0
    # sampling.lora (auto: merged on a CPU) against LoRA apart, with the adapter SFT trained
    assert "evaluation after SFT, LoRA merged vs apart" in printed and result["lora_merged_speedup"] > 0


def test_the_cdf_draw_takes_each_rows_token_by_its_cumulative_probability_in_a_batch_of_mixed_lengths(
        tiny_model_dir, monkeypatch):
    """sampling.draw=cdf under a fixed draw: rows whose prompts differ in length, in one batch, each get the
    token whose cumulative probability first passes its uniform number (worked out here from the row's own
    logits, computed alone), and a token of probability 0 never."""
    from star_lite.sampling import prefix_decode

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]])
    assert prefix_decode.draw_by_cdf(probs, torch.tensor([0.0, 0.0])).tolist() == [0, 3]
    assert prefix_decode.draw_by_cdf(probs, torch.tensor([0.1, 0.5])).tolist() == [2, 3]  # 0.1 sits past token 0
    assert prefix_decode.draw_by_cdf(probs, torch.tensor([0.7, 0.9999999])).tolist() == [2, 3]
    assert prefix_decode.draw_by_cdf(probs, torch.tensor([0.71, 1.0])).tolist() == [3, 3]  # top: never a 0
    # a token of tiny probability keeps its own interval (float32 sums would round it away behind a big one)
    tiny = torch.tensor([[0.75, 1e-9, 0.25]])  # float32, as the sampler's softmax gives them
    # u * total = 0.75 * (1 + 1e-9) lies inside token 1's interval (0.75, 0.75 + 1e-9]; float32 sums make it empty
    assert prefix_decode.draw_by_cdf(tiny, torch.tensor([0.75], dtype=torch.float64)).tolist() == [1]
    with pytest.raises(RuntimeError, match="not finite"):
        prefix_decode.draw_by_cdf(torch.tensor([[0.5, float("nan")]]))
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=2) for p in task.load("test", 6, 0)]
    ids = tok(prompts)["input_ids"]
    assert len({len(r) for r in ids}) >= 3, "the prompts must differ in length"
    uniforms = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.9, 0.99])
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # generate's batch order: by length
    monkeypatch.setattr(torch, "rand", lambda n, **k: uniforms[:n].clone())  # row r of the batch draws uniforms[r]
    got = generate(model, tok, prompts, batch_size=len(prompts), max_new_tokens=1, temperature=0.8,
                   stop_strings=("\n\n",), draw="cdf")
    for row, i in enumerate(order):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[i]])).logits[0, -1].double()
        cdf = torch.softmax(logits / 0.8, -1).cumsum(0)
        want = int((cdf <= uniforms[row] * cdf[-1]).sum())  # the first token whose cumulative sum passes u
        assert got[i].token_ids[0] == want, (i, got[i].token_ids[0], want)


def test_merged_lora_generation_gives_the_same_greedy_tokens_and_the_weights_back(tiny_model_dir, tmp_path):
    """sampling.lora=merged: each LoRA layer runs as one matmul on W + scale B A for the call (its LoRA
    path never runs); float32 gives separate LoRA's greedy tokens for prompts of different lengths, under
    bfloat16 autocast the layer multiplies (W + scale B A) rounded once to bfloat16; after, every parameter
    is the very tensor it was, bit for bit, and no layer is left merged. A 4-bit base is never merged."""
    from star_lite.fastpaths import merged_lora
    from star_lite.models import load_base_model
    from star_lite.sampling import generator

    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False}))
    model = fresh_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), cfg.model)
    with torch.no_grad():  # a non-trivial adapter: B is zero at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    task = load_task("arithmetic", min_digits=1, max_digits=3, rationale="plain")
    prompts = [task.prompt(p, num_few_shot=2) for p in task.load("test", 9, 0)]
    assert len({len(r) for r in tok(prompts)["input_ids"]}) >= 3, "the prompts must differ in length"
    proj = model.base_model.model.model.layers[0].self_attn.q_proj
    lora_calls, seen = [], []
    hooks = [proj.lora_A["default"].register_forward_hook(lambda m, a, o: lora_calls.append(1)),
             proj.base_layer.register_forward_hook(lambda m, a, o: seen.append(m.weight.detach().clone()))]
    out = {}
    for lora in ("separate", "merged"):
        lora_calls.clear()
        run = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                         sampling={"lora": lora, "autocast": "off"}))
        out[lora] = [g.token_ids for g in generator(run)(model, tok, prompts, batch_size=4, max_new_tokens=8)]
        assert bool(lora_calls) == (lora == "separate")
    assert out["merged"] == out["separate"]
    seen.clear()
    run = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"load_in_4bit": False},
                                     sampling={"lora": "merged", "autocast": "bfloat16"}))
    generator(run)(model, tok, prompts[:2], batch_size=2, max_new_tokens=2)
    with torch.no_grad():
        want = (proj.base_layer.weight + proj.get_delta_weight("default")).to(torch.bfloat16)
    assert seen and all(torch.equal(w, want) for w in seen)
    for hook in hooks:
        hook.remove()
    # under an autocast (GRPO's rollouts run in one) the sum is still float32's
    with torch.autocast("cpu", dtype=torch.bfloat16), merged_lora(model) as merged:
        assert merged == 2 * 7 and proj.merged and proj.base_layer.weight.dtype == torch.float32
        with torch.autocast("cpu", enabled=False):
            exact = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"][1] \
                + proj.get_delta_weight("default")
        assert torch.equal(proj.base_layer.weight, exact)
    assert all(p is before[n][0] and torch.equal(p, before[n][1]) for n, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    quantized = from_dict(tiny_config_dict(tiny_model_dir, tmp_path))  # load_in_4bit: true
    with merged_lora(fresh_adapter(load_base_model(quantized.model), quantized.model)) as merged:
        assert merged == 0
