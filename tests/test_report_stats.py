"""Statistics of the study report against values computed by hand (formulas in the comments)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from occstudy.report.stats import (
    holm,
    mean,
    paired_t_test,
    paired_test,
    sample_std,
    sign_flip_test,
    summarize,
    t_interval,
)

# Student t quantiles t_{0.975, df}, from tables: df = 1 -> 12.7062, df = 2 -> 4.3027.
T975 = {1: 12.706204736174707, 2: 4.302652729749464}


def p_t_df2(t: float) -> float:
    """Two-sided p of Student t with 2 df in closed form: 1 - |t| / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def p_t_df1(t: float) -> float:
    """Two-sided p of Student t with 1 df (Cauchy): 1 - 2 atan|t| / pi."""
    return 1 - 2 * math.atan(abs(t)) / math.pi


def test_mean_std_interval_by_hand() -> None:
    values = [0.70, 0.72, 0.74]
    # mean 0.72; s = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02
    assert mean(values) == pytest.approx(0.72)
    assert sample_std(values) == pytest.approx(0.02)
    # half-width = t_{0.975,2} * s / sqrt(3) = 4.3027 * 0.02 / 1.7321 = 0.049683
    low, high = t_interval(values) or (0, 0)
    assert (high - low) / 2 == pytest.approx(T975[2] * 0.02 / math.sqrt(3))
    assert (high - low) / 2 == pytest.approx(0.0496829, abs=1e-6)
    assert (low + high) / 2 == pytest.approx(0.72)
    s = summarize(values)
    assert s is not None
    assert (s.n, s.low, s.high) == (3, pytest.approx(low), pytest.approx(high))
    # n = 2: t_{0.975,1} = 12.706, s = 0.0070711 -> half-width 12.706 * 0.005 = 0.063531
    two = summarize([0.62, 0.63])
    assert two is not None and two.half_width == pytest.approx(T975[1] * 0.005)


def test_one_value_has_no_interval_and_empty_has_no_summary() -> None:
    s = summarize([0.55])
    assert s is not None
    assert (s.n, s.mean, s.sd, s.half_width, s.low, s.high) == (1, 0.55, None, None, None, None)
    assert t_interval([0.55]) is None
    assert sample_std([0.55]) is None
    assert summarize([]) is None
    with pytest.raises(ValueError):
        mean([])


def test_paired_t_test_by_hand_and_against_scipy() -> None:
    a, b = [0.75, 0.78, 0.80], [0.70, 0.72, 0.74]
    # d = (0.05, 0.06, 0.06): mean 0.056667, s_d = 0.0057735, t = mean / (s_d / sqrt 3) = 17
    t, p = paired_t_test(a, b) or (0.0, 0.0)
    assert t == pytest.approx(17.0)
    assert p == pytest.approx(p_t_df2(17.0))
    ref = scipy_stats.ttest_rel(a, b)
    assert (t, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    # n = 2: d = (0.02, 0.01): mean 0.015, s_d = 0.0070711, t = 0.015 / 0.005 = 3, df = 1
    t2, p2 = paired_t_test([0.62, 0.63], [0.60, 0.62]) or (0.0, 0.0)
    assert t2 == pytest.approx(3.0)
    assert p2 == pytest.approx(p_t_df1(3.0))
    # Sign: the test is two-sided and symmetric.
    assert paired_t_test(b, a) == (pytest.approx(-17.0), pytest.approx(p))


def test_paired_t_test_degenerate_cases() -> None:
    assert paired_t_test([0.5], [0.4]) is None  # one pair: no test
    assert paired_t_test([], []) is None
    # Constant non-zero differences (0.07 up to float rounding): infinite t, no useful p.
    assert paired_t_test([0.47, 0.49], [0.40, 0.42]) is None
    assert paired_t_test([0.4, 0.5, 0.6], [0.4, 0.5, 0.6]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        paired_t_test([0.1, 0.2], [0.1])


def test_sign_flip_exact_by_hand() -> None:
    # All differences positive: only the observed pattern and its mirror reach |sum| = 0.17.
    assert sign_flip_test([0.05, 0.06, 0.06]) == pytest.approx(2 / 8)
    # d = (0.05, -0.01, 0.02), sum 0.06; the eight flipped sums are +-0.06, +-0.02, +-0.08,
    # +-0.04: four of them have |sum| >= 0.06.
    assert sign_flip_test([0.05, -0.01, 0.02]) == pytest.approx(4 / 8)
    # The floor 2 / 2^n: 0.25 at n = 3, 0.0625 at n = 5.
    assert sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)
    assert sign_flip_test([0.05]) == 1.0
    assert sign_flip_test([]) is None


def test_paired_test_collects_everything() -> None:
    r = paired_test([0.75, 0.78, 0.80], [0.70, 0.72, 0.74], ["s0", "s1", "s2"])
    assert r.n == 3
    assert r.units == ("s0", "s1", "s2")
    assert r.differences == pytest.approx((0.05, 0.06, 0.06))
    assert r.mean_diff == pytest.approx(0.17 / 3)
    assert r.sd_diff == pytest.approx(math.sqrt(1 / 3) / 100)
    assert r.half_width == pytest.approx(T975[2] * (math.sqrt(1 / 3) / 100) / math.sqrt(3))
    assert r.t == pytest.approx(17.0)
    assert r.p_t == pytest.approx(p_t_df2(17.0))
    assert r.p_sign_flip == pytest.approx(0.25)
    # Constant differences: no t-test, and no zero-width interval either.
    const = paired_test([0.47, 0.49], [0.40, 0.42])
    assert (const.n, const.p_t, const.half_width) == (2, None, None)
    assert const.mean_diff == pytest.approx(0.07)
    one = paired_test([0.6], [0.55])
    assert (one.n, one.mean_diff, one.half_width, one.t, one.p_t, one.p_sign_flip) == (
        1,
        pytest.approx(0.05),
        None,
        None,
        None,
        None,
    )


def test_holm_by_hand() -> None:
    # m = 4, sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01 = 0.04, 3*0.03 = 0.09,
    # max(0.09, 2*0.04 = 0.08) = 0.09, max(0.09, 1*0.20) = 0.20; back in the given order.
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # Undefined tests pass through and do not count: m = 2.
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    # Capped at 1 and monotone.
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    assert holm([None]) == [None]
