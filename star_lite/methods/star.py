"""STaR (Zelikman et al. 2022), with and without rationalization. The loop itself reads top to bottom in
star_lite/loop.py; few-shot, rest-em and adastar are the same loop with other settings (few_shot.py,
rest_em.py, adastar.py)."""

from __future__ import annotations

from ..config import Config
from ..loop import star_loop
from .registry import register


def no_rationalization(c: Config, cfg: Config) -> None:
    c.star.rationalization = False


register("star", summary="STaR: rationales, filter, rationalization, a fresh adapter each iteration", run=star_loop)
register("star-no-rationalization", summary="STaR without rationalization", configure=no_rationalization, run=star_loop)
