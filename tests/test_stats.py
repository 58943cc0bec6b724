"""Intervals and tests against values published or computed by hand."""

import pytest
from hypothesis import given, strategies as st

from star_lite.stats import distinguishable, mcnemar_exact, paired_difference, wilson


def test_wilson_matches_newcombe_1998():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605
    assert [round(x, 4) for x in wilson(81, 263)] == [0.2553, 0.3662]
    assert [round(x, 4) for x in wilson(15, 148)] == [0.0624, 0.1605]
    assert [round(x, 4) for x in wilson(0, 20)] == [0.0, 0.1611]


def test_mcnemar_exact_is_a_two_sided_binomial_test():
    # b=2, c=10: 2 * P(X <= 2 | n=12, p=1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_difference_on_a_table_worked_by_hand():
    # 8 both right, 3 only a, 1 only b, 8 neither
    a = [True] * 8 + [True] * 3 + [False] * 1 + [False] * 8
    b = [True] * 8 + [False] * 3 + [True] * 1 + [False] * 8
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.1)
    assert (d["only_a"], d["only_b"], d["n"]) == (3, 1, 20)
    assert d["p_value"] == pytest.approx(mcnemar_exact(3, 1))
    assert d["ci_low"] < 0 < d["ci_high"]  # 3 vs 1 discordant pairs cannot tell the two apart
    assert not distinguishable(d["ci_low"], d["ci_high"])


def table(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_paired_interval_matches_published_examples():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8, the
    # Cavo et al. (2012) table [[59, 6], [16, 80]]: Newcombe's square-and-add interval for the paired
    # difference is -0.0621 (95% CI -0.1186 to -0.0046), as their R package contingencytables tests.
    # This table has a positive cross-product difference above n/2, so it checks the continuity
    # correction of phi; without the pairing term, or with either bound from the other side, it fails.
    d = paired_difference(*table(59, 6, 16, 80))
    assert [round(d[k], 4) for k in ("difference", "ci_low", "ci_high")] == [-0.0621, -0.1186, -0.0046]
    # swapping the two methods mirrors the interval
    e = paired_difference(*reversed(table(59, 6, 16, 80)))
    assert [round(e[k], 4) for k in ("difference", "ci_low", "ci_high")] == [0.0621, 0.0046, 0.1186]


def test_a_large_consistent_gap_is_distinguishable():
    a = [True] * 150 + [False] * 50
    b = [True] * 100 + [False] * 100
    d = paired_difference(a, b)  # a right wherever b is, and on 50 more
    assert d["difference"] == pytest.approx(0.25)
    assert distinguishable(d["ci_low"], d["ci_high"]) and d["ci_low"] > 0.15
    assert d["p_value"] < 1e-10


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_paired_interval_contains_the_difference_and_stays_in_range(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    d = paired_difference(a, b)
    assert -1.0 <= d["ci_low"] <= d["difference"] + 1e-12 <= d["ci_high"] + 2e-12 <= 1.0 + 2e-12
    assert 0.0 <= d["p_value"] <= 1.0
    assert d["only_a"] - d["only_b"] == round(d["difference"] * len(pairs))


@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_contains_the_estimate(k, n):
    k = min(k, n)
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n + 1e-12 and k / n - 1e-12 <= hi <= 1.0
