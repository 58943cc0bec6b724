"""Sampling: one ``Generation`` record and one ``generate`` signature (base.py), three backends.

    hf.py           transformers: batched, length-grouped, shared few-shot prefix (sampling.backend: hf)
    prefix_decode.py  hf's decode loop reading the shared prefix once per batch
    vllm_engine.py  a vLLM engine serving the loop's LoRA adapter (sampling.backend: vllm)
    sharded.py      either one, split across the processes of ``accelerate launch`` and gathered

``generator(cfg)`` picks the backend and, under ``accelerate launch``, shards it.
"""

from __future__ import annotations

import functools

from .base import Generate, Generation, OnBatch
from .hf import _batch_inputs, _num_generated, generate, shared_prefix

__all__ = ["Generate", "Generation", "OnBatch", "generate", "generator", "shared_prefix"]


def backend(cfg) -> Generate:
    """The ``generate`` function of ``cfg.sampling.backend`` in this process."""
    if cfg.sampling.backend == "vllm":
        from .vllm_engine import sampler

        return sampler(cfg).generate
    shared = cfg.sampling.prefix_attention in ("auto", "shared")
    return functools.partial(generate, prefix_attention="shared" if shared else "copied")


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
