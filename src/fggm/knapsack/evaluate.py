"""Evaluate knapsack solvers on the same unseen instances: value, share of the optimum, feasibility.

Every solver sees the same true instances (drawn from ``seed``); ``forged`` (item ->
``(weight, value)``) makes those items report the forgery in every instance.  Solvers decide on
the reports; value and feasibility use the TRUE weights and values; ``optimum_value`` is the
exact optimum of the TRUE instances (the reference of ``vs_optimum``).

Example:
    >>> from fggm.knapsack.solvers import make_solver
    >>> rows = evaluate_solvers(KnapsackEnvConfig(), [make_solver("greedy"), make_solver("exact")], 200, seed=0)
    >>> [r["solver"] for r in rows], rows[1]["vs_optimum"]
    (['greedy', 'exact'], 1.0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fggm.core.stats import bootstrap_mean
from fggm.knapsack.config import KnapsackConfigError, KnapsackEnvConfig
from fggm.knapsack.env import believed_capacity, exact_solve, outcome, sample_instances, true_capacity
from fggm.knapsack.solvers import Solver
from fggm.plots import plt, save_figure

__all__ = ["apply_reports", "run_solver", "evaluate_solvers", "write_results", "plot_solvers"]


def apply_reports(w: np.ndarray, v: np.ndarray, forged: Mapping[int, Sequence[float]] | None) -> tuple[np.ndarray, np.ndarray]:
    """Reported instances: the true ``(w, v)`` with the forged items' reports put in.

    Example:
        >>> w, v = apply_reports(np.full((2, 3), 0.5), np.full((2, 3), 0.5), {1: (0.0, 1.0)})
        >>> w[:, 1].tolist(), v[:, 1].tolist()
        ([0.0, 0.0], [1.0, 1.0])
    """
    w_rep, v_rep = np.array(w, dtype=float, copy=True), np.array(v, dtype=float, copy=True)
    for item, (fw, fv) in (forged or {}).items():
        if not 0 <= int(item) < w_rep.shape[1]:
            raise KnapsackConfigError(f"forged item {item} outside [0, {w_rep.shape[1]})")
        w_rep[:, int(item)], v_rep[:, int(item)] = float(fw), float(fv)
    return w_rep, v_rep


def run_solver(cfg: KnapsackEnvConfig, solver: Solver, w: np.ndarray, v: np.ndarray,
               forged: Mapping[int, Sequence[float]] | None = None, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-instance outcome of one solver: ``selected [B, n]``, ``value [B]`` (true, 0 if
    infeasible), ``feasible [B]``.

    Example:
        >>> from fggm.knapsack.solvers import make_solver
        >>> w, v = sample_instances(4, 10, 1)
        >>> run_solver(KnapsackEnvConfig(), make_solver("exact"), w, v)["feasible"].all()
        np.True_
    """
    w_rep, v_rep = apply_reports(w, v, forged)
    sel = np.concatenate([solver.solve(w_rep[s : s + chunk], v_rep[s : s + chunk],
                                       believed_capacity(cfg, w_rep[s : s + chunk]))
                          for s in range(0, len(w), chunk)])
    value, feasible = outcome(sel, w, v, true_capacity(cfg, w))
    return {"selected": sel.astype(bool), "value": value, "feasible": feasible}


def evaluate_solvers(cfg: KnapsackEnvConfig, solvers: Sequence[Solver], instances: int = 2000, seed: int = 7,
                     forged: Mapping[int, Sequence[float]] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """One row per solver on the same ``instances`` true instances from ``seed``.

    Row keys: ``solver, mean_value, value_ci95, optimum_value, vs_optimum, feasible_rate,
    mean_items, selection_rate`` (per item), ``instances, seed, forged_items``.

    Example:
        >>> from fggm.knapsack.solvers import make_solver
        >>> evaluate_solvers(KnapsackEnvConfig(), [make_solver("random")], 100)[0]["instances"]
        100
    """
    if instances < 1:
        raise KnapsackConfigError("instances must be >= 1")
    w, v = sample_instances(instances, cfg.n_items, seed)
    cap = true_capacity(cfg, w)
    opt, _ = outcome(exact_solve(w, v, cap), w, v, cap)
    rows = []
    it: Any = solvers
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(solvers, desc="solving", unit="solver")
    for s in it:
        r = run_solver(cfg, s, w, v, forged)
        _, lo, hi = bootstrap_mean(r["value"])
        rows.append({
            "solver": s.name,
            "mean_value": float(r["value"].mean()),
            "value_ci95": [lo, hi],
            "optimum_value": float(opt.mean()),
            "vs_optimum": float(r["value"].mean() / opt.mean()),
            "feasible_rate": float(r["feasible"].mean()),
            "mean_items": float(r["selected"].sum(1).mean()),
            "selection_rate": r["selected"].mean(0).tolist(),
            "instances": int(instances),
            "seed": int(seed),
            "forged_items": sorted(int(i) for i in (forged or {})),
        })
    return rows


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``results.json`` (``{"rows": [...], **extra}``) into ``out_dir``; returns its path.

    Example:
        >>> # write_results(rows, "runs/knapsack-eval")
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({"rows": list(rows), **(extra or {})}, indent=2))
    return path


def plot_solvers(rows: Sequence[dict[str, Any]], png: str | Path) -> Path:
    """Mean value per solver (with the exact optimum) and every item's selection rate.

    Example:
        >>> plot_solvers([{"solver": "greedy", "mean_value": 3.7, "value_ci95": [3.6, 3.8], "optimum_value": 3.8,
        ...                "selection_rate": [0.5, 0.4]}], "/tmp/knapsack_eval.png").name
        'knapsack_eval.png'
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(rows))
    means = np.array([r["mean_value"] for r in rows])
    err = np.array([[m - r["value_ci95"][0], r["value_ci95"][1] - m] for m, r in zip(means, rows)]).T.reshape(2, -1)
    ax1.bar(x, means, yerr=err, capsize=4, color="#34495e")
    if rows:
        ax1.axhline(rows[0]["optimum_value"], ls="--", lw=1, color="k")
        ax1.text(len(rows) - 0.5, rows[0]["optimum_value"], "optimum", ha="right", va="bottom", fontsize=8)
    ax1.set_xticks(x, [r["solver"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax1.set_ylabel("mean true value per instance")
    n = len(rows[0]["selection_rate"]) if rows else 0
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ax2.bar(np.arange(n) + (i - (len(rows) - 1) / 2) * width, r["selection_rate"], width=width, label=r["solver"])
    ax2.set_xlabel("item")
    ax2.set_ylabel("selection rate")
    ax2.set_xticks(np.arange(n))
    ax2.set_ylim(0, 1.0)
    ax2.legend(fontsize=7, ncol=3, loc="upper center")
    return save_figure(fig, png)
