"""How sure a number is: intervals for one accuracy and for a paired difference of two.

Every method in a comparison answers the same test problems, so two methods are compared
problem by problem (paired): only the problems where they disagree carry information.

>>> lo, hi = wilson(45, 60)
>>> round(lo, 3), round(hi, 3)
(0.628, 0.842)
"""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default); (0, 1) when n == 0.

    >>> [round(x, 4) for x in wilson(0, 10)], [round(x, 4) for x in wilson(10, 10)]
    ([0.0, 0.2775], [0.7225, 1.0])
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def row_interval(row: dict) -> tuple[float, float]:
    """The 95% Wilson interval a metrics row stores with its accuracy (``ci_low``, ``ci_high``); computed from
    ``accuracy`` and ``num_eval`` only for a row that lacks them.

    >>> row_interval({"accuracy": 0.5, "num_eval": 10, "ci_low": 0.2366, "ci_high": 0.7634})
    (0.2366, 0.7634)
    >>> [round(x, 4) for x in row_interval({"accuracy": 0.5, "num_eval": 10})]
    [0.2366, 0.7634]
    """
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        return row["ci_low"], row["ci_high"]
    n = row.get("num_eval", 0)
    return wilson(round(row["accuracy"] * n), n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only A right) and c (only B right):
    a binomial test of min(b, c) out of b + c at one half.

    >>> mcnemar_exact(0, 0), round(mcnemar_exact(1, 9), 4), round(mcnemar_exact(3, 5), 4)
    (1.0, 0.0215, 0.7266)
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> dict[str, float]:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same problems, with a 95% interval and the
    exact McNemar p-value.

    The interval is Newcombe's (1998, method 10) for paired proportions: it combines each
    accuracy's Wilson interval with the correlation of the pairs, so it stays inside [-1, 1]
    and behaves at small counts and at 0 or 1 where the plain Wald interval does not.

    >>> d = paired_difference([True] * 8 + [False] * 2, [True] * 5 + [False] * 5)
    >>> round(d["difference"], 3), d["only_a"], d["only_b"], round(d["p_value"], 3)
    (0.3, 3, 0, 0.25)
    """
    if len(a) != len(b):
        raise ValueError(f"paired difference needs the same problems: {len(a)} vs {len(b)} results")
    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    if n == 0:
        return {"difference": 0.0, "ci_low": -1.0, "ci_high": 1.0, "p_value": 1.0, "n": 0, "only_a": 0, "only_b": 0}
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson(both + only_a, n, z)
    l2, u2 = wilson(both + only_b, n, z)
    diff = p1 - p2
    # correlation term (phi) of the 2x2 table, with Newcombe's continuity correction of its
    # numerator (0 when the cross-product difference is within n/2, or a margin is empty)
    marg = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    cross = both * neither - only_a * only_b
    phi = 0.0
    if marg > 0 and (cross < 0 or cross > n / 2):
        phi = (cross - n / 2 if cross > 0 else cross) / math.sqrt(marg)
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return {"difference": diff, "ci_low": max(-1.0, diff - dl), "ci_high": min(1.0, diff + du),
            "p_value": mcnemar_exact(only_a, only_b), "n": n, "only_a": only_a, "only_b": only_b}


def distinguishable(ci_low: float, ci_high: float) -> bool:
    """True when a difference's interval excludes 0."""
    return ci_low > 0 or ci_high < 0
