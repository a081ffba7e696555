"""Recording pooled MLP-unit activations over concept rows, streamed to disk.

Each site (one decoder MLP module of the language tower) gets one standard ``.npy`` file of
shape ``[rows, units]`` in float16. Rows are written batch by batch straight into the file, so
memory does not grow with the number of rows, and ``recording.json`` records how many rows are
done: a killed run started again on the same folder continues where it stopped.

Pooling over tokens (``pooling``): ``mean`` (default), ``max``, ``last`` (the last selected
token). Token mask (``positions``): ``all`` (default), ``text``, ``image``, ``response``,
``prompt``. Padding is always excluded. A row whose mask selects no token (e.g. ``image`` on
a text-only row) records zeros and is counted in ``recording.json`` as ``empty_rows``.

Sites that do not run on a row: some decoders skip a layer's MLP when there is no image
(Llama-3.2-Vision's cross-attention layers, on text-only rows). Such rows are recorded as NaN for
that site and counted per site in ``recording.json`` (``site_rows``: rows where each site ran);
AUROC is then computed over the rows where the site ran (see :func:`safety_glasses.fitting.fit_glasses`).
A batch that mixes rows with and without images runs as two forward passes, so what a row records
never depends on the rows batched with it (Mllama masks a text-only row's cross-attention MLP
out inside a batch with images). Real NaN activations are an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .concepts import ConceptSet
from .generation import to_model_inputs
from .hooks import ProjectHook, register_site_hook
from .inputs import encode_rows
from .models import UnitSite, model_fingerprint

POOLINGS = ("mean", "max", "last")
RECORD_POSITIONS = ("all", "text", "image", "response", "prompt")
_FP16_MAX = float(np.finfo(np.float16).max)
META = "recording.json"


class RecordingError(ValueError):
    """A recording folder that cannot be used (holds another recording, or is corrupt)."""


@dataclass
class Recording:
    """Pooled activations on disk: one float16 ``[rows, units]`` matrix per site.

    Example:
        >>> rec = Recording.open("runs/rec")
        >>> rec.matrix(rec.sites[0].module_name).shape
        (256, 128)
    """

    directory: Path
    sites: list[UnitSite]
    labels: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | Path) -> "Recording":
        """Open a complete recording folder written by :func:`record_activations`."""
        directory = Path(directory)
        meta = json.loads((directory / META).read_text())
        if meta["rows_done"] != meta["n_rows"]:
            raise RecordingError(f"{directory}: recording incomplete ({meta['rows_done']}/{meta['n_rows']} rows)")
        sites = [UnitSite(**s) for s in meta["sites"]]
        return cls(directory, sites, np.asarray(meta["labels"], dtype=np.int8), meta)

    def matrix(self, module_name: str) -> np.ndarray:
        """The ``[rows, units]`` float16 matrix of one site, memory-mapped read-only (NaN rows: the
        site did not run on that row)."""
        for i, s in enumerate(self.sites):
            if s.module_name == module_name:
                return np.load(self.directory / _site_file(i), mmap_mode="r")
        raise KeyError(module_name)

    def ran(self, module_name: str) -> np.ndarray:
        """``[rows]`` bool: the rows on which the site ran (its values are not NaN).

        Example:
            >>> rec.ran(rec.sites[0].module_name).all()  # doctest: +SKIP
            True
        """
        return ~np.isnan(np.asarray(self.matrix(module_name)[:, 0], dtype=np.float32))


def _site_file(i: int) -> str:
    return f"site_{i:04d}.npy"


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``x [B, T, D]`` over the tokens selected by ``mask [B, T]`` -> ``[B, D]`` float32.

    Rows with an empty mask give zeros.

    Example:
        >>> pool(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), "mean").shape
        torch.Size([2, 4])
    """
    m = mask.to(x.device)
    xf = x.float()
    has = m.any(dim=1, keepdim=True)
    if how == "mean":
        mf = m.unsqueeze(-1).to(xf.dtype)
        out = (xf * mf).sum(1) / mf.sum(1).clamp_min(1.0)
    elif how == "max":
        out = xf.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(1)
        out = torch.where(has, out, torch.zeros_like(out))
    elif how == "last":
        pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
        idx = torch.where(m, pos, torch.full_like(pos, -1)).amax(1).clamp_min(0)
        out = xf[torch.arange(xf.shape[0], device=xf.device), idx.to(xf.device)]
        out = torch.where(has, out, torch.zeros_like(out))
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    return out


class _PoolHook(ProjectHook):
    """Pools one site's activation under the current batch's token masks, once per (pooling, positions) variant."""

    def __init__(self, where: str, variants: Sequence[tuple[str, str]], state: dict[str, Any]) -> None:
        self.where, self.variants, self.state = where, list(variants), state
        self.value: list[torch.Tensor] | None = None

    def _take(self, x: torch.Tensor) -> None:
        masks = self.state["masks"]
        self.value = [pool(x, masks[positions], how).cpu() for how, positions in self.variants]

    def pre(self, module: nn.Module, args: tuple) -> None:
        self._take(args[0])

    def post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._take(output[0] if isinstance(output, tuple) else output)


def _expected_meta(model: nn.Module, concepts: ConceptSet, sites: Sequence[UnitSite],
                   pooling: str, positions: str, layout: str = "auto") -> dict[str, Any]:
    extra = {} if layout == "auto" else {"layout": layout}  # recordings made before layouts stay resumable
    return {**extra,
        "version": 1,
        "n_rows": len(concepts),
        "pooling": pooling,
        "positions": positions,
        "concept_hash": concepts.content_hash(),
        "model_fingerprint": model_fingerprint(model),
        "sites": [asdict(s) for s in sites],
        "labels": [int(v) for v in concepts.labels],
        "dtype": "float16",
    }


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / META)


def _prepare(directory: Path, expected: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Create the folder's files, or check an existing one; returns (meta, header offsets)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / META
    sites = expected["sites"]
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        same = {k: meta.get(k) for k in expected} == expected
        if not same:
            raise RecordingError(
                f"{directory} holds a different recording (model, concepts, sites, pooling or positions "
                "differ); use another folder or delete it")
    else:
        meta = dict(expected, rows_done=0, empty_rows=0, site_rows=[0] * len(sites))
        for i, s in enumerate(sites):
            mm = np.lib.format.open_memmap(directory / _site_file(i), mode="w+", dtype=np.float16,
                                           shape=(expected["n_rows"], s["size"]))
            del mm
        _write_meta(directory, meta)
    offsets = [int(np.load(directory / _site_file(i), mmap_mode="r").offset) for i in range(len(sites))]
    return meta, offsets


def _image_groups(rows: Sequence[Any]) -> list[list[int]]:
    """Indices of a batch split into rows with images and rows without (one group when not mixed)."""
    with_images = [j for j, r in enumerate(rows) if r.images]
    without = [j for j, r in enumerate(rows) if not r.images]
    return [g for g in (with_images, without) if g]


def _skip_logits(model: nn.Module) -> dict[str, Any]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it: the recording needs no logits, and a large
    vocabulary's output layer over every token is most of a small model's cost (Gemma 3: 262k words)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def record_activations(model: nn.Module, processor: Any, concepts: ConceptSet, sites: Sequence[UnitSite],
                       directory: str | Path, *, pooling: str = "mean", positions: str = "all",
                       batch_size: int = 8, progress: bool = True, layout: str = "auto") -> Recording:
    """Run forward passes over ``concepts`` and write each site's pooled units to ``directory``.

    Resumes a partial recording of the same model, concepts, sites and settings. ``layout`` is how rows
    become text (:data:`safety_glasses.inputs.LAYOUTS`; rows with an empty prompt are raw text).

    Example:
        >>> sites = resolve_units(model, "act")
        >>> rec = record_activations(model, processor, concepts, sites, "runs/rec", batch_size=4)
        >>> rec.matrix(sites[0].module_name).shape[0] == len(concepts)
        True
    """
    return record_variants(model, processor, concepts, sites, [(pooling, positions, directory)],
                           batch_size=batch_size, progress=progress, layout=layout)[0]


@torch.no_grad()
def record_variants(model: nn.Module, processor: Any, concepts: ConceptSet, sites: Sequence[UnitSite],
                    variants: Sequence[tuple[str, str, str | Path]], *, batch_size: int = 8, progress: bool = True,
                    layout: str = "auto") -> list[Recording]:
    """Several recordings from one set of forward passes: one per ``(pooling, positions, directory)``.

    Each directory holds an ordinary recording, as :func:`record_activations` writes it (that function is
    this one with a single variant); the forward pass, the costly part, runs once per batch for all of
    them. A killed run resumes where every variant got to (from the start when they disagree).

    Example:
        >>> recs = record_variants(model, processor, concepts, sites,
        ...                        [("mean", "response", "rec/mean"), ("max", "all", "rec/max-all")])
        >>> [r.meta["pooling"] for r in recs]
        ['mean', 'max']
    """
    if not variants:
        raise ValueError("record_variants needs at least one (pooling, positions, directory)")
    for pooling, positions, _ in variants:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if positions not in RECORD_POSITIONS:
            raise ValueError(f"positions must be one of {RECORD_POSITIONS}, got {positions!r}")
    dirs = [Path(d) for _, _, d in variants]
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise ValueError("each recording variant needs its own directory")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prepared = [_prepare(d, _expected_meta(model, concepts, sites, pooling, positions, layout))
                for (pooling, positions, _), d in zip(variants, dirs)]
    metas = [m for m, _ in prepared]
    if len({m["rows_done"] for m in metas}) > 1:  # killed between two variants' bookkeeping: start again
        for d, m in zip(dirs, metas):
            m.update(rows_done=0, empty_rows=0, site_rows=[0] * len(sites))
            _write_meta(d, m)
    start, n = metas[0]["rows_done"], len(concepts)
    modules = dict(model.named_modules())
    state: dict[str, Any] = {}
    pairs = [(pooling, positions) for pooling, positions, _ in variants]
    hooks = [_PoolHook(s.where, pairs, state) for s in sites]
    handles = []
    files = [[open(d / _site_file(i), "r+b") for i in range(len(sites))] for d in dirs]
    was_training = model.training
    model.eval()
    skip_logits = _skip_logits(model)
    try:
        for s, h in zip(sites, hooks):
            handles.append(register_site_hook(modules[s.module_name], s.where, h.pre if s.where == "input" else h.post))
        bar = tqdm(total=n, initial=start, desc="recording", unit="row", disable=not progress)
        site_rows = [list(m.get("site_rows") or [0] * len(sites)) for m in metas]
        for lo in range(start, n, batch_size):
            rows = concepts.rows[lo:lo + batch_size]
            values = [[np.full((len(rows), s.size), np.nan, dtype=np.float16) for s in sites] for _ in variants]
            empty = [0] * len(variants)
            for group in _image_groups(rows):
                part = [rows[j] for j in group]
                batch = encode_rows(processor, [r.prompt for r in part], [r.load_images() for r in part],
                                    [r.response for r in part], model_config=model.config, layout=layout)
                attn = batch.attention_mask.bool()
                state["masks"] = {pos: batch.masks[pos] & attn for pos in {p for _, p in pairs}}
                model(**to_model_inputs(batch.inputs, model), **skip_logits)
                for v, (_, pos) in enumerate(pairs):
                    empty[v] += int((~state["masks"][pos].any(1)).sum())
                for i, (s, h) in enumerate(zip(sites, hooks)):
                    if h.value is None:  # the site did not run on these rows (e.g. no image)
                        continue
                    for v, value in enumerate(h.value):
                        if value.shape != (len(part), s.size):
                            raise RecordingError(f"site {s.module_name} gave {tuple(value.shape)}, "
                                                 f"expected {(len(part), s.size)}")
                        if bool(torch.isnan(value).any()):
                            bad = part[int(torch.isnan(value).any(1).nonzero()[0, 0])].id
                            raise RecordingError(f"site {s.module_name} produced NaN activations on row {bad!r} "
                                                 "(check the model's weights and dtype)")
                        values[v][i][group] = value.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).numpy()
                        site_rows[v][i] += len(part)
                    h.value = None
            for v, (d, (_, offsets)) in enumerate(zip(dirs, prepared)):
                for i, s in enumerate(sites):
                    files[v][i].seek(offsets[i] + lo * s.size * 2)
                    files[v][i].write(np.ascontiguousarray(values[v][i]).tobytes())
                    files[v][i].flush()
                metas[v]["rows_done"] = lo + len(rows)
                metas[v]["empty_rows"] = int(metas[v].get("empty_rows", 0)) + empty[v]
                metas[v]["site_rows"] = site_rows[v]
                _write_meta(d, metas[v])
            bar.update(len(rows))
        bar.close()
    finally:
        for h in handles:
            h.remove()
        for fs in files:
            for f in fs:
                f.close()
        model.train(was_training)
    return [Recording.open(d) for d in dirs]
