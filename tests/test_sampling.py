"""The fast sampler gives plain `generate`'s greedy outputs token for token."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from star_lite.config import from_dict
from star_lite.models import fresh_adapter, load_tokenizer
from star_lite.sampling import _batch_inputs, generate, shared_prefix
from star_lite.tasks import load_task

from conftest import tiny_config_dict


def _plain_generate(model, tok, prompts, batch_size, max_new_tokens, stop):
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=list(stop),
                             tokenizer=tok, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


@pytest.mark.parametrize("with_adapter", [False, True])
def test_fast_sampler_equals_plain_generate(tiny_model_dir, tmp_path, with_adapter):
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
    fast = generate(model, tok, prompts, batch_size=5, max_new_tokens=12, stop_strings=task.stop_strings)
    plain = _plain_generate(model, tok, prompts, 5, 12, task.stop_strings)
    # the fast sampler sorts by length; compare per prompt
    assert [g.text for g in fast] == plain
    assert all(0 < g.num_tokens <= 12 for g in fast)
    unshared = generate(model, tok, prompts, batch_size=5, max_new_tokens=12, stop_strings=task.stop_strings,
                        share_prefix=False)
    assert [g.text for g in unshared] == plain


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
                 "padding in padded SFT batches", "peak memory MB, sample + train + evaluate"):
        assert line in out
    assert result["differing_sequences"] == 0
    assert all(result["median"][k] > 0 for k in ("fast_tps", "plain_tps", "sft_tps", "sft_trl_tps"))
    assert result["peak_memory_mb"] >= result["peak_memory_mb_sampling"] > 0
    assert 0.0 <= result["sft_padding_share"] < 1.0


def test_bench_random_weights_of_a_named_architecture(tiny_model_dir, tmp_path, capsys):
    from star_lite.bench import bench

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path), ["model.load_in_4bit=true", "task.num_few_shot=2"])
    result = bench(cfg, repeats=1, num_prompts=4, sft_steps=1, random_weights="tiny-llama")
    assert result["model"] == "tiny-llama" and result["4bit"] and result["differing_sequences"] == 0
    with pytest.raises(ValueError, match="unknown architecture 'GPT-5'"):
        bench(cfg, repeats=1, num_prompts=2, sft_steps=1, random_weights="GPT-5")
