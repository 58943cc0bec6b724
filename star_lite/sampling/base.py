"""What every sampling backend returns, and the signature every backend's ``generate`` has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


@dataclass
class Generation:
    text: str  # raw decoded continuation (before cutting at a stop string)
    num_tokens: int  # tokens generated up to and including the stop, padding excluded
    token_ids: tuple[int, ...] = ()  # those tokens (empty where a backend does not give them)


OnBatch = Callable[[list[int], list[Generation]], None]  # (prompt indices, their generations), after each batch


class Generate(Protocol):
    """``generate(model, tokenizer, prompts, ...) -> one Generation per prompt, in prompt order``;
    greedy when ``temperature == 0``. ``on_batch`` is called as results arrive (the loop saves them)."""

    def __call__(self, model, tokenizer, prompts: Sequence[str], *, batch_size: int = 16, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = ("\n\n",),
                 desc: str = "sampling", on_batch: OnBatch | None = None,
                 share_prefix: bool = True) -> list[Generation]: ...
