"""From per-unit AUROC to per-unit scale factors alpha (the lenses of the glasses).

- ``aura``: alpha = 1 - Gini = 2 (1 - AUROC) for units with AUROC > threshold, else 1
  (AurA's dampening in proportion to expertise). With ``clamp=True`` (default) alpha is kept in
  [0, 1], so a threshold below 0.5 changes nothing (units with AUROC in (threshold, 0.5] would get
  alpha >= 1 and are clamped to 1) and a warning says so; ``clamp=False`` is the SGM authors'
  variant (their threshold 0.3): units with AUROC in (threshold, 0.5) are *amplified* (alpha up to
  2 (1 - threshold)).
- ``damp``: constant ``damp_alpha`` on the selected units; ``det0``: alpha = 0 on them.
- ``random``: a control with the same count of units as ``aura`` (or ``top_k`` when given),
  chosen uniformly at random, receiving the same alpha values the experts would have had.

Significant experts only (``fdr=q``, e.g. ``aura:fdr=0.05`` in ``sgm replicate aura``): with few concept
rows many units reach AUROC > 0.5 by chance, and ``aura`` dampens each of them a little. With ``fdr``
only units whose AUROC is significantly above 0.5 count as experts: the one-sided Mann-Whitney p-value
of each AUROC given the class counts (:func:`safety_glasses.expertise.auroc_pvalues`), then the
Benjamini-Hochberg cut at false-discovery rate ``q`` over all units together
(:func:`safety_glasses.expertise.fdr_mask`). ``aura`` keeps alpha = 1 - Gini on those units (1
elsewhere); ``det0``/``damp`` set them to 0 / ``damp_alpha`` instead of the top-k (``top_k`` then caps
the count); ``random`` takes as many random units as ``aura`` with ``fdr`` would. ``q`` is a
statistical error rate fixed in advance, not a knob tuned on the evaluation: it needs the class counts
(``n_pos``, ``n_neg``), which glasses record.

Selection of the ``damp``/``det0`` units (``selection``):

- ``"top-k"`` (default): exactly ``top_k`` units, the global top-k by AUROC, ties broken by
  position (module order, then unit index); without ``top_k``, k is the number of strong experts,
  units with AUROC >= 0.75 (at least one).
- ``"ml-aura"`` (apple/ml-aura's rule): units with AUROC strictly above a cut. Without ``top_k``
  the cut is ``threshold`` (default 0.5: every unit with AUROC > 0.5); with ``top_k`` it is the
  (k+1)-th largest AUROC, so units tied at the cut are all left out and fewer than k units may be
  chosen.

Example:
    >>> a = compute_alphas({"m": torch.tensor([0.9, 0.5, 0.4])}, "aura", threshold=0.3, clamp=False)
    >>> [round(float(v), 3) for v in a["m"]]
    [0.2, 1.0, 1.2]
"""

from __future__ import annotations

import warnings

import torch

from .expertise import auroc_pvalues, fdr_mask

STRATEGIES = ("aura", "damp", "det0", "random")
SELECTIONS = ("top-k", "ml-aura")
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


def _ml_aura_mask(flat: torch.Tensor, top_k: int | None, threshold: float) -> torch.Tensor:
    """apple/ml-aura's det0/damp selection: AUROC strictly above the cut (see the module docstring)."""
    if top_k is None:
        cut = threshold
    elif top_k >= flat.numel():
        return torch.ones_like(flat, dtype=torch.bool)
    else:
        cut = float(torch.sort(flat, descending=True).values[top_k])
    return flat > cut


_SELECTION_ALIASES = {"topk": "top-k", "top_k": "top-k", "mlaura": "ml-aura", "ml_aura": "ml-aura"}


def normalize_selection(selection: str) -> str:
    """``top-k`` or ``ml-aura`` from their spellings (``top_k``, ``topk``, ``ml_aura``, ``mlaura``).

    Example:
        >>> normalize_selection("ml_aura")
        'ml-aura'
    """
    key = str(selection).strip().lower()
    return _SELECTION_ALIASES.get(key, key)


def check_strategy(strategy: str, *, threshold: float = 0.5, top_k: int | None = None, damp_alpha: float = 0.5,
                   clamp: bool = True, selection: str = "top-k", fdr: float | None = None) -> list[str]:
    """Validate strategy settings (``ValueError`` on a bad one) before any work; returns the notes on
    settings that have no effect (what :func:`compute_alphas` warns about).

    Example:
        >>> check_strategy("aura", threshold=0.3)[0].startswith("threshold 0.3 has no effect")
        True
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if normalize_selection(selection) not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 <= damp_alpha <= 1.0:
        raise ValueError(f"damp_alpha must be in [0, 1], got {damp_alpha}")
    if fdr is not None and not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    notes = []
    if clamp and threshold < 0.5 and strategy in ("aura", "random"):
        notes.append(f"threshold {threshold:g} has no effect with clamp=True: units with AUROC in ({threshold:g}, 0.5] "
                     "would get alpha = 2(1 - AUROC) >= 1 and are clamped to 1, so these glasses equal threshold "
                     "0.5; pass clamp=False (--no-clamp) for the variant that amplifies them")
    return notes


def compute_alphas(aurocs: dict[str, torch.Tensor], strategy: str = "aura", *, threshold: float = 0.5,
                   top_k: int | None = None, damp_alpha: float = 0.5, seed: int = 0, clamp: bool = True,
                   selection: str = "top-k", fdr: float | None = None, n_pos: int | None = None,
                   n_neg: int | None = None) -> dict[str, torch.Tensor]:
    """Per-module alpha vectors from per-module AUROC vectors (see the module docstring).

    Warns (``UserWarning``) when ``threshold`` has no effect: below 0.5 with ``clamp=True``. ``fdr``
    (significant experts only) needs the class counts ``n_pos`` and ``n_neg`` of the concept rows.

    Example:
        >>> a = compute_alphas({"m": torch.tensor([0.9, 0.5, 0.2])}, "aura")
        >>> [round(float(v), 3) for v in a["m"]]
        [0.2, 1.0, 1.0]
        >>> compute_alphas({"m": torch.tensor([0.9, 0.9, 0.2])}, "det0", top_k=1, selection="ml-aura")["m"].tolist()
        [1.0, 1.0, 1.0]
        >>> a = compute_alphas({"m": torch.tensor([0.9, 0.6, 0.55])}, "aura", fdr=0.05, n_pos=20, n_neg=200)
        >>> [round(float(v), 3) for v in a["m"]]  # 0.6 and 0.55 are within chance for 20 toxic rows
        [0.2, 1.0, 1.0]
    """
    for note in check_strategy(strategy, threshold=threshold, top_k=top_k, damp_alpha=damp_alpha, clamp=clamp,
                               selection=selection, fdr=fdr):
        warnings.warn(note, UserWarning, stacklevel=2)
    selection = normalize_selection(selection)
    names, sizes, flat = _flatten(aurocs)
    n = flat.numel()
    if top_k is not None and top_k > n:
        raise ValueError(f"top_k={top_k} exceeds the {n} units available")
    aura = torch.where(flat > threshold, 2.0 * (1.0 - flat), torch.ones_like(flat))
    if clamp:
        aura = aura.clamp(0.0, 1.0)
    if fdr is not None:
        if not n_pos or not n_neg:
            raise ValueError("fdr needs the class counts of the concept rows (n_pos and n_neg): glasses made "
                             "before they were recorded cannot use it")
        significant = fdr_mask(auroc_pvalues(flat, n_pos, n_neg), fdr) & (flat > threshold)
        aura = torch.where(significant, aura, torch.ones_like(aura))
        if strategy in ("damp", "det0"):
            alpha = torch.ones(n, dtype=torch.float64)
            idx = significant.nonzero().reshape(-1)
            if top_k is not None:  # the top_k most significant (highest AUROC) of them
                idx = idx[_top_k(flat[idx], min(top_k, idx.numel()))]
            alpha[idx] = damp_alpha if strategy == "damp" else 0.0
            return _unflatten(names, sizes, alpha)
    if strategy == "aura":
        if top_k is not None:  # keep only the top-k experts, the rest at 1
            keep = torch.zeros(n, dtype=torch.bool)
            keep[_top_k(flat, top_k)] = True
            aura = torch.where(keep, aura, torch.ones_like(aura))
        return _unflatten(names, sizes, aura)
    alpha = torch.ones(n, dtype=torch.float64)
    if strategy in ("damp", "det0"):
        value = damp_alpha if strategy == "damp" else 0.0
        if selection == "ml-aura":
            alpha[_ml_aura_mask(flat, top_k, threshold)] = value
        else:
            k = top_k if top_k is not None else max(1, int((flat >= STRONG_EXPERT_AUROC).sum()))
            alpha[_top_k(flat, k)] = value
        return _unflatten(names, sizes, alpha)
    # random control: same count and the same alpha values as the aura experts
    if top_k is not None:
        idx = _top_k(flat, top_k)
        values = aura[idx]
    else:
        values = aura[aura != 1.0]
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=gen)[: values.numel()]
    alpha[chosen] = values[torch.randperm(values.numel(), generator=gen)]
    return _unflatten(names, sizes, alpha)
