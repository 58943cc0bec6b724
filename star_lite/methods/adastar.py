"""adastar (Koh et al. 2025): STaR's loop sampling only a prioritised share of the problems each iteration
(``adastar.sample_fraction``; the rest keep their last kept rationale). The choice is one step of the loop
(loop.choose_adaptively, under ``star.adaptive_sampling``), so it reads in line with the others there."""

from __future__ import annotations

from ..config import Config
from ..loop import run
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.adaptive_sampling = True


register("adastar", summary="STaR sampling a prioritised share of the problems per iteration", sections=("adastar",),
         configure=configure, run=run)
