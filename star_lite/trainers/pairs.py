"""Right-over-wrong pairs of the same question, the data of the reward model, DPO and the verifier,
and how many preference steps they get."""

from __future__ import annotations

import math
import random
from typing import Any

from ..tasks import Problem, Task



def preference_pairs(task: Task, problems: list[Problem], samples: list[dict[str, Any]],
                     max_pairs_per_problem: int = 4) -> list[dict[str, Any]]:
    """(prompt, chosen, rejected) pairs: a right rationale preferred over a wrong one, same question.

    >>> from star_lite.tasks import load_task
    >>> t = load_task("arithmetic", min_digits=1, max_digits=1)
    >>> p = t.load("train", 1, 0)[0]
    >>> s = [{"id": p.id, "completion": "x. The answer is 1.", "correct": True},
    ...      {"id": p.id, "completion": "y. The answer is 2.", "correct": False}]
    >>> [(r["chosen"], r["rejected"]) for r in preference_pairs(t, [p], s)]
    [(' x. The answer is 1.', ' y. The answer is 2.')]
    """
    by_id = {p.id: p for p in problems}
    right: dict[str, list[str]] = {}
    wrong: dict[str, list[str]] = {}
    for s in samples:
        bucket = right if s["correct"] else wrong
        text = task.format_completion(s["completion"])
        if text not in bucket.setdefault(s["id"], []):
            bucket[s["id"]].append(text)
    pairs = []
    for pid in right:
        combos = [(c, r) for c in right[pid] for r in wrong.get(pid, [])][:max_pairs_per_problem]
        for chosen, rejected in combos:
            pairs.append({"id": pid, "prompt": task.format_question(by_id[pid]), "chosen": chosen,
                          "rejected": rejected})
    return pairs


def preference_steps(num_pairs: int, epochs: float, batch_size: int, cap: int = 0) -> int:
    """DPO steps for ``num_pairs`` pairs: ``epochs`` passes at ``batch_size`` pairs a step, at most ``cap``
    (0 = no cap), at least one.

    >>> preference_steps(50, 3.0, 8), preference_steps(6, 3.0, 8), preference_steps(500, 3.0, 8, cap=40)
    (19, 3, 40)
    """
    steps = max(1, math.ceil(epochs * num_pairs / batch_size))
    return min(steps, cap) if cap else steps


def split_pairs(pairs: list[dict[str, Any]], heldout_fraction: float, seed: int):
    """Split by problem, so held-out pairs ask questions the reward model never saw."""
    ids = sorted({p["id"] for p in pairs})
    random.Random(seed).shuffle(ids)
    n_held = max(1, round(len(ids) * heldout_fraction)) if len(ids) > 1 else 0
    held = set(ids[:n_held])
    return [p for p in pairs if p["id"] not in held], [p for p in pairs if p["id"] in held]
