"""Paired bootstrap statistics for attack evaluations (problem-agnostic).

Conditions (no attack, each attack) are run on the same instances or channel blocks, so their
per-unit numbers are paired: the bootstrap resamples units, not conditions.

Example:
    >>> bootstrap_drop(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    (50.0, 50.0, 50.0)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bootstrap_drop", "bootstrap_mean", "bootstrap_mean_drop", "block_means"]


def bootstrap_drop(base: np.ndarray, attacked: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Drop in % of the paired mean (``100 (1 - mean(attacked) / mean(base))``) and its 95% bootstrap CI.

    Example:
        >>> bootstrap_drop(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
        (50.0, 50.0, 50.0)
    """
    base, attacked = np.asarray(base, float), np.asarray(attacked, float)
    point = 100.0 * (1.0 - attacked.mean() / max(base.mean(), 1e-12))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(n, len(base)))
    b = base[idx].mean(1)
    drops = 100.0 * (1.0 - attacked[idx].mean(1) / np.where(b > 0, b, 1e-12))
    lo, hi = np.percentile(drops, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def bootstrap_mean(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and its 95% bootstrap CI.

    Example:
        >>> bootstrap_mean(np.array([1.0, 1.0]))
        (1.0, 1.0, 1.0)
    """
    x = np.asarray(x, float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def block_means(per_unit: Sequence[float], units: int, n_runs: int, block: int) -> np.ndarray:
    """Means of consecutive blocks of ``block`` units within each of ``n_runs`` runs of ``units``
    (the bootstrap's units when neighbouring units are correlated, e.g. TTIs of one episode).

    Conditions run on identical inputs, so block ``i`` of every condition is paired.

    Example:
        >>> block_means([1.0, 3.0, 5.0, 7.0], units=4, n_runs=1, block=2).tolist()
        [2.0, 6.0]
    """
    v = np.asarray(per_unit, dtype=float).reshape(n_runs, units)
    n = max(1, units // block)
    return np.concatenate([np.array([c.mean() for c in np.array_split(row, n)]) for row in v])


def bootstrap_mean_drop(base: np.ndarray, attacked: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over ``J`` quantities of each one's paired drop in % (rows of ``[J, N]`` arrays over the
    same ``N`` units), with a 95% CI from resampling the units jointly for all ``J``.

    Example:
        >>> bootstrap_mean_drop(np.ones((2, 4)), np.array([[0.5] * 4, [0.0] * 4]))
        (75.0, 75.0, 75.0)
    """
    base, attacked = np.atleast_2d(np.asarray(base, float)), np.atleast_2d(np.asarray(attacked, float))

    def drops(b: np.ndarray, a: np.ndarray) -> np.ndarray:
        bm = b.mean(-1)
        return (100.0 * (1.0 - a.mean(-1) / np.where(bm > 0, bm, 1e-12))).mean(-1)

    point = float(drops(base, attacked))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, base.shape[1], size=(n, base.shape[1]))
    boot = drops(np.moveaxis(base[:, idx], 0, 1), np.moveaxis(attacked[:, idx], 0, 1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)
