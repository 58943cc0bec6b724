"""Sampling split across the processes of an ``accelerate launch`` run, gathered in prompt order.

The prompts are sorted by length (as the hf backend batches them) and handed out in rounds: in
each round every sampling process generates its own contiguous block of ``per_process`` prompts
with the backend's ``generate``, then all blocks are gathered, and every process calls
``on_batch`` with the whole round in prompt order. So every process ends with the same
generations a one-process run gets, the loop saves each round as it arrives (rank 0 writes),
and a budget checked in ``on_batch`` stops every process after the same round.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .. import distributed
from ..progress import progress, quiet
from .base import Generate, Generation, OnBatch


def shard(n: int, rank: int, world: int) -> range:
    """Process ``rank``'s contiguous block of ``n`` items; the blocks in rank order are 0..n-1.

    >>> [list(shard(5, r, 2)) for r in range(2)], list(shard(1, 1, 2))
    ([[0, 1, 2], [3, 4]], [])
    """
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def rounds(order: list[int], per_round: int) -> list[list[int]]:
    """``order`` cut into consecutive rounds of ``per_round``.

    >>> rounds([4, 2, 0, 1, 3], 2)
    [[4, 2], [0, 1], [3]]
    """
    return [order[i:i + per_round] for i in range(0, len(order), per_round)]


def sharded(backend: Callable[[], Generate], *, per_process: int, samples: bool = True) -> Generate:
    """A ``generate`` that splits its prompts across the processes; ``backend()`` gives the real one
    (called only in a process that samples: ``samples`` false leaves this process out, as the
    processes beside a node's one vLLM engine are)."""

    def generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 16, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = ("\n\n",),
                 desc: str = "sampling", on_batch: OnBatch | None = None,
                 share_prefix: bool = True) -> list[Generation]:
        rank, flags = distributed.rank(), distributed.gather(samples)
        samplers = [r for r, s in enumerate(flags) if s]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        bar = progress(total=len(prompts), desc=desc, unit="seq")
        try:
            for idx in rounds(order, per_process * len(samplers)):
                mine = [idx[i] for i in shard(len(idx), samplers.index(rank), len(samplers))] if samples else []
                gens: list[Generation] = []
                if mine:
                    with quiet():  # one bar for all rounds, on rank 0
                        gens = backend()(model, tokenizer, [prompts[i] for i in mine], batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                         stop_strings=stop_strings, desc=desc, share_prefix=share_prefix)
                batch = [g for block in distributed.gather(gens) for g in block]  # rank order = round order
                for i, g in zip(idx, batch):
                    results[i] = g
                if on_batch is not None:
                    agree(lambda: on_batch(idx, batch))
                bar.update(len(idx))
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    return generate


def agree(call: Callable[[], None]) -> None:
    """Run ``call`` in every process; if it raised in any, raise in all (the first process's error
    where this one had none), so no process goes on sampling while another waits for it."""
    error: BaseException | None = None
    try:
        call()
    except Exception as err:  # e.g. the loop's BudgetExhausted, when one process's clock crossed first
        error = err
    errors = distributed.gather(error if error is None or _picklable(error) else RuntimeError(repr(error)))
    raised = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    if raised is not None:
        raise raised


def _picklable(err: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return True
    except Exception:
        return False
