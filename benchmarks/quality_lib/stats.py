"""Means with Student-t confidence intervals, without scipy.

The t quantile is found by bisection on the t distribution's CDF, which is computed from the regularised
incomplete beta function (continued fraction, as in Numerical Recipes §6.4):
``P(T ≤ t) = 1 − ½·I_{ν/(ν+t²)}(ν/2, ½)`` for ``t ≥ 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15
_TINY = 1e-300


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``.

    Example:
        >>> round(incomplete_beta(2.0, 3.0, 0.4), 6)  # 1 − (0.6⁴ + 4·0.4·0.6³)
        0.5248
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution, ``0.5 ≤ p < 1``.

    Examples:
        >>> round(t_quantile(0.975, 2), 4), round(t_quantile(0.975, 4), 4), round(t_quantile(0.975, 30), 4)
        (4.3027, 2.7764, 2.0423)
    """
    if not 0.5 <= p < 1.0:
        raise ValueError(f"expected 0.5 <= p < 1, got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """A sample mean with a two-sided confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 2) -> str:
        """``mean [low, high]`` with ``digits`` decimals."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and ``level`` Student-t interval of independent values (one value: a zero-width interval).

    Example:
        >>> mean_interval([1.0, 2.0, 3.0]).text(3)
        '2.000 [-0.484, 4.484]'
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    centre = sum(values) / n
    if n == 1:
        return Interval(centre, centre, centre, 1)
    variance = sum((v - centre) ** 2 for v in values) / (n - 1)
    half = t_quantile(0.5 + level / 2.0, n - 1) * math.sqrt(variance / n)
    return Interval(centre, centre - half, centre + half, n)
