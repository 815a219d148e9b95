"""Statistics behind every interval in the book: bootstrap over test items and seeds (paired
when two arms are scored on the same items), t intervals over seeds, McNemar's test and
seed spread. All intervals are 95 % unless asked otherwise; all resampling is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Estimate:
    """A number with its interval: ``value``, ``ci = (low, high)`` and how many seeds fed it."""

    value: float
    ci: tuple[float, float] | None
    n_seeds: int
    method: str

    def __iter__(self):  # value, ci = estimate
        return iter((self.value, self.ci))


def t_interval(values, level: float = LEVEL) -> Estimate:
    """Mean over seeds with a Student-t interval (honest about few seeds: wide at n = 3)."""
    x = np.asarray(values, dtype=float).ravel()
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, None, n, "single seed: no interval")
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, (mean - half, mean + half), n, f"t interval over {n} seeds")


def _resampled_sums(
    rows: np.ndarray, rng: np.random.Generator, n_boot: int, chunk: int = 64
) -> np.ndarray:
    """Column sums of ``rows`` (r x n) over ``n_boot`` resamples of its n columns: r x n_boot.
    The same column resample is used for every row (that is what makes arms paired)."""
    n = rows.shape[1]
    out = np.empty((rows.shape[0], n_boot))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        out[:, start : start + b] = rows @ counts.T
    return out


def _percentile(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_items(
    scores, other=None, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Mean item score over seeds and items (``scores``: seeds x items), with a two-level
    bootstrap: seeds resampled, then items. With ``other`` (same shape, same items) the
    estimate is the paired difference ``mean(scores) - mean(other)``, both arms resampled
    with the same seeds and items.
    """
    a = np.atleast_2d(np.asarray(scores, dtype=float))
    d = a if other is None else a - np.atleast_2d(np.asarray(other, dtype=float))
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    per_seed = _resampled_sums(d, rng, n_boot) / n_items  # seeds x n_boot: items resampled
    boot = np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)
    what = "paired difference, " if other is not None else ""
    return Estimate(
        float(d.mean()),
        _percentile(boot, level),
        n_seeds,
        f"{what}bootstrap over {n_seeds} seeds x {n_items} items",
    )


def bootstrap_groups(
    scores, groups, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Mean score when items come in groups (e.g. tokens in sentences): the bootstrap resamples
    whole groups (``groups``: one integer group id per item; ``scores``: seeds x items)."""
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    g = np.asarray(groups)
    _, inv = np.unique(g, return_inverse=True)
    n_groups = inv.max() + 1
    sums = np.stack([np.bincount(inv, weights=row, minlength=n_groups) for row in s])
    counts = np.bincount(inv, minlength=n_groups).astype(float)
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, s.shape[0], size=(n_boot, s.shape[0]))
    stacked = np.vstack([sums, counts[None]])  # the counts ride along as one more row
    resampled = _resampled_sums(stacked, rng, n_boot)
    per_seed = resampled[:-1] / resampled[-1]  # seeds x n_boot
    boot = np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)
    return Estimate(
        float(s.sum(axis=1).mean() / counts.sum()),
        _percentile(boot, level),
        s.shape[0],
        f"bootstrap over {s.shape[0]} seeds x {n_groups} groups of items",
    )


def bootstrap_statistic(
    values, statistic, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Any statistic of a 1-D sample (e.g. a rank correlation over paired rows), resampling rows."""
    x = np.asarray(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boot = np.array([statistic(x[i]) for i in idx], dtype=float)
    boot = boot[np.isfinite(boot)]
    return Estimate(
        float(statistic(x)),
        _percentile(boot, level) if len(boot) else None,
        1,
        f"bootstrap over {len(x)} rows",
    )


def mcnemar(correct_a, correct_b) -> float:
    """Exact two-sided McNemar p-value for two classifiers scored on the same items."""
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    if n01 + n10 == 0:
        return 1.0
    return float(_st.binomtest(n01, n01 + n10, 0.5).pvalue)


def seed_spread(values) -> dict[str, float]:
    """Mean, standard deviation, min and max over seeds."""
    x = np.asarray(values, dtype=float).ravel()
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "n": len(x),
    }
