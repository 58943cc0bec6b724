"""The optional vLLM sampling backend and TRL option pass-through.

vLLM needs a CUDA GPU, so these tests run the backend against tests/fake_vllm: vLLM's offline
API on top of transformers and the tiny model. They check what star_lite asks of vLLM (engine
arguments, one LoRA request per adapter, sleep around training) and that a run sampled through
it matches the transformers backend's greedy run.
"""

import sys
from pathlib import Path

import pytest

from star_lite.config import ConfigError, from_dict
from star_lite.loop import run
from star_lite.models import ModelError
from star_lite.rundir import read_jsonl

from conftest import tiny_config_dict

FAKE_VLLM = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def fake_vllm(monkeypatch):
    import star_lite.sampling.vllm_engine as backend
    import trl.trainer.grpo_trainer  # noqa: F401  TRL looks for vllm once, on import: let it find none

    monkeypatch.syspath_prepend(FAKE_VLLM)
    import vllm

    assert vllm.__file__.startswith(FAKE_VLLM)
    vllm.LLM.instances.clear()
    yield vllm
    backend.shutdown()
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]  # later tests must not find the stand-in


def _config(tiny_model_dir, out, backend, **sampling):
    return from_dict(tiny_config_dict(tiny_model_dir, out, model={"load_in_4bit": False},
                                      sampling={"backend": backend, **sampling}))


def test_vllm_backend_runs_star_like_the_hf_backend(fake_vllm, tiny_model_dir, tmp_path):
    rows = {b: run(_config(tiny_model_dir, tmp_path / b, b)) for b in ("hf", "vllm")}
    # greedy decoding of the same model: the same samples, training data, losses and accuracies
    for it in (1, 2):
        hf, vl = (read_jsonl(tmp_path / b / f"iter_{it:03d}" / "samples.jsonl") for b in ("hf", "vllm"))
        assert [(s["id"], s["phase"], s["completion"], s["correct"]) for s in hf] == \
               [(s["id"], s["phase"], s["completion"], s["correct"]) for s in vl]
    for key in ("accuracy", "num_train_examples", "num_rationalized", "train_loss", "generated_tokens"):
        assert [r.get(key) for r in rows["hf"]] == [r.get(key) for r in rows["vllm"]], key

    (engine,) = fake_vllm.LLM.instances  # one engine for the whole run
    assert engine.kwargs["enable_lora"] and engine.kwargs["max_lora_rank"] == 8  # lora_r 4, rounded up
    assert "quantization" not in engine.kwargs  # model.load_in_4bit=false
    # each call names the adapter of the model that samples: none for the base, then iteration n's
    adapters = [r["lora_path"] and Path(r["lora_path"]).relative_to(tmp_path / "vllm").as_posix()
                for r in engine.requests]
    assert adapters == [None,  # iteration 0: few-shot evaluation of the base
                        None, None, "iter_001/adapter",  # rationales, rationalization, evaluation
                        "iter_001/adapter", "iter_001/adapter", "iter_002/adapter"]
    # asleep outside every call (training has the device to itself); awake only to sample
    assert engine.events[0] == "sleep1" and engine.asleep
    assert engine.events[1:] == ["wake", "sleep1"] * len(engine.requests)
    params = engine.requests[1]["params"]
    assert params.temperature == 0.0 and params.stop == ["\n\n", "\nQ:"] and params.max_tokens == 8


def test_engine_arguments_come_from_the_config_and_vllm_options(fake_vllm, tiny_model_dir, tmp_path):
    from star_lite.sampling.vllm_engine import sampler

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path, sampling={
        "backend": "vllm", "vllm_options": {"gpu_memory_utilization": 0.8, "max_model_len": 2048}}))
    engine = sampler(cfg).llm
    assert engine.kwargs["quantization"] == "bitsandbytes"  # model.load_in_4bit (the default)
    assert engine.kwargs["gpu_memory_utilization"] == 0.8 and engine.kwargs["max_model_len"] == 2048
    assert sampler(cfg).llm is engine  # reused, not started again


def test_a_bad_engine_option_names_the_config_key(fake_vllm, tiny_model_dir, tmp_path):
    from star_lite.sampling.vllm_engine import sampler

    cfg = _config(tiny_model_dir, tmp_path, "vllm", vllm_options={"gpu_memory_utilisation": 0.5})
    with pytest.raises(ModelError, match="(?s)gpu_memory_utilisation.*sampling.vllm_options"):
        sampler(cfg)


def test_an_unsaved_adapter_is_refused_not_replaced_by_the_base(fake_vllm, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from star_lite.models import fresh_adapter
    from star_lite.sampling.vllm_engine import sampler

    cfg = _config(tiny_model_dir, tmp_path, "vllm")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sampler(cfg).lora_request(base) is None  # the bare base: no adapter to name
    with pytest.raises(ModelError, match="adapter was not saved"):
        sampler(cfg).generate(fresh_adapter(base, cfg.model), None, ["Q: 1 + 1?\nA:"])


def test_a_lora_rank_vllm_cannot_serve_names_the_config_key():
    from star_lite.sampling.vllm_engine import engine_args

    with pytest.raises(ModelError, match=r"model.lora_r is 1024.*at most 512"):
        engine_args(from_dict({"model": {"name_or_path": "/m", "lora_r": 1024}, "sampling": {"backend": "vllm"}}))
    assert engine_args(from_dict({"model": {"name_or_path": "/m", "lora_r": 200}}))["max_lora_rank"] == 256


def test_without_vllm_the_error_names_the_extra(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails
    cfg = _config(tiny_model_dir, tmp_path, "vllm")
    with pytest.raises(ModelError, match=r"(?s)star-lite\[vllm\].*sampling.backend=hf"):
        run(cfg)


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="sampling.backend"):
        from_dict({"sampling": {"backend": "sglang"}})


def test_trl_options_reach_grpo_config(tmp_path):
    from trl import GRPOConfig

    from star_lite.rl import grpo_args

    cfg = from_dict({"model": {"device": "cpu"}, "rl": {"steps": 7, "trl_options": {
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25, "num_iterations": 2}}})
    args = GRPOConfig(**grpo_args(cfg, tmp_path))
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.25
    assert args.num_iterations == 2 and args.max_steps == 7


@pytest.mark.parametrize("options, message", [
    ({"vllm_gpu_memory_utilisation": 0.3}, "rl.trl_options.vllm_gpu_memory_utilisation.*vllm_gpu_memory_utilization"),
    ({"learning_rate": 1e-4}, "rl.trl_options.learning_rate.*rl.learning_rate"),
])
def test_bad_trl_options_are_refused_before_a_comparison_starts(tiny_model_dir, tmp_path, options, message):
    from star_lite.compare import compare

    cfg = from_dict(tiny_config_dict(tiny_model_dir, tmp_path / "run", rl={"trl_options": options},
                                     compare={"methods": ["few-shot", "grpo"], "reference": "few-shot",
                                              "output_dir": str(tmp_path / "cmp")}))
    with pytest.raises(ConfigError, match=message):
        compare(cfg)
    assert not (tmp_path / "cmp").exists()
