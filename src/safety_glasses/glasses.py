"""The glasses artefact: per-unit alphas for the language tower's MLP units; wear, fold, save.

Files (``save_pretrained``): ``glasses_config.json`` (everything needed to check and reproduce)
and ``glasses.safetensors`` (``alpha.<module>`` and ``auroc.<module>`` float32 vectors). No pickle.

Example:
    >>> glasses = fit_glasses(model, processor, "concepts.jsonl")
    >>> glasses.save_pretrained("glasses/")
    >>> with Glasses.from_pretrained("glasses/").apply(model):
    ...     out = model.generate(**inputs)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from .hooks import WEAR_POSITIONS, scaled
from .models import UnitSite, fold_site, model_identity
from .strategies import compute_alphas, normalize_selection

CONFIG_NAME = "glasses_config.json"
WEIGHTS_NAME = "glasses.safetensors"
FORMAT_VERSION = 1


class GlassesMismatchError(ValueError):
    """The glasses were fitted on a model whose units differ from the one they are applied to."""


class GlassesError(ValueError):
    """Glasses that cannot be used: unreadable files, or alphas that are not finite and >= 0."""


def check_alphas(alphas: dict[str, torch.Tensor], aurocs: dict[str, torch.Tensor] | None = None) -> None:
    """Raise :class:`GlassesError` unless every alpha is finite and >= 0 and every AUROC finite in [0, 1].

    NaN or infinite alphas make a model emit empty replies (which a judge then calls safe); negative
    alphas flip units. Alphas above 1 are allowed (the amplifying ``clamp=False`` variant).

    Example:
        >>> check_alphas({"m": torch.tensor([0.5, float("nan")])})
        Traceback (most recent call last):
        ...
        safety_glasses.glasses.GlassesError: alpha of m[1] is nan: alphas must be finite and >= 0
    """
    for name, a in alphas.items():
        bad = ~torch.isfinite(a) | (a < 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise GlassesError(f"alpha of {name}[{i}] is {float(a.reshape(-1)[i]):g}: alphas must be finite and >= 0")
    for name, v in (aurocs or {}).items():
        bad = ~torch.isfinite(v) | (v < 0) | (v > 1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise GlassesError(f"AUROC of {name}[{i}] is {float(v.reshape(-1)[i]):g}: AUROCs must be in [0, 1]")


@dataclass
class GlassesConfig:
    """Everything about how the glasses were made, saved as ``glasses_config.json``."""

    strategy: str
    sites: list[UnitSite]
    unit_kind: str = "act"
    threshold: float = 0.5
    top_k: int | None = None
    damp_alpha: float = 0.5
    seed: int = 0
    clamp: bool = True
    selection: str = "top-k"
    fdr: float | None = None
    pooling: str = "mean"
    positions: str = "all"
    layers: list[int] | None = None
    layout: str = "auto"
    base_model: dict[str, Any] = field(default_factory=dict)
    concepts: dict[str, Any] = field(default_factory=dict)
    transformers_version: str = transformers.__version__
    torch_version: str = torch.__version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sites"] = [asdict(s) for s in self.sites]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GlassesConfig":
        d = dict(d)
        d.pop("expert_counts", None)
        d.pop("n_experts", None)
        d["sites"] = [UnitSite(**s) for s in d["sites"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class Glasses:
    """Per-unit scale factors for the decoder MLP units of a model's language tower.

    ``alphas`` maps each module name to its alpha vector, ``aurocs`` to its AUROC vector.

    Example:
        >>> g = Glasses.from_pretrained("glasses/")
        >>> g.n_experts, g.summary()[0]["experts"]
        (412, 13)
    """

    def __init__(self, config: GlassesConfig, alphas: dict[str, torch.Tensor],
                 aurocs: dict[str, torch.Tensor] | None = None) -> None:
        names = [s.module_name for s in config.sites]
        if set(alphas) != set(names):
            raise ValueError("alphas must have exactly one vector per site of the config")
        for s in config.sites:
            if alphas[s.module_name].numel() != s.size:
                raise ValueError(f"alpha of {s.module_name} has {alphas[s.module_name].numel()} values, site has {s.size}")
        self.config = config
        self.alphas = {n: alphas[n].detach().float().cpu().reshape(-1) for n in names}
        self.aurocs = {n: aurocs[n].detach().float().cpu().reshape(-1) for n in names} if aurocs else {}
        check_alphas(self.alphas, self.aurocs)

    # ---------------------------------------------------------------- inspection
    @property
    def sites(self) -> list[UnitSite]:
        return list(self.config.sites)

    @property
    def n_experts(self) -> int:
        """Number of units the glasses change (alpha != 1: dampened, or amplified with ``clamp=False``)."""
        return int(sum(int((a != 1.0).sum()) for a in self.alphas.values()))

    def summary(self) -> list[dict[str, Any]]:
        """One row per site: layer, module, units, experts (alpha != 1), min and mean alpha, max AUROC.

        Example:
            >>> glasses.summary()[0]["experts"]
            13
        """
        rows = []
        for s in self.config.sites:
            a = self.alphas[s.module_name]
            au = self.aurocs.get(s.module_name)
            rows.append({
                "layer": s.layer, "module": s.module_name, "units": s.size,
                "experts": int((a != 1.0).sum()), "min_alpha": float(a.min()), "mean_alpha": float(a.mean()),
                "max_auroc": float(au.max()) if au is not None and au.numel() else None,
            })
        return rows

    def expert_counts(self) -> dict[str, int]:
        """Expert count per decoder layer index (as strings, JSON-friendly)."""
        return {str(r["layer"]): r["experts"] for r in self.summary()}

    def derive(self, strategy: str, *, threshold: float | None = None, top_k: int | None = None,
               damp_alpha: float | None = None, seed: int | None = None, clamp: bool | None = None,
               selection: str | None = None, fdr: float | None = None) -> "Glasses":
        """New glasses from the same AUROCs with another strategy (no new recording).

        ``fdr`` (significant experts only, see :mod:`safety_glasses.strategies`) is not inherited: pass it
        for each derived pair of glasses that should use it.

        Example:
            >>> control = glasses.derive("random", seed=1)
            >>> control.n_experts == glasses.n_experts
            True
            >>> strict = glasses.derive("aura", fdr=0.05)  # only units significantly above AUROC 0.5
        """
        if not self.aurocs:
            raise ValueError("these glasses carry no AUROC vectors to derive from")
        c = self.config
        cfg = GlassesConfig(**{**{k: getattr(c, k) for k in c.__dataclass_fields__},
                               "strategy": strategy,
                               "threshold": c.threshold if threshold is None else threshold,
                               "top_k": top_k, "damp_alpha": c.damp_alpha if damp_alpha is None else damp_alpha,
                               "seed": c.seed if seed is None else seed,
                               "clamp": c.clamp if clamp is None else clamp,
                               "selection": c.selection if selection is None else normalize_selection(selection),
                               "fdr": fdr})
        if strategy == "random" and top_k is None and c.strategy == "aura" and c.top_k is not None:
            cfg.top_k = c.top_k
        alphas = compute_alphas(self.aurocs, strategy, threshold=cfg.threshold, top_k=cfg.top_k,
                                damp_alpha=cfg.damp_alpha, seed=cfg.seed, clamp=cfg.clamp, selection=cfg.selection,
                                fdr=cfg.fdr, **class_counts(c.concepts))
        return Glasses(cfg, alphas, self.aurocs)

    # ---------------------------------------------------------------- checks
    def check_compatible(self, model: nn.Module) -> None:
        """Raise :class:`GlassesMismatchError` if ``model`` lacks a site or a site's size differs.

        Nothing is changed on the model.
        """
        modules = dict(model.named_modules())
        problems = []
        for s in self.config.sites:
            m = modules.get(s.module_name)
            if m is None:
                problems.append(f"missing module {s.module_name}")
                continue
            size = _site_width(m, s.where)
            if size is not None and size != s.size:
                problems.append(f"{s.module_name} has {size} units, glasses expect {s.size}")
        if not problems:
            ident = model_identity(model)
            base = self.config.base_model
            if base and (ident.get("class") != base.get("class") or ident.get("fingerprint") != base.get("fingerprint")):
                warnings.warn(f"glasses were fitted on {base.get('class')} ({base.get('fingerprint')}); applying them to "
                              f"{ident.get('class')} ({ident.get('fingerprint')}) whose unit names and sizes match",
                              UserWarning, stacklevel=3)
            return
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            base = self.config.base_model.get("class", "?")
            raise GlassesMismatchError(
                f"glasses (fitted on {base}) do not fit {type(model).__name__}: {problems[0]}{more}")

    # ---------------------------------------------------------------- wearing
    @contextmanager
    def apply(self, model: nn.Module, positions: str = "all") -> Iterator["Glasses"]:
        """Wear the glasses: hooks scale the units while inside the block, removed on exit.

        ``positions``: ``"all"``, ``"prompt"`` (prefill only) or ``"generated"`` (decode steps with
        a KV cache only); see :mod:`safety_glasses.hooks`.

        Example:
            >>> with glasses.apply(model):
            ...     ids = model.generate(**inputs, max_new_tokens=20)
        """
        if positions not in WEAR_POSITIONS:
            raise ValueError(f"positions must be one of {WEAR_POSITIONS}, got {positions!r}")
        self.check_compatible(model)
        with scaled(model, self.config.sites, self.alphas, positions):
            yield self

    @torch.no_grad()
    def fold_into(self, model: nn.Module) -> nn.Module:
        """Multiply the alphas into the weights once (exact, in float32, cast back); returns ``model``.

        Example:
            >>> glasses.fold_into(model)  # the model now behaves as if wearing the glasses
        """
        self.check_compatible(model)
        for s in self.config.sites:
            fold_site(model, s, self.alphas[s.module_name])
        return model

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``glasses_config.json`` and ``glasses.safetensors`` atomically (temp names, then rename).

        Example:
            >>> glasses.save_pretrained("glasses/")
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"alpha.{n}": a.contiguous() for n, a in self.alphas.items()}
        tensors.update({f"auroc.{n}": a.contiguous() for n, a in self.aurocs.items()})
        cfg = self.config.to_dict()
        cfg["expert_counts"] = self.expert_counts()
        cfg["n_experts"] = self.n_experts
        meta = {"format": "safety_glasses", "format_version": str(FORMAT_VERSION)}
        fd, tmp_w = tempfile.mkstemp(dir=directory, prefix=".glasses-", suffix=".tmp")
        os.close(fd)
        fd, tmp_c = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp_w, metadata=meta)
            Path(tmp_c).write_text(json.dumps(cfg, indent=2))
            os.replace(tmp_w, directory / WEIGHTS_NAME)
            os.replace(tmp_c, directory / CONFIG_NAME)
        finally:
            for t in (tmp_w, tmp_c):
                if os.path.exists(t):
                    os.remove(t)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Glasses":
        """Load glasses saved by :meth:`save_pretrained`.

        Example:
            >>> g = Glasses.from_pretrained("glasses/")
        """
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(f"{directory} is not a glasses folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            cfg = GlassesConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GlassesError(f"{cfg_path} is not valid JSON ({type(err).__name__}): truncated or corrupt") from None
        except (KeyError, TypeError, ValueError) as err:
            raise GlassesError(f"{cfg_path} is not a glasses config ({type(err).__name__}: {err})") from None
        try:
            tensors = load_file(str(w_path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type on corrupt files
            raise GlassesError(f"{w_path} is unreadable, truncated or corrupt ({type(err).__name__})") from None
        alphas = {n[len("alpha."):]: t for n, t in tensors.items() if n.startswith("alpha.")}
        aurocs = {n[len("auroc."):]: t for n, t in tensors.items() if n.startswith("auroc.")}
        try:
            return cls(cfg, alphas, aurocs or None)
        except ValueError as err:
            raise GlassesError(f"glasses {directory}: {err}") from None

    def __repr__(self) -> str:
        return (f"Glasses(strategy={self.config.strategy!r}, sites={len(self.config.sites)}, "
                f"units={sum(s.size for s in self.config.sites)}, experts={self.n_experts})")


def _site_width(module: nn.Module, where: str) -> int | None:
    """Width of a site's scaled dimension from the module's weight (Linear or GPT-2 Conv1D)."""
    w = getattr(module, "weight", None)
    if w is None or w.dim() != 2:
        return None
    is_conv1d = type(module).__name__ == "Conv1D"
    if where == "input":
        return int(w.shape[0] if is_conv1d else w.shape[1])
    return int(w.shape[1] if is_conv1d else w.shape[0])


def class_counts(concepts: dict[str, Any]) -> dict[str, int | None]:
    """``{"n_pos", "n_neg"}`` from a glasses config's ``concepts`` entry (None where it was not recorded).

    Example:
        >>> class_counts({"counts": {"toxic": 19, "non-toxic": 158}})
        {'n_pos': 19, 'n_neg': 158}
    """
    counts = (concepts or {}).get("counts") or {}
    return {"n_pos": counts.get("toxic"), "n_neg": counts.get("non-toxic")}


def new_glasses(model: nn.Module, sites: Sequence[UnitSite], aurocs: dict[str, torch.Tensor], *,
                strategy: str = "aura", threshold: float = 0.5, top_k: int | None = None,
                damp_alpha: float = 0.5, seed: int = 0, clamp: bool = True, selection: str = "top-k",
                fdr: float | None = None, **config: Any) -> Glasses:
    """Glasses for ``model`` from per-site AUROC vectors (the last step of :func:`fit_glasses`).

    ``fdr`` needs ``concepts={"counts": {"toxic": n_pos, "non-toxic": n_neg}, ...}`` among ``config``.

    Example:
        >>> g = new_glasses(model, sites, aurocs, concepts={"counts": {"toxic": 40, "non-toxic": 300}}, fdr=0.05)  # doctest: +SKIP
    """
    alphas = compute_alphas(aurocs, strategy, threshold=threshold, top_k=top_k, damp_alpha=damp_alpha, seed=seed,
                            clamp=clamp, selection=selection, fdr=fdr, **class_counts(config.get("concepts", {})))
    cfg = GlassesConfig(strategy=strategy, sites=list(sites), unit_kind=sites[0].kind if sites else "act",
                        threshold=threshold, top_k=top_k, damp_alpha=damp_alpha, seed=seed, clamp=clamp,
                        selection=normalize_selection(selection), fdr=fdr, base_model=model_identity(model), **config)
    return Glasses(cfg, alphas, aurocs)

