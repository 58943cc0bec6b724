"""The transformers backend (``sampling.backend: hf``): batched generation with left padding,
KV cache, eval mode, and a stop per sequence.

Each sequence stops at the task's stop strings (the blank line after its answer) or EOS,
so a batch runs only as long as its longest *answer*, not to the token limit.
"""

from __future__ import annotations

import copy
import inspect
import sys
from typing import Callable, Sequence

import torch

from ..progress import progress
from .base import Generation


def _num_generated(row: torch.Tensor, pad_id: int | None, eos_ids: set[int], text: str,
                   stop_strings: Sequence[str]) -> int:
    """Tokens a row generated, up to and including its stop or EOS, padding excluded. Where the pad
    token is also an EOS token (SmolLM2), the first pad after a stop string is padding, not an EOS
    the model wrote: ``text`` (the row decoded) tells them apart."""
    ids = row.tolist()
    for k, tok in enumerate(ids):
        if tok in eos_ids or tok == pad_id:
            break
    else:
        return len(ids)  # ran to the token limit
    if tok in eos_ids and not (tok == pad_id and any(s in text for s in stop_strings)):
        return k + 1  # the model wrote EOS
    return k  # finished by a stop string; the rest is padding


def shared_prefix(rows: list[list[int]], min_len: int = 16) -> list[int]:
    """The longest token prefix all rows share, leaving each row at least one token of its own;
    empty when shorter than ``min_len`` (not worth a separate prefill).

    >>> shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3]], min_len=2)
    [1, 2]
    """
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return first[:n] if n >= min_len else []


def cache_argument(model) -> str:
    """The keyword a model takes its KV cache by, in this transformers: ``cache`` (5.2x), or ``past_key_values``
    where ``cache`` is not yet a parameter (deprecated since, removed in 5.40).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cache_argument(LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
    ...     num_attention_heads=2, vocab_size=16)))
    'cache'
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's is **kwargs
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def _prefill(model, prefix: list[int], device):
    """Keys and values of the shared prefix, computed once (batch of one)."""
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)  # logits unused
    return returned_cache(out)


def _batch_inputs(rows: list[list[int]], prefix_len: int, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Pad each row's own tail on its left, after the shared prefix: [prefix][pad...][tail].

    The attention mask hides the padding; position ids follow the mask, so every prompt sees
    the same positions as with ordinary left padding.
    """
    tails = [r[prefix_len:] for r in rows]
    width = max(len(t) for t in tails)
    input_ids, mask = [], []
    for r, t in zip(rows, tails):
        gap = width - len(t)
        input_ids.append(r[:prefix_len] + [pad_id] * gap + t)
        mask.append([1] * prefix_len + [0] * gap + [1] * len(t))
    return {"input_ids": torch.tensor(input_ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 16, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = ("\n\n",),
             desc: str = "sampling", on_batch: Callable[[list[int], list[Generation]], None] | None = None,
             share_prefix: bool = True, prefix_attention: str = "shared",
             prompt_ids: Sequence[Sequence[int]] | None = None, top_k: int | None = None,
             draw: str = "auto", first: int = 0) -> list[Generation]:
    """Generate a continuation for every prompt; greedy when ``temperature == 0``.

    Prompts are grouped by length so a batch pads little. When the prompts share a long token
    prefix (the few-shot examples), its keys and values are computed once and copied into every
    batch, and only each prompt's own tail is prefilled (``share_prefix``). Decoding then
    keeps the prefix once for the whole batch instead of a copy per row (``prefix_attention="shared"``,
    prefix_decode.py; greedy gives generate's tokens, sampling its distribution); prompts that share no
    prefix take the same loop, where finished rows leave the batch. ``prompt_ids``: the prompts already
    tokenized (GRPO's rollouts), used instead of tokenizing ``prompts``; ``top_k`` overrides the model's
    generation config (GRPO samples with TRL's top_k, 0 = none). ``draw``: how the shared-prefix loop draws a
    sampled token (``sampling.draw``; prefix_decode.resolve_draw). ``on_batch(indices,
    generations)`` is called after each batch (the loop uses it to save progress). ``first``: start at that
    prompt of the length order, the earlier ones' batches already drawn (a stored call's continuation,
    reuse.py); their results are None.
    """
    from . import prefix_decode

    was_training = model.training
    model.eval()
    ids = [list(r) for r in prompt_ids] if prompt_ids is not None else tokenizer(list(prompts))["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    results: list[Generation | None] = [None] * len(ids)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=sorted(eos_ids))
    if stop_strings:
        gen_kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        if top_k is not None:
            gen_kwargs["top_k"] = top_k
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    prefix = shared_prefix(ids) if share_prefix and len(ids) > 1 else []
    prefix_cache = _prefill(model, prefix, device) if prefix else None
    shared = prefix_attention == "shared" and prefix_decode.supported(model)
    if shared:
        from transformers import StopStringCriteria

        stop_criteria = (StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings)) if stop_strings
                         else lambda seen, scores: torch.zeros(len(seen), dtype=torch.bool, device=seen.device))
    bar = progress(total=len(ids), desc=desc, unit="seq")
    bar.update(first)
    try:
        start = first
        while start < len(order):
            idx = order[start:start + batch_size]
            try:
                if shared:  # the new tokens alone come back
                    new = prefix_decode.decode(model, prefix_cache, len(prefix), [ids[i][len(prefix):] for i in idx],
                                               pad_id=tokenizer.pad_token_id, eos_ids=eos_ids,
                                               max_new_tokens=max_new_tokens, stop_criteria=stop_criteria,
                                               temperature=temperature, top_p=top_p, top_k=top_k, draw=draw)
                else:
                    enc = _batch_inputs([ids[i] for i in idx], len(prefix), tokenizer.pad_token_id, device)
                    if prefix_cache is not None:
                        cache = copy.deepcopy(prefix_cache)
                        cache.batch_repeat_interleave(len(idx))
                        enc[cache_argument(model)] = cache
                    out = model.generate(**enc, **gen_kwargs)
                    new = out[:, enc["input_ids"].shape[1]:]
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                enc = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                print(f"[star_lite] out of memory while {desc}; batch size lowered to {batch_size}",
                      file=sys.stderr, flush=True)
                continue
            start += len(idx)
            texts = [tokenizer.decode(row, skip_special_tokens=True) for row in new]
            counts = [_num_generated(row, tokenizer.pad_token_id, eos_ids, text, stop_strings)
                      for row, text in zip(new, texts)]
            batch = [Generation(text, n, tuple(row[:n].tolist())) for row, text, n in zip(new, texts, counts)]
            for i, g in zip(idx, batch):
                results[i] = g
            if on_batch is not None:
                on_batch(idx, batch)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]
