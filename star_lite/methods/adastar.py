"""adastar (Koh et al. 2025): STaR's loop sampling only a prioritised share of the problems each iteration
(``adastar.sample_fraction``; the rest keep their last kept rationale). The loop is STaR's
(``loop.star_loop``); under ``star.adaptive_sampling`` it asks ``choose_problems`` here which problems to
sample, and everything else is STaR's."""

from __future__ import annotations

import math
import random
from typing import Any

from ..config import Config
from ..loop import star_loop
from ..rundir import RunDir, read_jsonl
from ..tasks import Problem
from .registry import register


def configure(c: Config, cfg: Config) -> None:
    c.star.adaptive_sampling = True


register("adastar", summary="STaR sampling a prioritised share of the problems per iteration", sections=("adastar",),
         configure=configure, run=star_loop)


def choose_problems(rundir: RunDir, train: list[Problem], it: int,
                    cfg: Config) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Iteration ``it``'s problems to sample (``choose_adaptively`` on the saved history) and the training
    examples carried over for the others: the rationale each was last trained on, marked ``carried``."""
    last_row = rundir.finished().get(it - 1, {})
    problems = choose_adaptively(train, sampling_history(rundir, it), cfg.adastar.sample_fraction,
                                 last_row.get("train_accuracy") if it > 1 else None,
                                 cfg.adastar.curriculum, seed=cfg.run.seed + it)
    chosen = {p.id for p in problems}  # the others keep the rationale they were last trained on
    carried = [dict(k, carried=True) for k in read_jsonl(rundir.iter_dir(it - 1) / "train.jsonl")
               if k["id"] not in chosen]
    return problems, carried


def sampling_history(rundir: RunDir, before: int) -> dict[str, list[tuple[int, bool]]]:
    """Per problem id, (iteration, solved) for every earlier iteration that sampled it, from the saved
    samples (the model's own rationales; a rationalization does not count as solved)."""
    history: dict[str, list[tuple[int, bool]]] = {}
    for it in range(1, before):
        solved: dict[str, bool] = {}
        for s in read_jsonl(rundir.iter_dir(it) / "samples.jsonl"):
            if s["phase"] == "rationale":
                solved[s["id"]] = solved.get(s["id"], False) or bool(s["correct"])
        for pid, ok in solved.items():
            history.setdefault(pid, []).append((it, ok))
    return history


def choose_adaptively(problems: list[Problem], history: dict[str, list[tuple[int, bool]]], fraction: float,
                      accuracy: float | None, curriculum: bool, seed: int) -> list[Problem]:
    """AdaSTaR's choice of ``round(fraction * len(problems))`` problems to sample, in problem order.

    Priority (diversity): never solved first, then solved longest ago, then sampled fewest times; ties
    in a seeded random order. Curriculum: with the last iteration's training ``accuracy`` alpha, only
    ``alpha**2`` of the places go by priority and the rest to the easiest problems (highest share
    solved), so a weak model is not fed only problems it fails (the paper's alpha^2 rule).

    >>> from star_lite.tasks import Problem
    >>> ps = [Problem(str(i), "q", "1") for i in range(4)]
    >>> h = {"0": [(1, True)], "1": [(1, False)], "2": [(1, True)]}
    >>> [p.id for p in choose_adaptively(ps, h, 0.5, None, True, seed=0)]  # never solved: 1 and 3
    ['1', '3']
    >>> [p.id for p in choose_adaptively(ps, h, 0.5, 0.5, True, seed=0)]  # alpha^2 = 0.25: one hard, one easy
    ['0', '3']
    """
    m = max(1, min(len(problems), round(fraction * len(problems))))
    tiebreak = {p.id: i for i, p in enumerate(random.Random(seed).sample(problems, len(problems)))}

    def last_solved(pid: str) -> int:
        return max((it for it, ok in history.get(pid, []) if ok), default=0)

    def times(pid: str) -> int:
        return len(history.get(pid, []))

    def solved_share(pid: str) -> float:
        return sum(ok for _, ok in history.get(pid, [])) / times(pid) if times(pid) else 0.0

    ranked = sorted(problems, key=lambda p: (last_solved(p.id), times(p.id), tiebreak[p.id]))
    by_priority = m if not curriculum or accuracy is None else max(1, math.ceil(accuracy ** 2 * m))
    chosen, rest = ranked[:by_priority], ranked[by_priority:]
    easiest = sorted(rest, key=lambda p: (-solved_share(p.id), -last_solved(p.id), tiebreak[p.id]))
    ids = {p.id for p in chosen + easiest[:m - by_priority]}
    return [p for p in problems if p.id in ids]
