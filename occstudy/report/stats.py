"""Statistics of a study report: means, t intervals, paired tests and Holm's correction.

Pure functions on plain sequences of floats, no MLflow, no numpy arrays in the interface, so
every number in a report can be recomputed by hand from the values it lists.

Which paired test, and why. A study repeats each configuration over a few seeds (3 by
default); the replication unit is the seed, or (seed, fold) in k-fold studies. Two variants are
compared on the *same* units (same seed, same data subset, same test images), so the test is
paired on the per-unit differences ``d_i = a_i - b_i``:

* The primary test is the two-sided **paired t-test**. It assumes the differences are roughly
  normal, which cannot be checked with 3 values, but it is the only common test that can reach
  small p-values at n = 3.
* The exact **sign-flip (permutation) test** makes no distributional assumption but has a
  floor: with n units there are only ``2**n`` sign patterns, so its smallest two-sided p-value
  is ``2 / 2**n`` (0.25 at n = 3, 0.0625 at n = 5). It is reported next to the t-test as a
  robustness check; at n = 3 it can never be significant, which the report says.

Many comparisons are made per table, so p-values are adjusted with **Holm's step-down
method**, which controls the family-wise error rate without assuming independence.

One unit (n = 1): no interval and no test can be given; the functions return ``None`` for
them instead of a made-up number.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ALPHA",
    "LEVEL",
    "MAX_EXACT_SIGN_FLIP",
    "PairedTest",
    "Summary",
    "holm",
    "mean",
    "paired_t_test",
    "paired_test",
    "sample_std",
    "sign_flip_test",
    "summarize",
    "t_interval",
]

#: Confidence level of every interval in a report.
LEVEL = 0.95
#: Family-wise significance level of the Holm-corrected tests.
ALPHA = 0.05
#: Largest n for which the exact sign-flip test enumerates its ``2**n`` sign patterns.
MAX_EXACT_SIGN_FLIP = 20

# Differences whose spread is below this (relative to their size) count as constant: floating
# rounding of equal accuracy differences must not turn into t = 1e16 and p = 0.
_ZERO_SPREAD = 1e-12


def mean(values: Sequence[float]) -> float:
    r"""Arithmetic mean :math:`\bar x = \frac{1}{n} \sum_i x_i`.

    Raises:
        ValueError: For an empty sequence.
    """
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    r"""Sample standard deviation :math:`s = \sqrt{\frac{1}{n-1} \sum_i (x_i - \bar x)^2}`.

    Returns:
        ``None`` for fewer than two values (the spread of one value is unknown, not zero).
    """
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((x - m) ** 2 for x in values) / (n - 1))


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    r"""Two-sided t confidence interval of the mean.

    :math:`\bar x \pm t_{(1+\text{level})/2,\; n-1} \cdot s / \sqrt{n}`, with :math:`s` the
    sample standard deviation and :math:`t_{q,\nu}` the q-quantile of Student's t with
    :math:`\nu` degrees of freedom (4.303 for n = 3 at 95 %).

    Returns:
        ``(low, high)``, or ``None`` for fewer than two values.
    """
    s = sample_std(values)
    if s is None:
        return None
    m = mean(values)
    half = _t_quantile(level, len(values) - 1) * s / math.sqrt(len(values))
    return m - half, m + half


@dataclass(frozen=True)
class Summary:
    """Mean and t interval of one cell's values (one value per replication unit).

    Attributes:
        n: Number of values.
        mean: Their mean.
        sd: Sample standard deviation (None when n < 2).
        half_width: Half-width of the t interval at :data:`LEVEL` (None when n < 2).
        values: The values, in unit order.
    """

    n: int
    mean: float
    sd: float | None
    half_width: float | None
    values: tuple[float, ...]

    @property
    def low(self) -> float | None:
        """Lower end of the interval, None when n < 2."""
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        """Upper end of the interval, None when n < 2."""
        return None if self.half_width is None else self.mean + self.half_width


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary | None:
    """Mean, sample standard deviation and t interval of ``values``; None when empty."""
    if not values:
        return None
    interval = t_interval(values, level)
    m = mean(values)
    return Summary(
        n=len(values),
        mean=m,
        sd=sample_std(values),
        half_width=None if interval is None else interval[1] - m,
        values=tuple(float(v) for v in values),
    )


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    r"""Two-sided paired t-test of :math:`H_0: E[a - b] = 0`.

    With :math:`d_i = a_i - b_i`, :math:`\bar d` their mean and :math:`s_d` their sample
    standard deviation: :math:`t = \bar d / (s_d / \sqrt n)` with :math:`n - 1` degrees of
    freedom, :math:`p = 2\,(1 - F_{t,n-1}(|t|))`.

    Returns:
        ``(t, p)``; ``None`` when n < 2, or when the differences are constant and not all zero
        (zero spread: t is infinite and the test says nothing useful). All-zero differences give
        ``(0.0, 1.0)``.

    Raises:
        ValueError: When ``a`` and ``b`` differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return None
    d = [x - y for x, y in zip(a, b, strict=True)]
    d_mean = mean(d)
    s = sample_std(d)
    assert s is not None
    if s <= _ZERO_SPREAD * max(1.0, abs(d_mean)):
        if abs(d_mean) <= _ZERO_SPREAD:
            return 0.0, 1.0
        return None
    from scipy.stats import t as student_t

    t_stat = d_mean / (s / math.sqrt(n))
    p = float(2 * student_t.sf(abs(t_stat), n - 1))
    return t_stat, min(1.0, p)


def sign_flip_test(differences: Sequence[float]) -> float | None:
    r"""Exact two-sided sign-flip (paired permutation) test of :math:`H_0`: the differences are
    symmetric around 0.

    Under :math:`H_0` every sign pattern :math:`s \in \{-1, +1\}^n` is equally likely, so
    :math:`p = 2^{-n} \, \#\{ s : |\sum_i s_i d_i| \ge |\sum_i d_i| \}`. The observed pattern
    and its mirror always count, hence :math:`p \ge 2 / 2^n` (0.25 for n = 3).

    Returns:
        The p-value; ``None`` for no differences or more than :data:`MAX_EXACT_SIGN_FLIP`.
    """
    n = len(differences)
    if n == 0 or n > MAX_EXACT_SIGN_FLIP:
        return None
    observed = abs(math.fsum(differences))
    # A flipped sum equal to the observed one up to rounding must count as "as extreme".
    tol = 1e-9 * max(1.0, observed)
    hits = 0
    for signs in itertools.product((1.0, -1.0), repeat=n):
        if abs(math.fsum(s * d for s, d in zip(signs, differences, strict=True))) >= observed - tol:
            hits += 1
    return hits / 2**n


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of two variants on the units both have.

    Attributes:
        n: Number of pairs.
        mean_diff: Mean difference ``a - b`` (None without pairs).
        sd_diff: Sample standard deviation of the differences (None when n < 2).
        half_width: Half-width of the t interval of the mean difference (None when n < 2 or
            when the t-test is undefined).
        t: t statistic (None when the t-test is undefined).
        p_t: Two-sided paired t-test p-value (None when undefined).
        p_sign_flip: Exact sign-flip p-value (None when n < 2 or n is too large).
        units: The paired units, in order.
        differences: ``a_i - b_i`` per unit.
    """

    n: int
    mean_diff: float | None
    sd_diff: float | None
    half_width: float | None
    t: float | None
    p_t: float | None
    p_sign_flip: float | None
    units: tuple[str, ...]
    differences: tuple[float, ...]


def paired_test(
    a: Sequence[float], b: Sequence[float], units: Sequence[str] | None = None
) -> PairedTest:
    """Paired t-test, its interval of the mean difference, and the exact sign-flip test.

    Args:
        a: Values of the first variant, one per unit.
        b: Values of the second variant on the same units, in the same order.
        units: Names of the units (for the report); ``0, 1, ...`` when None.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    names = tuple(units) if units is not None else tuple(str(i) for i in range(len(d)))
    summary = summarize(d)
    tt = paired_t_test(a, b)
    # Constant non-zero differences have a zero-width "interval": as undefined as their t-test.
    half = None if summary is None or (tt is None and len(d) >= 2) else summary.half_width
    return PairedTest(
        n=len(d),
        mean_diff=None if summary is None else summary.mean,
        sd_diff=None if summary is None else summary.sd,
        half_width=half,
        t=None if tt is None else tt[0],
        p_t=None if tt is None else tt[1],
        # One pair gives p = 1 by construction: not a test, so not reported.
        p_sign_flip=sign_flip_test(d) if len(d) >= 2 else None,
        units=names,
        differences=tuple(d),
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    r"""Holm's step-down adjusted p-values, in the order given.

    With the m defined p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`:
    :math:`\tilde p_{(i)} = \max_{j \le i} \min\{1, (m - j + 1)\, p_{(j)}\}`. A hypothesis is
    rejected at family-wise level :math:`\alpha` when :math:`\tilde p \le \alpha`. ``None``
    entries (tests that could not be made) are passed through and do not count in m.
    """
    defined = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(defined)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
