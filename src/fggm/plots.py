"""Plots (matplotlib, Agg backend): training curve, per-user throughput bars and CDF.

Example:
    >>> # plot_training_curve("runs/x/progress.csv", "runs/x/training_curve.png")
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG (110 dpi) and close it; return the path.

    Example:
        >>> fig, _ = plt.subplots()
        >>> save_figure(fig, "/tmp/empty.png").name
        'empty.png'
    """
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_training_curve(csv_path: str | Path, png_path: str | Path) -> Path:
    """Reward per TTI (training, rolling) and validation reward against environment steps.

    Example:
        >>> # plot_training_curve("progress.csv", "training_curve.png")
    """
    steps, train_r, val_steps, val_r = [], [], [], []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            steps.append(int(row["step"]))
            train_r.append(float(row["reward_mean"]))
            if row["val_reward"]:
                val_steps.append(int(row["step"]))
                val_r.append(float(row["val_reward"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, train_r, label="training reward / TTI (stochastic policy)")
    if val_r:
        ax.plot(val_steps, val_r, "o-", ms=3, label="validation reward / TTI (deterministic)")
    ax.set_xlabel("environment steps (TTIs)")
    ax.set_ylabel("reward per TTI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, png_path)


def plot_evaluation(rows: Sequence[dict[str, Any]], png_path: str | Path) -> Path:
    """Per-user throughput bars (one group per user) and the CDF of per-episode user throughput.

    Example:
        >>> # plot_evaluation(rows, "evaluation.png")
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    n = len(rows)
    K = len(rows[0]["per_user_throughput"]) if rows else 0
    width = 0.8 / max(n, 1)
    for i, r in enumerate(rows):
        x = np.arange(K) + (i - (n - 1) / 2) * width
        ax1.bar(x, r["per_user_throughput"], width=width, label=r["scheduler"])
        vals = np.sort(np.ravel(r.get("episode_user_throughput") or r["per_user_throughput"]))
        ax2.step(vals, np.arange(1, len(vals) + 1) / len(vals), where="post", label=r["scheduler"])
    ax1.set_xlabel("user")
    ax1.set_ylabel("mean SE per TTI [bit/s/Hz]")
    ax1.set_xticks(np.arange(K))
    ax1.legend(fontsize=7, ncol=2)
    ax2.set_xlabel("per-user throughput in an episode [bit/s/Hz]")
    ax2.set_ylabel("CDF")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    return save_figure(fig, png_path)


def plot_drop_bars(rows: Sequence[dict[str, Any]], png: str | Path, *, key: str, ci_key: str, ylabel: str, title: str,
                   target: float | None = None, target_label: str = "", label_key: str = "attack",
                   highlight: str = "fggm") -> Path:
    """Bar chart of one per-attack number (``rows[i][key]``, the ``none`` row left out) with its
    CI (``rows[i][ci_key] = [lo, hi]``) and an optional dashed target line.

    Example:
        >>> plot_drop_bars([{"attack": "fggm", "cut": 70.0, "ci": [65, 75]}], "/tmp/b.png", key="cut", ci_key="ci",
        ...                ylabel="cut [%]", title="t").name
        'b.png'
    """
    rows = [r for r in rows if r[label_key] != "none"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(rows))
    drop = np.array([r[key] for r in rows])
    err = np.array([[d - r[ci_key][0], r[ci_key][1] - d] for d, r in zip(drop, rows)]).T.reshape(2, -1)
    colors = ["#c0392b" if r[label_key] == highlight else "#7f8c8d" for r in rows]
    ax.bar(x, drop, yerr=err, color=colors, capsize=4)
    if target is not None:
        ax.axhline(target, ls="--", lw=1, color="k")
        ax.text(len(rows) - 0.5, target + 1, target_label, ha="right", va="bottom", fontsize=8)
    ax.set_xticks(x, [r[label_key] for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, png)
