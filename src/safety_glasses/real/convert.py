"""GGUF -> a plain transformers folder (config, float safetensors, tokenizer), written atomically.

transformers reads GGUF checkpoints through the ``gguf`` package and dequantises every tensor to float
(``from_pretrained(folder, gguf_file=...)``), but refuses to ``save_pretrained`` a model loaded that way.
The model is therefore rebuilt from its config without the quantisation entry, the dequantised state
dict loaded into it, and the result saved as safetensors; reloading that folder takes seconds instead
of a minute. The weights are the quantised checkpoint's values dequantised to float: real pretrained
weights, not bit-identical to the original float release.

Everything is written to a temporary folder beside the target and renamed into place at the end, so a
failure (a truncated or corrupt GGUF, an unsupported architecture, a full disk) leaves no half-written
folder behind.

Example:
    >>> convert_gguf("tiny.gguf", "cache/tiny")  # doctest: +SKIP
    PosixPath('cache/tiny')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["GGUFError", "MANIFEST_NAME", "check_gguf", "convert_gguf", "folder_digest", "read_manifest"]

MANIFEST_NAME = "real_model.json"
"""The provenance file written into every converted folder."""


class GGUFError(ValueError):
    """A GGUF file that cannot be read or converted (truncated, corrupt, unsupported)."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Open a GGUF file with the ``gguf`` package and return a few facts; :class:`GGUFError` if unreadable.

    A truncated file fails here (its tensor data runs past the end of the file), before any conversion.

    Example:
        >>> check_gguf("model.gguf")["architecture"]  # doctest: +SKIP
        'llama'
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    try:
        import gguf
    except ImportError as exc:
        raise GGUFError("reading GGUF files needs the gguf package: pip install 'safety-glasses-fggm[real-models]'") from exc
    try:
        reader = gguf.GGUFReader(str(path))
        arch_field = reader.fields.get("general.architecture")
        architecture = str(arch_field.contents()) if arch_field is not None else None
        n_tensors = len(reader.tensors)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the user
        raise GGUFError(f"{path.name} is not a readable GGUF file (truncated or corrupt?): {_one_line(exc)}") from None
    if architecture is None:
        raise GGUFError(f"{path.name} has no general.architecture entry; not a model GGUF")
    if end > path.stat().st_size:
        raise GGUFError(f"{path.name} is truncated: tensor data ends at byte {end}, the file has {path.stat().st_size}")
    return {"architecture": architecture, "n_tensors": n_tensors, "bytes": path.stat().st_size}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: str | Path) -> dict[str, Any]:
    """sha256 of every ``*.safetensors`` file in ``folder`` and one digest over them (sorted by name).

    Example:
        >>> folder_digest("cache/smollm2-135m")["digest"][:12]  # doctest: +SKIP
        '3f1c0e9d8a2b'
    """
    folder = Path(folder)
    files = {p.name: _sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    if not files:
        raise GGUFError(f"{folder} holds no safetensors weights")
    overall = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in files.items()).encode()).hexdigest()
    return {"files": files, "digest": overall}


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``real_model.json`` of a converted folder, or None when there is none (or it is unreadable).

    Example:
        >>> read_manifest("/nonexistent") is None
        True
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load_dequantised(folder: Path, filename: str, dtype: Any) -> tuple[Any, Any]:
    """The model (rebuilt without the GGUF quantisation entry) and tokenizer of one GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
    state = loaded.state_dict()
    for cfg in (config, loaded.config):
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise GGUFError(f"the rebuilt model does not match the GGUF tensors (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]})")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    del loaded
    return model.eval(), tokenizer


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32",
                 manifest: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Convert one GGUF file into a transformers folder at ``out_dir`` (atomically) and return its path.

    ``dtype`` is the float type the dequantised weights are stored in (``float32`` default, or
    ``bfloat16``/``float16``). ``manifest`` entries are added to the folder's ``real_model.json``, which
    also records the GGUF's sha256, the weights' sha256 and the library versions. An existing
    ``out_dir`` is replaced only with ``overwrite=True``. Raises :class:`GGUFError` in one line on a
    corrupt, truncated or unsupported file; nothing is left at ``out_dir`` then.

    Example:
        >>> convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smollm2")  # doctest: +SKIP
        PosixPath('/tmp/smollm2')
    """
    import torch
    import transformers

    src, out = Path(gguf_path), Path(out_dir)
    facts = check_gguf(src)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise GGUFError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    if out.exists() and not overwrite:
        raise GGUFError(f"{out} already exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache folder is an ordinary one
    try:
        try:
            model, tokenizer = _load_dequantised(src.parent, src.name, dtypes[dtype])
        except GGUFError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers' errors vary; one line for the user
            raise GGUFError(f"cannot convert {src.name} ({facts['architecture']}): {_one_line(exc)}") from None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        import gguf

        record: dict[str, Any] = {
            "format": "safety_glasses.real_model", "format_version": 1,
            "source": {"gguf": src.name, "sha256": _sha256(src), "bytes": facts["bytes"]},
            "architecture": facts["architecture"], "model_class": type(model).__name__,
            "dequantised_to": dtype,
            "note": "a quantised GGUF checkpoint dequantised to float: real pretrained weights, not bit-identical "
                    "to the original float release",
            "weights": folder_digest(tmp),
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        record.update(manifest or {})
        (tmp / MANIFEST_NAME).write_text(json.dumps(record, indent=2))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _dist_version(name: str) -> str | None:
    import importlib.metadata as metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
