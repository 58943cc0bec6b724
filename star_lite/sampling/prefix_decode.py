"""Decoding that keeps the shared few-shot prefix once (``sampling.prefix_attention: shared``).

transformers' ``generate`` needs the prefix's keys and values copied into every row of the
batch, then reads all of them at every step and, with its dynamic cache, copies them again
(concatenation) for each new token; at few-shot prompt lengths (300 prefix tokens, a 20-token
answer) that is a large share of a CPU decode step (docs/speed.md has the measurements). Here the prefix's keys and
values stay a batch of one; each row caches only its own tokens (question and answer), and
attention combines the two under one softmax, so the result is the same attention:

    softmax([q·K_prefix, q·K_own]) · [V_prefix; V_own]

Rows that finish (stop string or EOS, with transformers' own StopStringCriteria) leave the
batch. Greedy picks the argmax; sampling applies transformers' own warpers in generate's order
(temperature, top-k from the model's generation config, top-p) and draws with
``torch.multinomial``, so the tokens follow generate's distribution, though not its random
stream. A model whose generation config asks for any other logits processing (repetition
penalty, min-p and the like) goes through ``generate``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

NAME = "star_lite_shared_prefix"  # the attention implementation's registered name
_state: dict = {}  # while decoding: the prefix's keys/values per layer and each row's own-token mask


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of each row's queries over the shared prefix (a batch of one) and the row's own keys."""
    own_mask = _state["own_mask"]  # [rows, own tokens], True where a real (not padding) token
    rows, heads, length, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.view(rows, kv_heads, groups, length, dim)  # head h = kv_head * groups + g, as repeat_kv
    if _state["prefix"] is None:  # no shared prefix: each row attends over its own tokens only
        return _own_attention(q, key, value, own_mask, scale, query.dtype), None
    prefix_keys, prefix_values = _state["prefix"][module.layer_idx]  # [1, kv_heads, P, dim]
    prefix = prefix_keys.shape[2]
    # the prefix: one [kv_heads, rows * groups * length, P] product, reading its keys once
    flat = q.permute(1, 0, 2, 3, 4).reshape(kv_heads, rows * groups * length, dim)
    s_prefix = torch.bmm(flat, prefix_keys[0].transpose(1, 2)).view(kv_heads, rows, groups, length, prefix)
    s_prefix = s_prefix.permute(1, 0, 2, 3, 4)
    # the row's own tokens: causal, padding hidden
    s_own = torch.matmul(q.reshape(rows, kv_heads, groups * length, dim), key.transpose(2, 3))
    s_own = s_own.view(rows, kv_heads, groups, length, own)
    s_own = s_own.masked_fill(~_own_visible(q, key, own_mask), float("-inf"))
    weights = torch.softmax(torch.cat([s_prefix, s_own], dim=-1).float() * scale, dim=-1).to(query.dtype)
    w_prefix, w_own = weights.split([prefix, own], dim=-1)
    out_prefix = torch.bmm(w_prefix.permute(1, 0, 2, 3, 4).reshape(kv_heads, rows * groups * length, prefix),
                           prefix_values[0]).view(kv_heads, rows, groups, length, dim).permute(1, 0, 2, 3, 4)
    out_own = torch.matmul(w_own.reshape(rows, kv_heads, groups * length, own), value)
    out = out_prefix + out_own.view(rows, kv_heads, groups, length, dim)
    return out.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


def _own_visible(q, key, own_mask) -> torch.Tensor:
    """[rows, 1, 1, length, own]: which of a row's own keys each query sees (causal, padding hidden)."""
    length, own = q.shape[3], key.shape[2]
    last = own - length + torch.arange(length, device=key.device)  # each query's own position
    causal = torch.arange(own, device=key.device)[None, :] <= last[:, None]
    return own_mask[:, None, None, None, :] & causal[None, None, None]


def _own_attention(q, key, value, own_mask, scale, dtype):
    """attention() without a prefix: softmax over the row's own keys, in float32 as with a prefix."""
    rows, kv_heads, groups, length, dim = q.shape
    own = key.shape[2]
    s_own = torch.matmul(q.reshape(rows, kv_heads, groups * length, dim), key.transpose(2, 3))
    # a padding position's query sees no real key; let it see itself, so its (unused) output and the keys and
    # values the next layer makes of it stay finite, which the real rows' zero weights on them need
    visible = _own_visible(q, key, own_mask)
    last = own - length + torch.arange(length, device=key.device)
    visible = visible | (torch.arange(own, device=key.device)[None, :] == last[:, None])[None, None, None]
    s_own = s_own.view(rows, kv_heads, groups, length, own).masked_fill(~visible, float("-inf"))
    weights = torch.softmax(s_own.float() * scale, dim=-1).to(dtype)
    out = torch.matmul(weights.reshape(rows, kv_heads, groups * length, own), value)
    return out.view(rows, kv_heads * groups, length, dim).transpose(1, 2).contiguous()


def _no_mask(*args, **kwargs):
    return None  # attention() builds its own mask from _state


@contextlib.contextmanager
def _shared_prefix_attention(model, prefix_cache, own_mask) -> Iterator[None]:
    from ..fastpaths import attention_implementation

    _state.update(prefix=None if prefix_cache is None else [(layer.keys, layer.values) for layer in prefix_cache.layers],
                  own_mask=own_mask)
    # the prefill's last positions reach the LM head as a strided view, which torch multiplies as a batched
    # matmul against the head's weight expanded per row (slower on a CPU); contiguous, one matmul
    head = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].contiguous(),))
    try:
        with attention_implementation(model, NAME, attention, _no_mask):
            yield
    finally:
        head.remove()
        _state.clear()


# generation-config settings that would add logits processing beyond temperature, top-k and top-p
_PROCESSING = {"top_h": None, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
               "watermarking_config": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
               "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
               "min_new_tokens": None, "min_length": 0, "sequence_bias": None, "encoder_repetition_penalty": 1.0,
               "exponential_decay_length_penalty": None, "renormalize_logits": False}


# architectures whose attention is plain causal softmax attention over every earlier token (no sliding
# window, soft-capping or attention sinks, which attention() does not implement)
_PLAIN_ATTENTION = {"llama", "qwen2", "qwen3"}


def supported(model) -> bool:
    """Whether ``model`` has plain causal attention and a generation config that asks for no logits
    processing the loop here lacks (else ``generate`` does the work)."""
    config = model.generation_config
    if any(getattr(config, k, None) not in (None, default) for k, default in _PROCESSING.items()):
        return False
    arch = model.config
    layer_types = getattr(arch, "layer_types", None) or ["full_attention"]
    return (arch.model_type in _PLAIN_ATTENTION and set(layer_types) == {"full_attention"}
            and arch._attn_implementation in ("sdpa", "eager"))


def _warpers(model, temperature: float, top_p: float, top_k: int | None = None):
    """What generate applies to the logits before sampling, in its order (``top_k`` None: the model's
    generation config's, as generate takes it; 0: none)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    top_k = model.generation_config.top_k if top_k is None else top_k
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers


def resolve_draw(setting: str, device) -> str:
    """``sampling.draw`` resolved: ``auto`` is "cdf" on a CPU and "multinomial" elsewhere."""
    if setting != "auto":
        return setting
    return "cdf" if torch.device(device).type == "cpu" else "multinomial"


def draw_by_cdf(probs: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``probs`` ([rows, vocab], rows summing to 1 up to rounding): the first whose
    cumulative probability exceeds ``uniform`` (one number in [0, 1) per row, drawn here when None) times
    the row's total. That is the row's categorical distribution, up to float64 rounding (the sums and the
    uniform numbers are float64, so a token of probability 1e-9 keeps its share; float32 would round every
    interval to 2^-24); a token of probability 0 is never drawn (its interval is empty; rounding at the very
    top falls back to the row's most likely token). Probabilities that are not finite raise, as
    ``torch.multinomial`` does.

    >>> draw_by_cdf(torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.2, 0.0, 0.8, 0.0]]), torch.tensor([0.49, 0.21])).tolist()
    [1, 2]
    """
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1]
    if not bool((torch.isfinite(total) & (total > 0)).all()):
        raise RuntimeError("sampling: the probabilities of a row are not finite or sum to 0 (inf or nan logits?)")
    if uniform is None:
        uniform = torch.rand(probs.shape[0], device=probs.device, dtype=torch.float64)
    token = torch.searchsorted(cdf, (uniform.double() * total)[:, None], right=True)[:, 0]
    token = token.clamp(max=probs.shape[-1] - 1)
    empty = probs.gather(-1, token[:, None])[:, 0] <= 0
    return torch.where(empty, probs.argmax(-1), token)


@torch.no_grad()
def decode(model, prefix_cache, prefix_len: int, tails: Sequence[Sequence[int]], *, pad_id: int,
           eos_ids: set[int], max_new_tokens: int, stop_criteria, temperature: float = 0.0,
           top_p: float = 1.0, top_k: int | None = None, draw: str = "auto") -> torch.Tensor:
    """Continuations of ``tails`` (each a prompt's tokens after the shared prefix), greedy when
    ``temperature == 0``, else drawn as ``draw`` says (``resolve_draw``), as ``generate`` returns
    them: [rows, steps] new tokens, padded with ``pad_id`` after a row's stop. ``prefix_cache`` None
    (``prefix_len`` 0): the prompts share no prefix worth a prefill, and each row attends over its own
    tokens (still leaving the batch when it stops)."""
    from transformers import DynamicCache

    from .hf import cache_argument

    warpers = _warpers(model, temperature, top_p, top_k) if temperature > 0 else None
    device = next(model.parameters()).device if prefix_cache is None else prefix_cache.layers[0].keys.device
    width = max(len(t) for t in tails)
    input_ids = torch.tensor([[pad_id] * (width - len(t)) + list(t) for t in tails], device=device)
    own_mask = torch.tensor([[False] * (width - len(t)) + [True] * len(t) for t in tails], device=device)
    positions = (prefix_len + own_mask.long().cumsum(1) - 1).clamp(min=prefix_len)
    rows = len(tails)
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    live = torch.arange(rows, device=device)  # each live row's index in the batch
    seen = input_ids  # what the stop-string check reads (it looks back only as far as a stop string reaches)
    next_position = prefix_len + own_mask.sum(1)
    cache = DynamicCache()
    cache_kw = {cache_argument(model): cache}
    eos = torch.tensor(sorted(eos_ids), device=device)
    by_cdf = resolve_draw(draw, device) == "cdf"
    with _shared_prefix_attention(model, prefix_cache, own_mask):
        logits = model(input_ids=input_ids, position_ids=positions, **cache_kw, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        for step in range(max_new_tokens):
            if warpers is None:
                token = logits.argmax(-1)
            else:
                scores = warpers(seen, logits.float())
                probs = torch.softmax(scores, dim=-1)
                token = draw_by_cdf(probs) if by_cdf else torch.multinomial(probs, num_samples=1).squeeze(1)
            out[live, step] = token
            seen = torch.cat([seen, token[:, None]], dim=1)
            done = torch.isin(token, eos) | stop_criteria(seen, None)
            if step == max_new_tokens - 1 or bool(done.all()):
                return out[:, :step + 1]
            if bool(done.any()):
                keep = (~done).nonzero().flatten()
                cache.batch_select_indices(keep)
                live, token, seen, own_mask, next_position = (live[keep], token[keep], seen[keep], own_mask[keep],
                                                              next_position[keep])
            own_mask = torch.cat([own_mask, own_mask.new_ones(len(live), 1)], dim=1)
            _state["own_mask"] = own_mask
            logits = model(input_ids=token[:, None], position_ids=next_position[:, None], **cache_kw,
                           use_cache=True, logits_to_keep=1).logits[:, -1]
            next_position = next_position + 1
    return out
