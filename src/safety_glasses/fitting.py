"""``fit_glasses``: concept rows -> recorded unit activations -> AUROC -> glasses."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .concepts import ConceptSet
from .expertise import auroc
from .glasses import Glasses, new_glasses
from .models import resolve_units
from .recording import record_activations


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
                batch_size: int = 8, damp_alpha: float = 0.5, seed: int = 0,
                record_dir: str | Path | None = None, progress: bool = True, layout: str = "auto") -> Glasses:
    """Find the toxic expert units of ``model``'s language tower and build glasses for them.

    Every unit of the selected decoder MLPs is pooled over the tokens of each concept row
    (image + prompt + response) and scored as a classifier of toxic vs non-toxic rows (AUROC);
    ``strategy`` turns the scores into per-unit alphas (see :mod:`safety_glasses.strategies`).
    ``record_dir`` keeps the recording (and resumes a killed one); by default a temporary
    folder is used and removed. ``layout`` is how rows become text (``auto``: the chat template when the
    model has one, else ``USER:/ASSISTANT:``; ``raw``: prompt and response as one plain text, for base
    LMs; rows with an empty prompt are always raw text, AurA's sentences).

    Example:
        >>> model, processor = load_vlm("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device_map="auto")
        >>> glasses = fit_glasses(model, processor, "concepts.jsonl", batch_size=4)
        >>> glasses.save_pretrained("glasses/llava-aura")
    """
    cs = as_concept_set(concepts)
    sites = resolve_units(model, kind=units, layers=layers)
    keep = nullcontext(str(record_dir)) if record_dir is not None else tempfile.TemporaryDirectory(prefix="sgm-rec-")
    with keep as folder:
        rec = record_activations(model, processor, cs, sites, folder, pooling=pooling,
                                 positions=positions, batch_size=batch_size, progress=progress, layout=layout)
        labels = cs.labels
        concept_hash = rec.meta["concept_hash"]  # computed once by the recording (it decodes every image)
        aurocs: dict[str, torch.Tensor] = {}
        for s in tqdm(sites, desc="auroc", unit="site", disable=not progress):
            aurocs[s.module_name] = torch.as_tensor(auroc(rec.matrix(s.module_name), labels)).float()
    layer_ids = sorted({s.layer for s in sites})
    return new_glasses(model, sites, aurocs, strategy=strategy, threshold=threshold, top_k=top_k,
                       damp_alpha=damp_alpha, seed=seed, pooling=pooling, positions=positions,
                       layers=layer_ids, layout=layout,
                       concepts={"hash": concept_hash, "rows": len(cs), "counts": cs.class_counts()})
