"""``fit_glasses``: concept rows -> recorded unit activations -> AUROC -> glasses."""

from __future__ import annotations

import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .concepts import ConceptSet
from .expertise import auroc
from .glasses import Glasses, new_glasses
from .models import resolve_units
from .recording import record_activations
from .strategies import check_strategy


def as_concept_set(concepts: ConceptSet | str | Path | Iterable[dict[str, Any]]) -> ConceptSet:
    """Accept a ConceptSet, a JSONL/CSV path, or in-memory rows."""
    if isinstance(concepts, ConceptSet):
        return concepts
    if isinstance(concepts, (str, Path)):
        return ConceptSet.load(concepts)
    return ConceptSet.from_rows(list(concepts))


def fit_glasses(model: nn.Module, processor: Any, concepts: ConceptSet | str | Path | Iterable[dict[str, Any]], *,
                units: str = "act", pooling: str = "mean", positions: str = "all", strategy: str = "aura",
                threshold: float = 0.5, top_k: int | None = None, layers: str | Sequence[int] | None = None,
                batch_size: int = 8, damp_alpha: float = 0.5, seed: int = 0, clamp: bool = True,
                selection: str = "top-k", record_dir: str | Path | None = None, progress: bool = True,
                layout: str = "auto", fdr: float | None = None) -> Glasses:
    """Find the toxic expert units of ``model``'s language tower and build glasses for them.

    Every unit of the selected decoder MLPs is pooled over the tokens of each concept row
    (image + prompt + response) and scored as a classifier of toxic vs non-toxic rows (AUROC);
    ``strategy`` turns the scores into per-unit alphas (see :mod:`safety_glasses.strategies`;
    ``clamp=False`` is the SGM authors' amplifying aura variant, ``selection="ml-aura"`` apple/ml-aura's
    det0/damp unit selection, ``fdr=0.05`` only the units whose AUROC is significantly above 0.5 at that
    false-discovery rate).
    ``record_dir`` keeps the recording (and resumes a killed one); by default a temporary
    folder is used and removed. ``layout`` is how rows become text (``auto``: the chat template when the
    model has one, else ``USER:/ASSISTANT:``; ``raw``: prompt and response as one plain text, for base
    LMs; rows with an empty prompt are always raw text, AurA's sentences).

    Example:
        >>> model, processor = load_vlm("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device_map="auto")
        >>> glasses = fit_glasses(model, processor, "concepts.jsonl", batch_size=4)
        >>> glasses.save_pretrained("glasses/llava-aura")
    """
    check_strategy(strategy, threshold=threshold, top_k=top_k, damp_alpha=damp_alpha, clamp=clamp,
                   selection=selection, fdr=fdr)  # bad settings fail before the recording
    cs = as_concept_set(concepts)
    sites = resolve_units(model, kind=units, layers=layers)
    keep = nullcontext(str(record_dir)) if record_dir is not None else tempfile.TemporaryDirectory(prefix="sgm-rec-")
    with keep as folder:
        rec = record_activations(model, processor, cs, sites, folder, pooling=pooling,
                                 positions=positions, batch_size=batch_size, progress=progress, layout=layout)
        labels = cs.labels
        concept_hash = rec.meta["concept_hash"]  # computed once by the recording (it decodes every image)
        aurocs, scored, skipped = score_sites(rec, sites, labels, progress=progress)
    kept = [s for s in sites if s.module_name in aurocs]
    layer_ids = sorted({s.layer for s in kept})
    concept_info: dict[str, Any] = {"hash": concept_hash, "rows": len(cs), "counts": cs.class_counts()}
    if scored:
        concept_info["rows_scored"] = scored
    if skipped:
        concept_info["skipped_sites"] = skipped
    return new_glasses(model, kept, aurocs, strategy=strategy, threshold=threshold, top_k=top_k,
                       damp_alpha=damp_alpha, seed=seed, clamp=clamp, selection=selection, fdr=fdr, pooling=pooling,
                       positions=positions, layers=layer_ids, layout=layout, concepts=concept_info)


def score_sites(rec: Any, sites: Sequence[Any], labels: Any, *, progress: bool = False
                ) -> tuple[dict[str, torch.Tensor], dict[str, int], list[dict[str, Any]]]:
    """AUROC of every site's units over the rows where the site ran.

    Returns ``(aurocs, rows_scored, skipped)``: ``rows_scored`` names the sites scored on a subset
    of the rows (and how many); ``skipped`` the sites that did not run on rows of both classes
    (left out, with a warning). Raises ``ValueError`` when no site can be scored.

    Example:
        >>> aurocs, scored, skipped = score_sites(rec, sites, concepts.labels)  # doctest: +SKIP
    """
    aurocs: dict[str, torch.Tensor] = {}
    scored: dict[str, int] = {}
    skipped: list[dict[str, Any]] = []
    for s in tqdm(sites, desc="auroc", unit="site", disable=not progress):
        matrix = rec.matrix(s.module_name)
        ran = rec.ran(s.module_name)
        n_ran = int(ran.sum())
        if n_ran == len(ran):
            aurocs[s.module_name] = torch.as_tensor(auroc(matrix, labels)).float()
            continue
        toxic = int(labels[ran].sum())
        if toxic == 0 or toxic == n_ran:
            skipped.append({"module": s.module_name, "layer": s.layer, "rows_ran": n_ran,
                            "toxic_rows_ran": toxic})
            continue
        aurocs[s.module_name] = torch.as_tensor(auroc(np.asarray(matrix[ran]), labels[ran])).float()
        scored[s.module_name] = n_ran
    if skipped:
        layers = ", ".join(str(x["layer"]) for x in skipped)
        warnings.warn(f"decoder layer(s) {layers}: the MLP did not run on concept rows of both classes (ran on "
                      f"{skipped[0]['rows_ran']} of {len(labels)} rows), so AUROC is undefined; left out of the "
                      "glasses (Llama-3.2-Vision's cross-attention layers skip their MLP on text-only rows)",
                      UserWarning, stacklevel=3)
    if not aurocs:
        raise ValueError("no decoder MLP ran on concept rows of both classes; nothing to score")
    return aurocs, scored, skipped
