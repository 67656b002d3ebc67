"""Statistics shared by the probes: bootstrap confidence intervals, least squares, nested F-tests.

Everything here is plain NumPy/SciPy on small arrays (one number per request, probe or
(fact, layer) cell), seeded explicitly, and has no model in sight.

- `bootstrap(stat, n, n_boot=2000, seed=0)`: the statistic recomputed on ``n_boot`` resamples of
  ``n`` units drawn with replacement (indices passed to ``stat``). Resample the *unit of
  independence*: requests for edit reports, probes for spillover slopes.
- `percentile_ci(samples, level)`: the percentile interval of those replicates (NaNs dropped: a
  resample can make a statistic undefined, e.g. a slope when every x is equal).
- `mean_ci(x)`: the mean and its percentile-bootstrap CI in one call.
- `ols(X, y)`: least squares with an intercept column added; coefficients, R², residual sum of
  squares and residual degrees of freedom (``numpy.linalg.lstsq``, rank-aware).
- `format_ci(value, lo, hi)`: the one way a value with its interval is printed, ``0.812 [0.701, 0.903]``.
- `nested_f_test(small, big)`: does the bigger model explain significantly more? F and its p-value
  (``scipy.stats.f``).

Cost: ``n_boot`` calls of ``stat``; the defaults take milliseconds for a mean over 1,000 units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["format_ci", "bootstrap", "percentile_ci", "mean_ci", "slope", "OLS", "ols", "nested_f_test", "N_BOOT", "LEVEL"]

N_BOOT = 2000
LEVEL = 0.95


def bootstrap(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot]`` replicates of ``stat(idx)``, each ``idx`` ``[n]`` indices drawn with replacement (seeded)."""
    if n < 1:
        raise ValueError(f"expected at least one unit to resample, got n={n}")
    if n_boot < 1:
        raise ValueError(f"expected n_boot >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.array([stat(i) for i in idx], dtype=float)


def percentile_ci(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates; (nan, nan) if none is finite."""
    if not 0 < level < 1:
        raise ValueError(f"expected a confidence level in (0, 1), got {level}")
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(s, [a, 1 - a])
    return float(lo), float(hi)


def mean_ci(x: np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the finite values of ``x`` ``[unit]``: the mean and its bootstrap CI."""
    v = np.asarray(x, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    reps = bootstrap(lambda i: float(v[i].mean()), v.size, n_boot=n_boot, seed=seed)
    return (float(v.mean()), *percentile_ci(reps, level))


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of ``y`` on ``x`` (with intercept); NaN when ``x`` has no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if x.size < 2 or sxx <= 1e-12 * max(1.0, float(x @ x)):
        return float("nan")
    return float(dx @ (y - y.mean()) / sxx)


@dataclass(frozen=True)
class OLS:
    """A least-squares fit ``y ≈ b0 + X @ b``.

    Attributes:
        coef: ``[1 + n_features]``, the intercept first.
        r2: 1 − RSS/TSS (NaN when y is constant).
        rss: the residual sum of squares.
        df_resid: n − rank of the design (intercept included).
        rank: the design's rank.
        n: observations.
    """

    coef: np.ndarray
    r2: float
    rss: float
    df_resid: int
    rank: int
    n: int


def ols(X: np.ndarray, y: np.ndarray) -> OLS:
    """Least squares of ``y`` ``[n]`` on ``X`` ``[n, n_features]`` plus an intercept (rank-deficient designs allowed)."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float).reshape(len(y), -1)
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("expected finite X and y for least squares, got NaN or inf")
    A = np.column_stack([np.ones(len(y)), X])
    coef, _, rank, _ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - rss / tss if tss > 0 else float("nan")
    return OLS(coef=coef, r2=float(r2), rss=rss, df_resid=int(len(y) - rank), rank=int(rank), n=len(y))


def nested_f_test(small: OLS, big: OLS) -> tuple[float, float]:
    """``(F, p)`` for "``big`` explains more than ``small``", ``small``'s design nested in ``big``'s."""
    from scipy.stats import f as f_dist

    if small.n != big.n:
        raise ValueError(f"expected fits on the same data, got n={small.n} and n={big.n}")
    df_num = big.rank - small.rank
    if df_num < 1 or big.df_resid < 1:
        return float("nan"), float("nan")
    if big.rss <= 0:
        return float("inf"), 0.0
    F = ((small.rss - big.rss) / df_num) / (big.rss / big.df_resid)
    return float(F), float(f_dist.sf(F, df_num, big.df_resid))


def format_ci(value: float, lo: float, hi: float, *, fmt: str = ".3g", width: int | None = None) -> str:
    """``value [lo, hi]`` with each number in format ``fmt``, or ``–`` when the value is missing (NaN).

    The one CI-cell formatter of factscope (reports, spillover tables, the demo, the CLI).

    Args:
        value, lo, hi: the estimate and its interval.
        fmt: a format spec for each number (default ``".3g"``; ``".2f"`` for scores in [0, 1]).
        width: right-align the whole cell to this many characters (default: no padding).
    """
    import math

    cell = f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(value) else "–"
    return cell if width is None else f"{cell:>{width}}"
