"""Optional vLLM sampling backend, for GPU users: ``sampling.backend: vllm``.

Install it with ``pip install "star-lite[vllm]"``; nothing on the CPU needs it. One engine per
process holds the base model (4-bit through vLLM's bitsandbytes loader when
``model.load_in_4bit``); each call names the LoRA adapter the Hugging Face model carries (the
one the loop just trained or loaded) as a per-request ``LoRARequest``, so the base is loaded
once for the whole run. vLLM caches the shared few-shot prefix itself (prefix caching).

Between calls the engine sleeps (weights to CPU memory, KV cache freed), so SFT and RL get
the GPU; it wakes for the next call. ``sampling.vllm_options`` is passed to ``vllm.LLM`` and
overrides any default below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config
from ..models import ModelError, adapter_dir, resolve_model_path
from ..progress import progress
from .base import Generation

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices (vllm/config/lora.py)
CHUNK = 256  # prompts per vLLM call; results are handed to on_batch (and saved) per chunk

_engines: dict[str, "VLLMSampler"] = {}


def engine_args(cfg: Config) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: star_lite's defaults, then ``sampling.vllm_options``.

    >>> from star_lite.config import from_dict
    >>> args = engine_args(from_dict({"model": {"name_or_path": "/m", "lora_r": 4},
    ...                               "sampling": {"vllm_options": {"gpu_memory_utilization": 0.7}}}))
    >>> args["quantization"], args["max_lora_rank"], args["gpu_memory_utilization"], args["enable_lora"]
    ('bitsandbytes', 8, 0.7, True)
    """
    dtype = cfg.model.compute_dtype
    if cfg.model.lora_r > VLLM_LORA_RANKS[-1]:
        raise ModelError(f"model.lora_r is {cfg.model.lora_r}, but vLLM serves LoRA adapters of rank at most "
                         f"{VLLM_LORA_RANKS[-1]}: lower model.lora_r or set sampling.backend=hf.")
    args: dict[str, Any] = {
        "model": resolve_model_path(cfg.model.name_or_path),
        "dtype": "bfloat16" if dtype == "auto" else dtype,
        "seed": cfg.run.seed,
        "enable_lora": True,
        "max_lora_rank": next(r for r in VLLM_LORA_RANKS if r >= cfg.model.lora_r),
        "max_loras": 1,
        "enable_prefix_caching": True,
        "enable_sleep_mode": True,
        # the Hugging Face copy of the base (for training) shares the GPU with the engine
        "gpu_memory_utilization": 0.5,
    }
    if cfg.model.load_in_4bit:
        args["quantization"] = "bitsandbytes"
    args.update(cfg.sampling.vllm_options)
    return args


def sampler(cfg: Config) -> "VLLMSampler":
    """The process's engine for this config (started on first use, then reused)."""
    args = engine_args(cfg)
    key = json.dumps(args, sort_keys=True, default=str)
    if key not in _engines:
        shutdown()  # one engine at a time: a second would compete for the same GPU memory
        _engines[key] = VLLMSampler(args)
    return _engines[key]


def shutdown() -> None:
    """Drop the engine (e.g. in a notebook, before starting a run with another model)."""
    for engine in _engines.values():
        engine.close()
    _engines.clear()


class VLLMSampler:
    """``generate`` with the hf backend's signature (sampling/base.py), run by a vLLM engine."""

    def __init__(self, args: dict[str, Any]):
        try:
            import vllm
        except ImportError as err:
            raise ModelError(f"sampling.backend is 'vllm' but vllm cannot be imported ({err}). Install it with "
                             "pip install \"star-lite[vllm]\" (it needs a CUDA GPU), or set "
                             "sampling.backend=hf.") from None
        self._vllm = vllm
        self.args = args
        self.sleeps = bool(args.get("enable_sleep_mode"))
        try:
            self.llm = vllm.LLM(**args)
        except Exception as err:  # no GPU, an unsupported model or option, not enough memory, ...
            raise ModelError(f"vLLM could not start the model '{args['model']}': {err}\nsampling.backend=vllm "
                             "needs a CUDA GPU; engine options go in sampling.vllm_options (e.g. a lower "
                             "gpu_memory_utilization). sampling.backend=hf works everywhere.") from None
        self._lora_ids: dict[tuple[str, float], int] = {}
        if self.sleeps:
            self.llm.sleep(level=1)

    def close(self) -> None:
        del self.llm

    def lora_request(self, model):
        """The request naming ``model``'s saved adapter; None for the bare base model.

        Every adapter file gets its own id (a retrained adapter at the same path gets a new one),
        so vLLM never serves a stale copy from its LoRA cache.
        """
        from peft import PeftModel

        path = adapter_dir(model)
        if path is None:
            if isinstance(model, PeftModel):  # never sample from the bare base in its place, silently
                raise ModelError("sampling.backend=vllm loads adapters from disk, and this model's adapter was "
                                 "not saved with star_lite.training.save_adapter (or loaded with "
                                 "star_lite.models.load_adapter); save it first, or use sampling.backend=hf.")
            return None
        weights = max((p.stat().st_mtime for p in Path(path).glob("adapter_model*")), default=0.0)
        key = (str(path), weights)
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"star_lite_{self._lora_ids[key]}", self._lora_ids[key], str(path))

    def generate(self, model, tokenizer, prompts: Sequence[str], *, batch_size: int = 16, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = ("\n\n",),
                 desc: str = "sampling", on_batch: Callable[[list[int], list[Generation]], None] | None = None,
                 share_prefix: bool = True) -> list[Generation]:
        """Like ``sampling.hf.generate``; ``batch_size`` and ``share_prefix`` are vLLM's business here."""
        params = self._vllm.SamplingParams(
            n=1, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
            stop=list(stop_strings), include_stop_str_in_output=True)  # raw text, as the HF backend gives it
        lora = self.lora_request(model)
        results: list[Generation] = []
        bar = progress(total=len(prompts), desc=desc, unit="seq")
        if self.sleeps:
            self.llm.wake_up()
        try:
            for start in range(0, len(prompts), CHUNK):
                chunk = list(prompts[start:start + CHUNK])
                outputs = self.llm.generate(chunk, params, use_tqdm=False, lora_request=lora)
                batch = [Generation(o.outputs[0].text, len(o.outputs[0].token_ids), tuple(o.outputs[0].token_ids))
                         for o in outputs]
                results += batch
                if on_batch is not None:
                    on_batch(list(range(start, start + len(chunk))), batch)
                bar.update(len(chunk))
        finally:
            bar.close()
            if self.sleeps:
                self.llm.sleep(level=1)  # give the GPU back to training
        return results
