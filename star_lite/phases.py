"""Wall seconds by phase within one stage of a method (sampling, training, reward model, RL rollouts
and updates, DPO, candidates, verifier scoring, evaluation), for the stage's metrics row and the
comparison's time split. STaR's own iterations time their phases in the loop.

A stage calls ``start()`` when it begins and its row takes ``take()``; the functions that do the
work are ``@timed``. A phase inside the same phase (a sampling call inside a sampling call) counts once.
"""

from __future__ import annotations

import contextlib
import functools
import time

_totals: dict[str, float] = {}
_depth: dict[str, int] = {}
_hook: list = []  # called as each outermost phase begins (the run's thread count, re-read)


@contextlib.contextmanager
def hooked(fn):
    """While inside, ``fn()`` runs whenever a phase begins that is not inside another phase, and as evaluation
    begins (``began``); the hook before it after. A run re-reads its thread count there, so processes started
    side by side share the cores from their first sampling or training on, whichever registered first."""
    before = list(_hook)
    _hook[:] = [fn]
    try:
        yield
    finally:
        _hook[:] = before


def start() -> float:
    """A new stage: phases from now on; returns the time, as ``time.time()``."""
    _totals.clear()
    return time.time()


def began() -> None:
    """Work begins that is not inside a phase (a phase, or evaluation, which the loop times itself): the hook."""
    if _hook and not any(_depth.values()):
        _hook[0]()


@contextlib.contextmanager
def phase(name: str):
    began()
    _depth[name] = _depth.get(name, 0) + 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _depth[name] -= 1
        if _depth[name] == 0:
            _totals[name] = _totals.get(name, 0.0) + time.perf_counter() - t0


def timed(name: str):
    """Decorator: the function's calls count as phase ``name``."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


def take() -> dict[str, float]:
    """``seconds_<phase>`` of the stage so far (RL split into rollouts and updates), then clear.

    >>> _ = start(); _totals.update(rl=10.0, rl_rollouts=6.5, eval=2.0); take()
    {'seconds_eval': 2.0, 'seconds_rl_rollouts': 6.5, 'seconds_rl_updates': 3.5}
    """
    totals = dict(_totals)
    _totals.clear()
    if "rl" in totals:
        totals["rl_updates"] = max(0.0, totals.pop("rl") - totals.get("rl_rollouts", 0.0))
    return {f"seconds_{k}": round(v, 1) for k, v in sorted(totals.items())}
