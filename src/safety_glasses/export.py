"""Deploying glasses without this project: a merged checkpoint, or a PEFT IA3 adapter."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .glasses import Glasses

EXPORT_FORMATS = ("merged", "peft-ia3")
PROVENANCE = "safety_glasses_export.json"


def _provenance(glasses: Glasses, fmt: str) -> dict[str, Any]:
    return {"format": fmt, "strategy": glasses.config.strategy, "unit_kind": glasses.config.unit_kind,
            "n_experts": glasses.n_experts, "base_model": glasses.config.base_model,
            "concepts": glasses.config.concepts}


def check_export_dir(out_dir: str | Path) -> Path:
    """The export folder, refused unless it is new, empty or a previous export (which is replaced).

    Example:
        >>> check_export_dir("runs/new-export")  # doctest: +SKIP
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise ValueError(f"--out {out} exists and is not an export of this project; choose a new folder")
    return out


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """Write into a temporary sibling folder and move it into place only when everything is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_merged(model: nn.Module, processor: Any, glasses: Glasses, out_dir: str | Path) -> Path:
    """Fold the glasses into ``model``'s weights and save a standalone checkpoint.

    The folder loads with plain transformers (and so vLLM): no dependency on this project.
    ``model`` is modified in place. The folder appears only once complete.

    Example:
        >>> export_merged(model, processor, glasses, "llava-sgm")
        >>> AutoModelForImageTextToText.from_pretrained("llava-sgm")
    """
    out = check_export_dir(out_dir)
    glasses.fold_into(model)
    with _staged(out) as tmp:
        model.save_pretrained(tmp)
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(tmp)
        (tmp / PROVENANCE).write_text(json.dumps(_provenance(glasses, "merged"), indent=2))
    return out


def export_peft_ia3(model: nn.Module, glasses: Glasses, out_dir: str | Path) -> Path:
    """Write a PEFT IA3 adapter whose scaling vectors are the glasses' alphas.

    ``act`` sites (inputs of ``down_proj``) become IA3 feed-forward (input) scalings; ``gate``,
    ``up`` and ``down`` sites (module outputs) become IA3 output scalings. Needs ``peft``
    (``pip install 'safety-glasses-fggm[peft]'``). ``model`` is left unchanged.

    Example:
        >>> export_peft_ia3(model, glasses, "llava-sgm-ia3")
        >>> PeftModel.from_pretrained(base_model, "llava-sgm-ia3")
    """
    try:
        from peft import IA3Config, get_peft_model
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("--format peft-ia3 needs peft: pip install 'safety-glasses-fggm[peft]'") from e
    glasses.check_compatible(model)
    sites = glasses.config.sites
    kinds = {type(dict(model.named_modules())[s.module_name]).__name__ for s in sites}
    if not kinds <= {"Linear"}:
        raise ValueError(f"peft-ia3 export supports nn.Linear sites only, these are {sorted(kinds)}")
    targets = [s.module_name for s in sites]
    ff = [s.module_name for s in sites if s.where == "input"]
    config = IA3Config(target_modules=targets, feedforward_modules=ff, init_ia3_weights=True)
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    if name_or_path:
        config.base_model_name_or_path = name_or_path
    peft_model = get_peft_model(model, config)
    try:
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for s in sites:
                key = next((k for k in params if k.endswith(f"{s.module_name}.ia3_l.default")), None)
                if key is None:
                    raise ValueError(f"PEFT did not wrap {s.module_name}")
                p = params[key]
                p.copy_(glasses.alphas[s.module_name].to(p.device, p.dtype).reshape(p.shape))
        out = check_export_dir(out_dir)
        with _staged(out) as tmp:
            peft_model.save_pretrained(tmp)
            (tmp / PROVENANCE).write_text(json.dumps(_provenance(glasses, "peft-ia3"), indent=2))
    finally:
        peft_model.unload()  # restore the plain modules
    return out
