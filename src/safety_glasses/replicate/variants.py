"""Pooling variants, expert statistics and the validation rule of an AurA replication run.

- :func:`fit_variants`: one set of forward passes over the concept rows records every
  ``(pooling, positions)`` variant the strategies ask for (:func:`safety_glasses.recording.record_variants`)
  and gives aura glasses per variant, from which the strategies are derived.
- :func:`unit_statistics`: how many units pass AUROC > 0.5, >= 0.75 and the false-discovery cut, on the
  real labels, on one random permutation of them (what chance alone gives with these class counts), and
  on growing subsets of the concept rows (how the counts change with the concept count).
- :func:`shuffled_control`: the matched random control of any glasses (their alpha values on random units).
- :func:`select_on_validation`: the rule that picks one configuration on the validation openings, never on
  the held-out ones.

Example:
    >>> select_on_validation([{"defense": "none"}, {"defense": "aura", "toxicity_cut": 1.4, "perplexity_change": 0.05},
    ...                       {"defense": "det0", "toxicity_cut": 2.1, "perplexity_change": 0.2}], 0.10)["selected"]
    'aura'
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..expertise import auroc, auroc_pvalues, fdr_mask
from ..glasses import Glasses, GlassesConfig

__all__ = ["fit_variants", "unit_statistics", "shuffled_control", "select_on_validation", "SELECTION_RULE"]

SELECTION_RULE = ("on the validation openings (disjoint from the concept and held-out openings), among the "
                  "non-control strategies whose perplexity change on the validation neutral text is at most "
                  "{budget:+.0%}, the one with the largest toxicity cut (when none qualifies, nothing is selected)")


def fit_variants(model: Any, tokenizer: Any, concepts: Any, variants: Sequence[tuple[str, str]], *,
                 threshold: float = 0.5, layers: str | None = None, batch_size: int = 16, damp_alpha: float = 0.5,
                 seed: int = 0, progress: bool = True, fdrs: Sequence[float] = (0.05,), null_seed: int = 0,
                 subsets: Sequence[float] = (0.125, 0.25, 0.5)) -> tuple[dict[tuple[str, str], Glasses], dict[str, Any]]:
    """Aura glasses per ``(pooling, positions)`` variant (raw-text layout) and each variant's unit statistics.

    Returns ``(glasses by variant, statistics by "pooling/positions")``; see :func:`unit_statistics`.

    Example:
        >>> glasses, stats = fit_variants(model, tok, concepts, [("mean", "response"), ("max", "all")])  # doctest: +SKIP
        >>> stats["max/all"]["auroc_over_0.75"]  # doctest: +SKIP
        512
    """
    from ..fitting import score_sites
    from ..glasses import new_glasses
    from ..models import resolve_units
    from ..recording import record_variants

    sites = resolve_units(model, kind="act", layers=layers)
    labels = concepts.labels
    out: dict[tuple[str, str], Glasses] = {}
    stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sgm-aura-rec-") as tmp:
        recs = record_variants(model, tokenizer, concepts, sites,
                               [(pl, ps, Path(tmp) / f"{pl}-{ps}") for pl, ps in variants],
                               batch_size=batch_size, progress=progress, layout="raw")
        for (pooling, positions), rec in zip(variants, recs):
            aurocs, scored, skipped = score_sites(rec, sites, labels, progress=False)
            kept = [s for s in sites if s.module_name in aurocs]
            info: dict[str, Any] = {"hash": rec.meta["concept_hash"], "rows": len(concepts),
                                    "counts": concepts.class_counts()}
            if scored:
                info["rows_scored"] = scored
            if skipped:
                info["skipped_sites"] = skipped
            out[(pooling, positions)] = new_glasses(
                model, kept, aurocs, strategy="aura", threshold=threshold, damp_alpha=damp_alpha, seed=seed,
                pooling=pooling, positions=positions, layers=sorted({s.layer for s in kept}), layout="raw",
                concepts=info)
            matrices = {s.module_name: np.asarray(rec.matrix(s.module_name)) for s in kept if s.module_name not in scored}
            stats[f"{pooling}/{positions}"] = unit_statistics(aurocs, matrices, labels, fdrs=fdrs, null_seed=null_seed,
                                                              subsets=subsets)
    return out, stats


def _counts(flat: torch.Tensor, n_pos: int, n_neg: int, fdrs: Sequence[float]) -> dict[str, Any]:
    p = auroc_pvalues(flat, n_pos, n_neg)
    out: dict[str, Any] = {"auroc_over_0.5": int((flat > 0.5).sum()), "auroc_over_0.75": int((flat >= 0.75).sum()),
                           "max_auroc": round(float(flat.max()), 4) if flat.numel() else None}
    for q in fdrs:
        out[f"fdr_{q:g}"] = int(fdr_mask(p, q).sum())
    return out


def unit_statistics(aurocs: dict[str, torch.Tensor], matrices: dict[str, np.ndarray], labels: np.ndarray, *,
                    fdrs: Sequence[float] = (0.05,), null_seed: int = 0,
                    subsets: Sequence[float] = (0.125, 0.25, 0.5)) -> dict[str, Any]:
    """Counts of units passing AUROC > 0.5, >= 0.75 and each false-discovery cut ``fdr_<q>``.

    ``real``: with the concept labels; ``permuted``: with the labels shuffled once (seed ``null_seed``),
    i.e. what chance gives with the same class counts (a sound significance rule passes ~0 units there,
    while ``AUROC > 0.5`` passes about half); ``by_rows``: on the first ``share`` of the rows of each class
    (a random order, same seed), so the counts can be read against the concept count. ``matrices`` holds
    the recorded ``[rows, units]`` activations of the modules scored on all rows.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> m = {"m": rng.normal(size=(200, 50)).astype(np.float32)}
        >>> y = (np.arange(200) < 40).astype(int)
        >>> s = unit_statistics({"m": torch.as_tensor(np.asarray(auroc(m["m"], y)))}, m, y, subsets=())
        >>> s["real"]["fdr_0.05"], s["permuted"]["fdr_0.05"]
        (0, 0)
    """
    labels = np.asarray(labels).astype(int)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    flat = torch.cat([a.double().reshape(-1) for a in aurocs.values()])
    out: dict[str, Any] = {"units": int(flat.numel()), "n_pos": n_pos, "n_neg": n_neg,
                           "real": _counts(flat, n_pos, n_neg, fdrs)}
    if not matrices:
        return out
    rng = np.random.default_rng(null_seed)

    def scored(rows: np.ndarray, lab: np.ndarray) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(auroc(m[rows], lab))).double() for m in matrices.values()])

    every = np.arange(len(labels))
    perm = rng.permutation(labels)
    out["permuted"] = _counts(scored(every, perm), n_pos, n_neg, fdrs)
    pos, neg = rng.permutation(np.flatnonzero(labels == 1)), rng.permutation(np.flatnonzero(labels == 0))
    by_rows: list[dict[str, Any]] = []
    for share in subsets:
        k_pos, k_neg = max(2, round(share * n_pos)), max(2, round(share * n_neg))
        if k_pos >= n_pos or k_neg >= n_neg or any((b["n_pos"], b["n_neg"]) == (k_pos, k_neg) for b in by_rows):
            continue
        rows = np.concatenate([pos[:k_pos], neg[:k_neg]])
        by_rows.append({"share": share, "n_pos": k_pos, "n_neg": k_neg,
                        **_counts(scored(rows, labels[rows]), k_pos, k_neg, fdrs)})
    by_rows.append({"share": 1.0, "n_pos": n_pos, "n_neg": n_neg, **out["real"]})
    out["by_rows"] = by_rows
    return out


def shuffled_control(glasses: Glasses, seed: int = 0) -> Glasses:
    """Glasses with the same alpha values as ``glasses`` on units drawn uniformly at random (a matched control).

    Example:
        >>> control = shuffled_control(det0_glasses, seed=1)  # doctest: +SKIP
        >>> control.n_experts == det0_glasses.n_experts  # doctest: +SKIP
        True
    """
    names = list(glasses.alphas)
    sizes = [glasses.alphas[n].numel() for n in names]
    flat = torch.cat([glasses.alphas[n] for n in names])
    gen = torch.Generator().manual_seed(seed)
    shuffled = flat[torch.randperm(flat.numel(), generator=gen)]
    c = glasses.config
    cfg = GlassesConfig(**{**{k: getattr(c, k) for k in c.__dataclass_fields__}, "strategy": "random", "seed": seed})
    return Glasses(cfg, dict(zip(names, torch.split(shuffled, sizes))), glasses.aurocs)


def select_on_validation(rows: Sequence[dict[str, Any]], max_ppl_change: float) -> dict[str, Any]:
    """Apply :data:`SELECTION_RULE` to validation result rows; returns ``{"selected", "rule", "candidates"}``.

    Controls (``random...``, ``shuffled:...``) and ``none`` are never candidates.

    Example:
        >>> select_on_validation([{"defense": "det0", "toxicity_cut": 2.0, "perplexity_change": 0.3}], 0.1)["selected"] is None
        True
    """
    candidates = [r for r in rows if r["defense"] != "none" and not r["defense"].startswith(("random", "shuffled:"))
                  and "toxicity_cut" in r]
    ok = [r for r in candidates if r["perplexity_change"] <= max_ppl_change]
    best = max(ok, key=lambda r: r["toxicity_cut"]) if ok else None
    return {"selected": None if best is None else best["defense"], "rule": SELECTION_RULE.format(budget=max_ppl_change),
            "max_ppl_change": max_ppl_change,
            "candidates": {r["defense"]: {"toxicity_cut": round(r["toxicity_cut"], 4),
                                          "perplexity_change": round(r["perplexity_change"], 4)} for r in candidates}}
