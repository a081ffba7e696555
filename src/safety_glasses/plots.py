"""Plots of glasses: AUROC distribution per decoder layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from .glasses import Glasses


def plot_auroc_by_layer(glasses: "Glasses", path: str | Path) -> Path:
    """Box plot of unit AUROC per layer, with the expert count above each box; returns the path.

    Example:
        >>> plot_auroc_by_layer(Glasses.from_pretrained("glasses/"), "auroc.png")
    """
    sites = glasses.config.sites
    data = [glasses.aurocs[s.module_name].numpy() for s in sites]
    experts = [int((glasses.alphas[s.module_name] < 1).sum()) for s in sites]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(sites) + 2), 4.2))
    ax.boxplot(data, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
    ax.axhline(glasses.config.threshold, color="tab:red", lw=1, ls="--", label=f"threshold {glasses.config.threshold}")
    ax.set_xticks(range(1, len(sites) + 1), [str(s.layer) for s in sites])
    top = max((float(d.max()) for d in data if d.size), default=1.0)
    for i, n in enumerate(experts, start=1):
        ax.text(i, min(1.02, top + 0.02), str(n), ha="center", va="bottom", fontsize=7, color="tab:red")
    ax.set_xlabel("decoder layer (red: experts with alpha < 1)")
    ax.set_ylabel("AUROC toxic vs non-toxic")
    ax.set_ylim(0.0, 1.08)
    ax.set_title(f"{glasses.config.base_model.get('class', 'model')}: {glasses.config.unit_kind} units, "
                 f"{glasses.n_experts} experts ({glasses.config.strategy})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
