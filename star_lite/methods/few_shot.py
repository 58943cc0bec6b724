"""few-shot: the base model with worked examples, no training: iteration 0 of STaR's loop alone, the row
every comparison measures the trained methods against."""

from __future__ import annotations

from ..config import Config
from ..loop import star_loop
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.iterations = 0


register("few-shot", summary="the base model with worked examples, no training", configure=configure, run=star_loop)
