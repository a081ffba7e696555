"""From per-unit AUROC to per-unit scale factors alpha (the lenses of the glasses).

- ``aura``: alpha = 1 - Gini = 2 (1 - AUROC) for units with AUROC > threshold, else 1
  (AurA's dampening in proportion to expertise).
- ``damp``: constant ``damp_alpha`` on the global top-k units by AUROC.
- ``det0``: alpha = 0 on the global top-k units by AUROC.
- ``random``: a control with the same count of units as ``aura`` (or ``top_k`` when given),
  chosen uniformly at random, receiving the same alpha values the experts would have had.

For ``damp`` and ``det0`` without ``top_k`` the default k is the number of strong experts,
units with AUROC >= 0.75 (at least one).
"""

from __future__ import annotations

import torch

STRATEGIES = ("aura", "damp", "det0", "random")
STRONG_EXPERT_AUROC = 0.75


def _flatten(aurocs: dict[str, torch.Tensor]) -> tuple[list[str], list[int], torch.Tensor]:
    names = list(aurocs)
    sizes = [int(aurocs[n].numel()) for n in names]
    flat = torch.cat([aurocs[n].double().reshape(-1) for n in names]) if names else torch.zeros(0)
    return names, sizes, flat


def _unflatten(names: list[str], sizes: list[int], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: t.clone().float() for n, t in zip(names, torch.split(flat, sizes))}


def _top_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values; ties broken by position (module order, then unit index)."""
    # a stable sort of the negated values keeps position order among ties
    return torch.sort(-flat, stable=True).indices[:k]


def compute_alphas(aurocs: dict[str, torch.Tensor], strategy: str = "aura", *, threshold: float = 0.5,
                   top_k: int | None = None, damp_alpha: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-module alpha vectors from per-module AUROC vectors.

    Example:
        >>> a = compute_alphas({"m": torch.tensor([0.9, 0.5, 0.2])}, "aura")
        >>> [round(float(v), 3) for v in a["m"]]
        [0.2, 1.0, 1.0]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 <= damp_alpha <= 1.0:
        raise ValueError(f"damp_alpha must be in [0, 1], got {damp_alpha}")
    names, sizes, flat = _flatten(aurocs)
    n = flat.numel()
    if top_k is not None and top_k > n:
        raise ValueError(f"top_k={top_k} exceeds the {n} units available")
    aura = torch.where(flat > threshold, 2.0 * (1.0 - flat), torch.ones_like(flat)).clamp(0.0, 1.0)
    if strategy == "aura":
        if top_k is not None:  # keep only the top-k experts, the rest at 1
            keep = torch.zeros(n, dtype=torch.bool)
            keep[_top_k(flat, top_k)] = True
            aura = torch.where(keep, aura, torch.ones_like(aura))
        return _unflatten(names, sizes, aura)
    alpha = torch.ones(n, dtype=torch.float64)
    if strategy in ("damp", "det0"):
        k = top_k if top_k is not None else max(1, int((flat >= STRONG_EXPERT_AUROC).sum()))
        alpha[_top_k(flat, k)] = damp_alpha if strategy == "damp" else 0.0
        return _unflatten(names, sizes, alpha)
    # random control: same count and the same alpha values as the aura experts
    if top_k is not None:
        idx = _top_k(flat, top_k)
        values = aura[idx]
    else:
        values = aura[aura < 1.0]
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=gen)[: values.numel()]
    alpha[chosen] = values[torch.randperm(values.numel(), generator=gen)]
    return _unflatten(names, sizes, alpha)
