"""Batched generation: left padding, KV cache, eval mode, and a stop per sequence.

Each sequence stops at the task's stop strings (the blank line after its answer) or EOS,
so a batch runs only as long as its longest *answer*, not to the token limit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .progress import progress


@dataclass
class Generation:
    text: str  # raw decoded continuation (before cutting at a stop string)
    num_tokens: int  # tokens generated up to and including the stop, padding excluded


def _num_generated(row: torch.Tensor, pad_id: int | None, eos_ids: set[int]) -> int:
    n = 0
    for tok in row.tolist():
        if tok in eos_ids:
            return n + 1
        if tok == pad_id:  # finished by a stop string; the rest is padding
            break
        n += 1
    return n


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 16, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = ("\n\n",),
             desc: str = "sampling", on_batch: Callable[[list[int], list[Generation]], None] | None = None,
             ) -> list[Generation]:
    """Generate a continuation for every prompt; greedy when ``temperature == 0``.

    Prompts are grouped by length so a batch pads little. ``on_batch(indices, generations)``
    is called after each batch (the loop uses it to save progress).
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                      stop_strings=list(stop_strings), tokenizer=tokenizer, eos_token_id=sorted(eos_ids))
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    bar = progress(total=len(prompts), desc=desc, unit="seq")
    try:
        start = 0
        while start < len(order):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            try:
                out = model.generate(**enc, **gen_kwargs)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                del enc
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                print(f"[star_lite] out of memory while {desc}; batch size lowered to {batch_size}",
                      file=sys.stderr, flush=True)
                continue
            start += len(idx)
            new = out[:, enc["input_ids"].shape[1]:]
            batch = [Generation(tokenizer.decode(row, skip_special_tokens=True),
                                _num_generated(row, tokenizer.pad_token_id, eos_ids)) for row in new]
            for i, g in zip(idx, batch):
                results[i] = g
            if on_batch is not None:
                on_batch(idx, batch)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]
