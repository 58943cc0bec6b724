"""Sampling: one ``Generation`` record and one ``generate`` signature (base.py), three backends.

    hf.py           transformers: batched, length-grouped, shared few-shot prefix (sampling.backend: hf)
    prefix_decode.py  hf's decode loop reading the shared prefix once per batch
    vllm_engine.py  a vLLM engine serving the loop's LoRA adapter (sampling.backend: vllm)
    sharded.py      either one, split across the processes of ``accelerate launch`` and gathered

``generator(cfg)`` picks the backend and, under ``accelerate launch``, shards it.
"""

from __future__ import annotations

import functools

import torch

from .. import reuse
from .base import Generate, Generation, OnBatch
from .hf import _batch_inputs, _num_generated, generate, shared_prefix

__all__ = ["Generate", "Generation", "OnBatch", "generate", "generator", "in_bfloat16", "merges_lora", "shared_prefix", "uses_autocast", "with_merged_lora"]


def uses_autocast(cfg) -> bool:
    """Whether the hf backend generates under bfloat16 autocast (``sampling.autocast``): ``auto`` on a CPU
    that multiplies bfloat16 natively, for an unquantized float32 base (elsewhere emulated bfloat16 is
    slower than float32, and a GPU already runs in ``model.compute_dtype``).

    >>> from star_lite.config import from_dict
    >>> uses_autocast(from_dict({"sampling": {"autocast": "off"}})), uses_autocast(from_dict({"sampling": {"autocast": "bfloat16"}}))
    (False, True)
    """
    from ..models import native_bfloat16, resolve_device, resolve_dtype

    setting = cfg.sampling.autocast
    if setting != "auto":
        return setting == "bfloat16"
    device = resolve_device(cfg.model.device)
    return (device == "cpu" and not cfg.model.load_in_4bit
            and resolve_dtype(cfg.model.compute_dtype, device) == torch.float32 and native_bfloat16(device))


def in_bfloat16(generate: Generate) -> Generate:
    """``generate`` under bfloat16 autocast, the frozen float32 base weights replaced by one bfloat16 copy
    for the call (autocast would cast them at every matmul to the same values); float32 again after."""
    from ..fastpaths import bfloat16_frozen_weights

    @functools.wraps(generate)
    def run(model, *args, **kwargs):
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16), bfloat16_frozen_weights(model):
            return generate(model, *args, **kwargs)

    return run


def merges_lora(cfg) -> bool:
    """Whether the hf backend generates with the LoRA adapter merged into a copy of the weights
    (``sampling.lora``): ``auto`` on a CPU; never under FSDP, which places the weights itself.

    >>> from star_lite.config import from_dict
    >>> merges_lora(from_dict({"sampling": {"lora": "separate"}})), merges_lora(from_dict({"model": {"device": "cpu"}}))
    (False, True)
    """
    from ..models import fsdp, resolve_device

    if fsdp():
        return False
    if cfg.sampling.lora != "auto":
        return cfg.sampling.lora == "merged"
    return resolve_device(cfg.model.device) == "cpu"


def with_merged_lora(generate: Generate, dtype: torch.dtype | None = None) -> Generate:
    """``generate`` with the model's LoRA layers merged for the call (``fastpaths.merged_lora``), their
    merged weights in ``dtype`` (bfloat16 under ``in_bfloat16``, which then copies only the rest); the
    weights and adapter as they were after."""
    from ..fastpaths import merged_lora

    @functools.wraps(generate)
    def run(model, *args, **kwargs):
        with merged_lora(model, dtype):
            return generate(model, *args, **kwargs)

    return run


def backend(cfg) -> Generate:
    """The ``generate`` function of ``cfg.sampling.backend`` in this process."""
    if cfg.sampling.backend == "vllm":
        from .vllm_engine import sampler

        return sampler(cfg).generate
    shared = cfg.sampling.prefix_attention in ("auto", "shared")
    hf = functools.partial(generate, prefix_attention="shared" if shared else "copied", draw=cfg.sampling.draw)
    autocast = uses_autocast(cfg)
    hf = in_bfloat16(hf) if autocast else hf
    hf = with_merged_lora(hf, torch.bfloat16 if autocast else None) if merges_lora(cfg) else hf
    return reuse.memoized_generate(hf, reuse_settings(cfg))


def reuse_settings(cfg) -> dict:
    """What a generation's result depends on in the config besides its call's arguments: the base model and
    how the backend computes (reuse.py keys a stored call by it)."""
    import dataclasses

    sampling = {k: v for k, v in dataclasses.asdict(cfg.sampling).items()
                if k not in ("batch_size", "max_new_tokens", "temperature", "top_p", "few_shot_after_training")}
    return {"model": dataclasses.asdict(cfg.model), "sampling": sampling, "autocast": uses_autocast(cfg),
            "merged": merges_lora(cfg)}


def generator(cfg) -> Generate:
    """``backend(cfg)``; under ``accelerate launch``, split across the processes (sharded.py).

    With vLLM and ``sampling.vllm_options.tensor_parallel_size`` > 1 one engine spans a node's GPUs,
    so only each node's first process samples, for the node."""
    from .. import distributed

    if distributed.world_size() == 1:
        return backend(cfg)
    from .sharded import sharded

    if cfg.sampling.backend == "vllm":
        from .vllm_engine import CHUNK

        one_per_node = int(cfg.sampling.vllm_options.get("tensor_parallel_size", 1)) > 1
        return sharded(lambda: backend(cfg), per_process=CHUNK,
                       samples=distributed.local_rank() == 0 if one_per_node else True)
    return sharded(lambda: backend(cfg), per_process=cfg.sampling.batch_size)
