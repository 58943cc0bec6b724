"""What SFT computes faster than the libraries' defaults, each behind a ``train.*`` switch.

    train.packed_attention   segments: a padding-free row (several examples end to end) attends
                             example by example (on a CPU as one padded batch), instead of over the
                             whole row with a block mask
    train.frozen_weights     bfloat16: under bfloat16 autocast, the frozen float32 base weights are
                             cast once per training instead of at every matmul (bit-identical)
    train.dropout            fast: LoRA dropout draws only the dropped elements' positions (16-bit
                             random integers above p = 0.25), not torch's per-element Bernoulli
                             draw (a CPU cost; same distribution)
    sampling.lora            merged: generation runs each LoRA layer as one matmul with the adapter
                             added into a copy of its weight (``merged_lora``)

Each is on where it helps (``auto``) and is undone when training ends, so sampling and
evaluation run the model exactly as loaded. docs/speed.md has the measurements.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

SEGMENTS = "star_lite_segments"  # the attention implementation's registered name


def packed_segments(position_ids: torch.Tensor) -> list[int] | None:
    """Lengths of the examples laid end to end in a padding-free row (position ids restart at 0
    at each); None when the batch is not one packed row.

    >>> packed_segments(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    [3, 2, 1]
    >>> packed_segments(torch.tensor([[0, 1, 2, 3]])) is None
    True
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    ends = starts[1:] + [position_ids.shape[1]]
    return [e - s for s, e in zip(starts, ends)]


# the padded batch's attention scores (float32 elements) above which each example attends on its own instead:
# the softmax is kept for the backward, so 16 MB per layer (measured faster only at tens of tokens)
PADDED_SCORES_LIMIT = 2**22


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal attention over each example of a padding-free row on its own: the same result as the
    block-diagonal mask, at the cost of the examples' lengths squared rather than the row's. Any
    other batch goes to transformers' SDPA attention unchanged."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    lengths = packed_segments(kwargs.get("position_ids"))
    if lengths is None or query.shape[2] != key.shape[2] or any(kwargs.get(k) is not None for k in ("past_key_values", "cache")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    heads, longest = query.shape[1], max(lengths)
    if query.device.type == "cpu" and dropout == 0 and len(lengths) * heads * longest ** 2 <= PADDED_SCORES_LIMIT:
        out = padded_causal_attention(query, key, value, lengths, scale)
    else:
        # one causal SDPA call per example, in float32: at tens of tokens CPU SDPA is faster in float32
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), dropout_p=dropout, scale=scale, is_causal=True)
            for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))],
            dim=2)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def padded_causal_attention(query, key, value, lengths: list[int], scale: float) -> torch.Tensor:
    """Causal attention of each example of a padding-free row ([1, heads, row, dim]; ``lengths`` end to end),
    as one batch: the examples padded to the longest, plain matmuls and a float32 softmax. On a CPU at tens
    of tokens this forward and backward are cheaper than SDPA's, whose backward took about 0.7 ms per call
    and example in a profile of the embedded model. Padding sits after each example's tokens, so the causal
    mask alone keeps it out of every real query's view; the padded queries' outputs are dropped.
    Returns [1, heads, row, dim]."""
    heads, row, dim = query.shape[1:]
    examples, longest = len(lengths), max(lengths)
    sizes = torch.tensor(lengths, device=query.device)
    offsets = torch.arange(longest, device=query.device)
    # gathers by index_select (its backward is an index_add; boolean indexing's was slower here)
    index = ((sizes.cumsum(0) - sizes)[:, None] + offsets).clamp(max=row - 1).flatten()  # [examples * longest]
    real = (offsets[None, :] < sizes[:, None]).flatten().nonzero().flatten()  # the real tokens' padded slots
    q, k, v = (x[0].index_select(1, index).view(heads, examples, longest, dim).float() for x in (query, key, value))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    causal = torch.ones(longest, longest, dtype=torch.bool, device=query.device).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = torch.matmul(weights, v).view(heads, examples * longest, dim)
    return out.index_select(1, real)[None]  # the real tokens, in row order


@contextlib.contextmanager
def attention_implementation(model, name: str, attention, mask) -> Iterator[None]:
    """While inside, ``model`` (its config) attends with ``attention``, registered with transformers under
    ``name`` together with the ``mask`` function that builds its mask; the loaded implementation after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


@contextlib.contextmanager
def attention_by_segments(model) -> Iterator[None]:
    """While training, ``model`` uses segment_attention (SDPA's mask for its fallback)."""
    from transformers.masking_utils import sdpa_mask

    if model.config._attn_implementation not in ("sdpa", "eager"):  # flash attention splits a packed row itself
        yield
        return
    with attention_implementation(model, SEGMENTS, segment_attention, sdpa_mask):
        yield


@contextlib.contextmanager
def bfloat16_frozen_weights(model) -> Iterator[int]:
    """While training under bfloat16 autocast, every frozen float32 weight of a linear layer is a
    bfloat16 copy: autocast would cast it at each matmul, forward and backward, to the same values.
    Yields the number of weights replaced; the float32 originals (tied weights included) are back after."""
    originals: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # one copy per tensor, so tied weights stay tied
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and isinstance(weight, torch.nn.Parameter)
                and not weight.requires_grad and weight.dtype == torch.float32):
            if id(weight) not in copies:
                copies[id(weight)] = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
            originals.append((module, weight))
            module.weight = copies[id(weight)]
    try:
        yield len(originals)
    finally:
        for module, weight in originals:
            module.weight = weight


@contextlib.contextmanager
def merged_lora(model, dtype: torch.dtype | None = None) -> Iterator[int]:
    """For generation: each plain LoRA layer's active adapters added into a copy of its base weight
    (W + scale B A, peft's ``get_delta_weight``, summed in float32 and rounded once to ``dtype``, default
    the weight's own) and its LoRA path skipped (peft's merged state), so a token costs the base's
    matmuls alone. Yields the number of layers merged; after, every layer holds its own weight
    Parameter again, untouched, and is unmerged. Quantized (4-bit, 8-bit) layers, DoRA and other LoRA
    variants, a LoRA bias, disabled or already merged layers, and weights that something else places
    (an accelerate offload hook, DeepSpeed ZeRO-3's partitions) are left as they are. The sum is taken
    outside any autocast (GRPO's rollouts run under one), so it is float32 before its one rounding."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    swapped: list[tuple[torch.nn.Module, torch.nn.Module, torch.nn.Parameter]] = []  # (LoRA layer, base, weight)
    try:
        with torch.no_grad():
            for module in model.modules():
                if type(module) is not LoraLinear or module.merged or module.disable_adapters:
                    continue
                base = module.get_base_layer()
                weight = getattr(base, "weight", None)
                names = [a for a in module.active_adapters if a in module.lora_A]
                if (type(base) is not torch.nn.Linear or not isinstance(weight, torch.nn.Parameter)
                        or not weight.dtype.is_floating_point or not names
                        or any(a in module.lora_variant or getattr(module, "lora_bias", {}).get(a) for a in names)
                        or hasattr(base, "_hf_hook") or hasattr(weight, "ds_id")):
                    continue
                merged = weight.detach().to(torch.float32, copy=True)
                with torch.autocast(weight.device.type, enabled=False):
                    for name in names:
                        merged += module.get_delta_weight(name).float()
                swapped.append((module, base, weight))
                base.weight = torch.nn.Parameter(merged.to(dtype or weight.dtype), requires_grad=False)
                module.merged_adapters = list(names)
        yield len(swapped)
    finally:
        for module, base, weight in swapped:
            base.weight = weight
            module.merged_adapters = []


def dropped_positions(n: int, p: float, device=None) -> torch.Tensor:
    """Which of ``n`` elements a Bernoulli(p) dropout drops, drawn as the gaps between them: in a
    sequence of independent Bernoulli(p) trials the gaps are independent Geometric(p) numbers, so at
    p = 0.05 about n / 20 uniform draws (``floor(log u / log(1 - p)) + 1``, u in (0, 1]) replace n.

    >>> _ = torch.manual_seed(0)
    >>> positions = dropped_positions(100_000, 0.05)
    >>> 4800 < len(positions) < 5200 and bool((positions.diff() > 0).all())
    True
    """
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    log_keep = math.log1p(-p)
    draws = int(n * p + 6 * math.sqrt(n * p) + 16)  # almost always enough in one round
    chunks, last = [], -1
    while last < n - 1:
        u = 1 - torch.rand(draws, dtype=torch.float64, device=device)  # (0, 1]
        positions = last + (torch.floor(torch.log(u) / log_keep).long() + 1).cumsum(0)
        chunks.append(positions)
        last = int(positions[-1])
    positions = torch.cat(chunks)
    return positions[positions < n]


class _ZeroAt(torch.autograd.Function):
    """x * scale with the elements at ``positions`` (of the flattened tensor) zero; the same in the backward."""

    @staticmethod
    def forward(ctx, x, positions, scale):
        out = x.mul(scale).contiguous()
        out.view(-1).index_fill_(0, positions, 0)
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        grad_in = grad.mul(ctx.scale).contiguous()
        grad_in.view(-1).index_fill_(0, positions, 0)
        return grad_in, None, None


class FastDropout(torch.nn.Module):
    """Dropout with fewer random draws than torch's CPU dropout (one Bernoulli draw per element).
    At p <= 0.25 it draws only where the dropped elements are (``dropped_positions``: exactly
    Bernoulli(p) per element, about n * p draws); above, its mask comes from 16-bit random integers,
    four per 64-bit draw, each element dropped with probability ``round(p * 32768) / 32768``. The
    rest are scaled by 1 / (1 - p), as nn.Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = int(round(p * 32768))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        if self.p <= 0.25:
            return _ZeroAt.apply(x, dropped_positions(n, self.p, x.device), 1.0 / (1.0 - self.p))
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        keep = (draws.view(torch.int16)[:n] & 0x7FFF) >= self.threshold  # 15 uniform bits each
        return x * keep.view(x.shape) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextlib.contextmanager
def fast_lora_dropout(model) -> Iterator[int]:
    """While training, the adapter's dropout modules are FastDropout; yields how many were replaced."""
    replaced: list[tuple[torch.nn.ModuleDict, str, torch.nn.Module]] = []
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                    replaced.append((dropouts, name, dropout))
                    dropouts[name] = FastDropout(dropout.p).train(dropout.training)
    try:
        yield len(replaced)
    finally:
        for dropouts, name, dropout in replaced:
            dropouts[name] = dropout


def resolve(setting: str, on: str, helps: bool) -> bool:
    """A switch's value: ``auto`` means ``helps``; otherwise whether it is set to ``on``."""
    return helps if setting == "auto" else setting == on


class ScoredPositionsLogProb:
    """TRL's fused LM head (``trl.kernels.ChunkedLogProbFunction``) as plain torch, for devices without
    Triton, where TRL's version folds every vocabulary tile of every position (prompt and padding too)
    in a loop of float32 elementwise passes. Given only the scored positions (TRL's compact path), it
    projects them in one matmul (in the autocast dtype, as TRL's tiles are), takes the softmax in float32
    and lets autograd do the backward. Same outputs, in the same order: log-probabilities, entropy,
    log(sum p^2), the mean logit and whether the target is the first argmax (None where not asked)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        device = hidden.device.type  # TRL's dtype rule: the autocast dtype, else the hidden states'
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        z = torch.nn.functional.linear(hidden.to(dtype), weight.to(dtype),
                                       None if bias is None else bias.to(dtype)).float() * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z * (1 / temperature)
        log_p = torch.log_softmax(z, dim=-1)
        log_probs = log_p.gather(-1, targets[:, None])[:, 0]
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():  # TRL marks these three non-differentiable
            log_sum_sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def next_token_positions(ids: torch.Tensor, scored_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a loss over some tokens of each row (``scored_tokens``, bool [rows, length]): the positions whose
    logits predict them (position t predicts token t + 1; pass it as transformers' ``logits_to_keep`` so only
    these reach the LM head) and those tokens in the same order, row by row, as the model returns the kept
    logits. SFT's completion-only loss and the DPO verifier's sequence log-probabilities both score this way.

    >>> positions, targets = next_token_positions(torch.tensor([[5, 6, 7, 8]]), torch.tensor([[False, False, True, True]]))
    >>> positions.tolist(), targets.tolist()
    ([[False, True, True, False]], [7, 8])
    """
    positions = torch.zeros_like(scored_tokens, dtype=torch.bool)
    positions[:, :-1] = scored_tokens[:, 1:]
    return positions, ids[:, 1:][positions[:, :-1]]


@contextlib.contextmanager
def scored_positions_head() -> Iterator[bool]:
    """While inside, TRL's fused LM head (DPO, GRPO) gets only the positions whose next token is scored,
    as it does on a Triton device, and computes them with ``ScoredPositionsLogProb``. Yields whether it
    applies (False with a TRL that lacks the hooks: its own head then runs); TRL's own after."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        yield False
        return
    if not all(hasattr(trl_utils, name) for name in ("_use_triton", "_ChunkedLogProbFunction")):
        yield False
        return
    before = trl_utils._use_triton, trl_utils._ChunkedLogProbFunction
    trl_utils._use_triton = lambda device: True  # only where it decides to pass the scored positions alone
    trl_utils._ChunkedLogProbFunction = ScoredPositionsLogProb
    try:
        yield True
    finally:
        trl_utils._use_triton, trl_utils._ChunkedLogProbFunction = before
