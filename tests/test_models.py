"""Fresh adapters on a frozen 4-bit base: tiny random Llama, bitsandbytes NF4 on the CPU."""

import torch
from peft import PeftModel

from star_lite.config import from_dict
from star_lite.models import detach_adapter, fresh_adapter, load_adapter, load_base_model, load_tokenizer
from star_lite.training import train_adapter

from conftest import tiny_config_dict


def _lora(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _base_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def _examples(n=8):
    return [{"prompt": f"Q: What is {i} + 1?\nA:", "completion": f" {i} + 1 = {i + 1}. The answer is {i + 1}."}
            for i in range(n)]


def test_fresh_adapter_per_iteration_base_unchanged_lora_changed(tiny_model_dir, tmp_path):
    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "run"))
    tok = load_tokenizer(cfg.model.name_or_path)
    base = load_base_model(cfg.model)
    assert any("Linear4bit" in type(m).__name__ for m in base.modules()), "base should be NF4 4-bit"
    base_before = _base_state(base)

    # iteration 1
    probe = fresh_adapter(base, cfg.model)
    init1 = _lora(probe)
    assert init1 and all(torch.all(v == 0) for k, v in init1.items() if "lora_B" in k)  # starts equal to base
    base = detach_adapter(probe)
    model1, trained = train_adapter(base, tok, _examples(), cfg, steps=3, out_dir=tmp_path / "it1")
    trained1 = _lora(model1)
    assert trained.history and all(torch.isfinite(torch.tensor(h["loss"])) for h in trained.history)
    assert trained.trained_tokens > 0 and trained.train_loss is not None
    assert any(not torch.equal(trained1[k], init1[k]) for k in trained1 if "lora_B" in k), "LoRA B did not train"
    assert (tmp_path / "it1" / "adapter" / "adapter_config.json").is_file()

    # iteration 2 starts from fresh weights, not from iteration 1's adapter
    base = detach_adapter(model1)
    assert not any("lora_" in k for k, _ in base.named_parameters())
    probe2 = fresh_adapter(base, cfg.model)
    init2 = _lora(probe2)
    assert all(torch.all(v == 0) for k, v in init2.items() if "lora_B" in k)
    assert all(not torch.equal(init2[k], trained1[k]) for k in init2 if "lora_B" in k)
    base = detach_adapter(probe2)

    # the frozen base weights (4-bit packed data included) never changed
    after = _base_state(base)
    assert after.keys() == base_before.keys()
    assert all(torch.equal(after[k], base_before[k]) for k in after)

    # the saved adapter loads with peft and reproduces the trained weights
    loaded = load_adapter(base, tmp_path / "it1" / "adapter")
    assert isinstance(loaded, PeftModel)
    reloaded = {k.replace(".default", ""): v for k, v in _lora(loaded).items()}
    assert all(torch.equal(reloaded[k.replace(".default", "")], v) for k, v in trained1.items())


def test_nf4_forward_stays_close_to_the_float_model_on_the_same_weights(tiny_model_dir, tmp_path):
    """Graders in tests are hashes, so only this shows the 4-bit forward computes the model it quantizes."""
    from transformers import AutoModelForCausalLM

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, model={"compute_dtype": "float32"}))
    tok = load_tokenizer(cfg.model.name_or_path)
    quantized = load_base_model(cfg.model)
    assert sum("Linear4bit" in type(m).__name__ for m in quantized.modules()) == 2 * 7  # every projection
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = tok(["Q: What is 12 + 7?\nA: 12 + 7 = 19. The answer is 19.", "Q: What is 3 + 4?\nA: 7 + 0 = 7. The"],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        q, f = quantized(**ids).logits.float(), full(**ids).logits.float()
    # 4-bit weights carry about 10% noise: the logits move by about that much, not by their own size
    rel = ((q - f).norm() / f.norm()).item()
    cos = torch.nn.functional.cosine_similarity(q.flatten(), f.flatten(), dim=0).item()
    assert rel < 0.25 and cos > 0.97, (rel, cos)
    # and the tokens the float model ranks first are mostly the 4-bit model's first choices too
    mask = ids["attention_mask"].bool()
    assert (q.argmax(-1) == f.argmax(-1))[mask].float().mean() > 0.6
