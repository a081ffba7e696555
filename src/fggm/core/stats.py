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

__all__ = ["bootstrap_drop", "bootstrap_mean", "bootstrap_mean_drop", "block_means", "nested_drop", "spread"]


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


def _drops(base_m: np.ndarray, att_m: np.ndarray) -> np.ndarray:
    return 100.0 * (1.0 - att_m / np.maximum(base_m, 1e-12)[..., None])


def nested_drop(base: np.ndarray, attacked: np.ndarray, other: np.ndarray | None = None, *, n: int = 2000,
                seed: int = 0, resample_groups: bool = False) -> tuple[float, float, float]:
    """Mean paired drop in % over groups and crafting seeds, with a 95% bootstrap CI over both
    sources of randomness: the crafting seeds and the evaluation units.

    ``base [G, N]``: each group's unattacked per-unit means (a group is e.g. one victim set, a
    unit one block of evaluation TTIs; every group and seed is evaluated on the same units);
    ``attacked [G, S, N]``: the same under the attack crafted with each of ``S`` seeds.  The
    statistic is ``mean_{g,s} 100 (1 - mean_N attacked[g, s] / mean_N base[g])``; with ``other``
    (``[G, S, N]``, a second attack crafted with the same seeds) it is the paired difference of
    the two mean drops.  Each bootstrap replicate resamples the units (jointly for everything),
    the seeds within each group and, with ``resample_groups`` (groups that are a sample, e.g.
    random victim pairs, rather than all of them), the groups.

    Example:
        >>> base = np.ones((2, 4)); att = np.zeros((2, 3, 4))
        >>> nested_drop(base, att)
        (100.0, 100.0, 100.0)
        >>> nested_drop(base, att, np.full((2, 3, 4), 0.5))
        (50.0, 50.0, 50.0)
    """
    base = np.asarray(base, dtype=float)
    att = np.asarray(attacked, dtype=float)
    if base.ndim != 2 or att.ndim != 3 or att.shape[0] != base.shape[0] or att.shape[2] != base.shape[1]:
        raise ValueError(f"need base [G, N] and attacked [G, S, N], got {base.shape} and {att.shape}")
    oth = None if other is None else np.asarray(other, dtype=float)
    if oth is not None and oth.shape != att.shape:
        raise ValueError(f"other must have the shape of attacked {att.shape}, got {oth.shape}")
    G, S, N = att.shape

    def stat(bm: np.ndarray, am: np.ndarray, om: np.ndarray | None) -> np.ndarray:
        d = _drops(bm, am)
        if om is not None:
            d = d - _drops(bm, om)
        return d.mean(axis=(-1, -2))

    point = float(stat(base.mean(-1), att.mean(-1), None if oth is None else oth.mean(-1)))
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, N))
    np.add.at(counts, (np.repeat(np.arange(n), N), rng.integers(0, N, size=n * N)), 1.0)
    counts /= N
    bm = counts @ base.T                                    # [n, G]
    am = np.einsum("bu,gsu->bgs", counts, att)              # [n, G, S]
    om = None if oth is None else np.einsum("bu,gsu->bgs", counts, oth)
    pick = rng.integers(0, S, size=(n, G, S))
    am = np.take_along_axis(am, pick, axis=2)
    om = None if om is None else np.take_along_axis(om, pick, axis=2)
    if resample_groups and G > 1:
        gi = rng.integers(0, G, size=(n, G))
        bm = np.take_along_axis(bm, gi, axis=1)
        am = np.take_along_axis(am, gi[:, :, None].repeat(S, 2), axis=1)
        om = None if om is None else np.take_along_axis(om, gi[:, :, None].repeat(S, 2), axis=1)
    boot = stat(bm, am, om)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def spread(values: Sequence[float]) -> dict[str, float]:
    """``mean, min, median, max, std`` of a list of numbers (e.g. one drop per victim).

    Example:
        >>> spread([1.0, 2.0, 6.0])["median"]
        2.0
    """
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "min": float("nan"), "median": float("nan"), "max": float("nan"), "std": float("nan")}
    return {"mean": float(v.mean()), "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
