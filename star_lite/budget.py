"""The one budget: ``run.budget_tokens`` / ``run.budget_seconds``, for every method and every stage.

What a run has spent is read from its finished stages' metrics rows (``generated_tokens``, with
``run.budget_axis: all`` also ``trained_tokens``; ``seconds``); a stage charges what it spends as it goes:
STaR's sampling after every batch (``BudgetExhausted`` ends the iteration's sampling there), RL after every
step (``train_rl`` stops at the step that spends it), and nothing starts once it is spent.

>>> from star_lite.config import from_dict
>>> cfg = from_dict({"run": {"budget_tokens": 100}})
>>> budget = Budget.from_rows([{"generated_tokens": 60, "seconds": 5.0}], cfg)
>>> budget.tokens_left(), budget.charge(30), budget.charge(10)
(40, None, '100 generated tokens of 100')
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .rundir import read_jsonl


class BudgetExhausted(Exception):
    """Raised after the sampling batch that spent run.budget_tokens or run.budget_seconds."""


def spent_tokens(rows: list[dict[str, Any]], cfg: Config) -> int:
    """What the finished stages spent of run.budget_tokens: generated tokens, and with
    ``run.budget_axis: all`` also the tokens trained on (the comparison's cost axis).

    >>> from star_lite.config import from_dict
    >>> rows = [{"generated_tokens": 10, "trained_tokens": 100}, {"generated_tokens": 5}]
    >>> spent_tokens(rows, from_dict({})), spent_tokens(rows, from_dict({"run": {"budget_axis": "all"}}))
    (15, 115)
    """
    trained = cfg.run.budget_axis == "all"
    return sum(r.get("generated_tokens", 0) + (r.get("trained_tokens", 0) or 0) * trained for r in rows)


@dataclass
class Budget:
    """run.budget_tokens / run.budget_seconds with what is spent of them; 0 = no limit."""

    max_tokens: int = 0
    max_seconds: float = 0.0
    tokens: int = 0  # spent so far: the finished stages plus what this stage has charged
    seconds_before: float = 0.0  # wall seconds of the finished stages
    started: float = field(default_factory=time.time)  # when this stage began
    cut: str | None = None  # set when the stage stopped for the budget

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], cfg: Config, *, generated: int = 0, trained: int = 0,
                  started: float | None = None) -> "Budget":
        """The budget after the finished stages ``rows``, with ``generated`` / ``trained`` tokens this stage
        has already spent (trained ones count with ``run.budget_axis: all``)."""
        tokens = spent_tokens(rows, cfg) + generated + trained * (cfg.run.budget_axis == "all")
        return cls(cfg.run.budget_tokens, cfg.run.budget_seconds, tokens=tokens,
                   seconds_before=sum(r.get("seconds", 0.0) for r in rows),
                   started=time.time() if started is None else started)

    @classmethod
    def for_iteration(cls, rows: list[dict[str, Any]], cfg: Config, cache: Path, started: float,
                      earlier: list[dict[str, Any]] = ()) -> "Budget":
        """The budget an iteration's sampling charges: the finished iterations' spend, plus the samples an
        interrupted attempt saved in ``cache`` (they were paid for, and they are reused), plus ``earlier``:
        samples this iteration already drew in a sampling before this one (dpo's pairs after its SFT data)."""
        saved = sum(r.get("tokens", 0) for r in read_jsonl(cache))
        return cls.from_rows(rows, cfg, generated=saved + sum(s["tokens"] for s in earlier), started=started)

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    def spent(self) -> str | None:
        """A description of the exhausted budget, or None."""
        if self.max_tokens and self.tokens >= self.max_tokens:
            return f"{self.tokens} generated tokens of {self.max_tokens}"
        if self.max_seconds and self.seconds() >= self.max_seconds:
            return f"{self.seconds():.0f}s of {self.max_seconds:.0f}s"
        return None

    def charge(self, tokens: int) -> str | None:
        """Add ``tokens`` spent; ``cut`` (and the return value) describe the budget once it is exhausted."""
        self.tokens += tokens
        self.cut = self.spent()
        return self.cut

    def tokens_left(self) -> int:
        """Tokens still to spend (0 = no limit; at least 1 where one is set, so a stage can take its one step)."""
        return max(1, self.max_tokens - self.tokens) if self.max_tokens else 0

    def seconds_left(self) -> float:
        """Seconds still to spend (0 = no limit; at least a second where one is set)."""
        return max(1.0, self.max_seconds - self.seconds()) if self.max_seconds else 0.0


def budget_spent(rows: list[dict[str, Any]], cfg: Config) -> str | None:
    """A description of the exhausted budget after the finished stages ``rows``, or None."""
    return Budget.from_rows(rows, cfg).spent()
