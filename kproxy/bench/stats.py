"""Statistics the benchmark reports: percentiles, summaries, and the chi-square test of balance.

No SciPy: the chi-square survival function is the regularized upper incomplete gamma function,
computed with the series / continued-fraction pair of Numerical Recipes (§6.2).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (NumPy's
    default): p50 of [1, 2, 3, 4] is 2.5; p99 of 20 values lies between the two largest."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not in 0..100")
    rank = (len(xs) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def summary(values: Sequence[float]) -> dict:
    """n, min, p50, p90, p99, max and mean of a sample (empty sample: n 0 only)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": sum(values) / len(values)}


def _gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series; converges for x < a + 1."""
    term = total = 1.0 / a
    ap = a
    for _ in range(10000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by Lentz's continued fraction; for x >= a + 1."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a)."""
    if a <= 0:
        raise ValueError("a must be > 0")
    if x < 0:
        raise ValueError("x must be >= 0")
    if x == 0:
        return 1.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return min(1.0, _gamma_continued_fraction(a, x))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square with df degrees of freedom (scipy.stats.chi2.sf)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    return gamma_q(df / 2.0, max(0.0, x) / 2.0)


def chi_square_uniform(counts: Sequence[int]) -> tuple[float, int, float]:
    """Pearson's goodness-of-fit test of counts against a uniform spread: (statistic, df, p)."""
    k = len(counts)
    if k < 2:
        raise ValueError("need at least two categories")
    total = sum(counts)
    if total == 0:
        raise ValueError("no observations")
    expected = total / k
    stat = sum((c - expected) ** 2 / expected for c in counts)
    return stat, k - 1, chi2_sf(stat, k - 1)


def balance(counts: Sequence[int]) -> dict:
    """The spread of connections over endpoints: counts, max/min ratio, chi-square and p."""
    stat, df, p = chi_square_uniform(counts)
    lo, hi = min(counts), max(counts)
    return {"counts": list(counts), "total": sum(counts), "endpoints": len(counts),
            "max_min_ratio": (hi / lo) if lo else math.inf, "chi2": stat, "df": df, "p_value": p}


def fit_power(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares fit of t = c * n**k on log-log axes: (c, k), or None with < 2 points."""
    pts = [(math.log(n), math.log(t)) for n, t in points if n > 0 and t > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    k = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return math.exp(my - k * mx), k
