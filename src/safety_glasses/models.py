"""Load a vision-language model (or a plain causal LM) and resolve the MLP units of its language decoder.

A *unit site* is one module whose input or output last dimension holds the units of one decoder layer:

* ``act``  -- the input of ``down_proj`` (``act_fn(gate_proj(x)) * up_proj(x)``, the neuron proper);
* ``gate`` / ``up`` / ``down`` -- the outputs of ``gate_proj`` / ``up_proj`` / ``down_proj``.

GPT-2 style MLPs (``c_fc`` -> act -> ``c_proj``, Conv1D) map ``act`` to the input of ``c_proj``, ``up`` to
the output of ``c_fc`` and ``down`` to the output of ``c_proj``; they have no ``gate``. OPT/BART/Kosmos-2 style
MLPs (``fc1`` -> act -> ``fc2``, also directly on the decoder layer) map the same way, as do T5's
``wi``/``wi_0``/``wi_1``/``wo``. The MLP and the decoder are found by structure (a down projection fed by
an up projection; ``get_decoder()`` followed down), so AyaVision, Cohere2Vision, Kosmos-2, BLIP-2 /
InstructBLIP (OPT), Llama-4 (dense layers) and Florence-2 (its BART decoder) resolve like LLaVA; a
mixture-of-experts MLP is refused with a message. Only the language tower is ever selected.

Example:
    >>> from safety_glasses.testing import tiny_vlm
    >>> model, _ = tiny_vlm("llava")
    >>> [s.module_name for s in resolve_units(model, "act")]
    ['model.language_model.layers.0.mlp.down_proj', 'model.language_model.layers.1.mlp.down_proj']
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "ModelLoadError",
    "UnitResolutionError",
    "UnitSite",
    "UNIT_KINDS",
    "load_vlm",
    "load_processor",
    "resolve_source",
    "build_processor",
    "decoder_layers",
    "parse_layers",
    "resolve_units",
    "fold_site",
    "model_fingerprint",
    "model_identity",
]

UnitKind = Literal["act", "gate", "up", "down"]
UNIT_KINDS: tuple[str, ...] = ("act", "gate", "up", "down")


class ModelLoadError(ValueError):
    """A model or its processor could not be loaded; the message names everything that was tried."""


class UnitResolutionError(ValueError):
    """The decoder MLP units could not be found, or a selector matched nothing."""


@dataclass(frozen=True)
class UnitSite:
    """One module whose input (``where="input"``) or output (``"output"``) last dim holds ``size`` units.

    ``"input"`` sites are scaled with a forward pre-hook on the first positional input; ``"output"`` sites
    with a forward hook on the output.

    Example:
        >>> UnitSite("model.layers.0.mlp.down_proj", 0, "act", 64, "input").where
        'input'
    """

    module_name: str
    layer: int
    kind: UnitKind
    size: int
    where: Literal["input", "output"]

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {self.kind!r}")
        if self.where not in ("input", "output"):
            raise ValueError(f"where must be 'input' or 'output', got {self.where!r}")
        if self.size <= 0 or self.layer < 0:
            raise ValueError(f"size must be positive and layer non-negative, got {self.size}, {self.layer}")


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}

_AUTO_MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, auto")
    return _DTYPES[key]


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_vlm(
    path_or_id: str | Path,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load a model and its processor from a local folder, a hub id or a prepared real-model name
    (``smollm2-135m``, ``gemma3-270m``: see :func:`resolve_source`) through transformers' Auto classes.

    Tries ``AutoModelForImageTextToText``, ``AutoModelForVision2Seq`` (when this transformers has it) and
    ``AutoModelForCausalLM`` in that order; the processor comes from :func:`load_processor`. ``dtype`` is
    ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"``, a ``torch.dtype`` or None (transformers'
    default). The model is returned in eval mode. Raises :class:`ModelLoadError` naming what was tried.

    Example:
        >>> model, processor = load_vlm("llava-hf/llava-1.5-7b-hf", dtype="bfloat16")  # doctest: +SKIP
    """
    import transformers
    from transformers import AutoConfig

    source = resolve_source(path_or_id)
    torch_dtype = _parse_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - re-raised as one clear error
        raise ModelLoadError(f"cannot read a model config from {source!r}: {_short(exc)}") from exc
    tried: list[str] = []
    model = None
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    for name in _AUTO_MODEL_CLASSES:
        auto_cls = getattr(transformers, name, None)
        if auto_cls is None:
            tried.append(f"{name} (not in transformers {transformers.__version__})")
            continue
        if type(config) not in auto_cls._model_mapping:
            tried.append(f"{name} (no mapping for {type(config).__name__})")
            continue
        try:
            model = auto_cls.from_pretrained(source, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            tried.append(f"{name} ({_short(exc)})")
    if model is None:
        raise ModelLoadError(f"cannot load a model from {source!r}; tried: " + "; ".join(tried))
    model.eval()
    return model, load_processor(source, config)


def resolve_source(path_or_id: str | Path) -> str:
    """What :func:`load_vlm` loads for ``path_or_id``: a prepared real-model name (``sgm models list``)
    becomes its cache folder; folders and hub ids are returned unchanged.

    Example:
        >>> resolve_source("llava-hf/llava-1.5-7b-hf")
        'llava-hf/llava-1.5-7b-hf'
    """
    from .real.cache import resolve_model

    try:
        return resolve_model(path_or_id)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc


def load_processor(path_or_id: str | Path, config: Any | None = None) -> Any:
    """Load the processor of a model folder or hub id, degrading gracefully when parts are unavailable.

    Order: ``AutoProcessor``; else the model's own processor class rebuilt from ``AutoTokenizer`` +
    ``AutoImageProcessor`` with unavailable optional parts (e.g. a video processor that needs torchvision)
    left out; else a bare tokenizer when no image processor exists (text-only models). Raises
    :class:`ModelLoadError` naming what was tried.

    Example:
        >>> processor = load_processor("Qwen/Qwen2-VL-2B-Instruct")  # doctest: +SKIP
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    source = str(path_or_id)
    tried: list[str] = []
    try:
        return AutoProcessor.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001
        tried.append(f"AutoProcessor ({_short(exc)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001
        tried.append(f"AutoTokenizer ({_short(exc)})")
        raise ModelLoadError(f"cannot load a processor from {source!r}; tried: " + "; ".join(tried)) from exc
    try:
        image_processor = AutoImageProcessor.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001
        tried.append(f"AutoImageProcessor ({_short(exc)})")
        return tokenizer
    cls_name, init_kwargs = _processor_class_and_kwargs(source, config)
    if cls_name is not None:
        try:
            return build_processor(cls_name, tokenizer, image_processor, **init_kwargs)
        except Exception as exc:  # noqa: BLE001
            tried.append(f"{cls_name} without optional parts ({_short(exc)})")
    raise ModelLoadError(
        f"cannot build a processor for {source!r}: found a tokenizer and an image processor but no processor "
        "class that accepts them; tried: " + "; ".join(tried)
    )


def _processor_class_and_kwargs(source: str, config: Any | None) -> tuple[str | None, dict[str, Any]]:
    """The processor class named by the checkpoint (else by its model type) and its saved init kwargs."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import cached_file

    kwargs: dict[str, Any] = {}
    cls_name: str | None = None
    for fname in ("processor_config.json", "preprocessor_config.json"):
        try:
            path = cached_file(
                source,
                fname,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception:  # noqa: BLE001 - an unreadable optional file is the same as a missing one
            path = None
        if path is None:
            continue
        data = json.loads(Path(path).read_text())
        cls_name = cls_name or data.get("processor_class")
        if fname == "processor_config.json":
            kwargs = {k: v for k, v in data.items() if k != "processor_class" and not isinstance(v, dict)}
    if cls_name is None and config is not None:
        cls_name = PROCESSOR_MAPPING_NAMES.get(getattr(config, "model_type", ""), None)
    return cls_name, kwargs


def build_processor(processor_cls: str | type, tokenizer: Any, image_processor: Any, **kwargs: Any) -> Any:
    """Build a multimodal processor from a tokenizer and an image processor, leaving other parts out.

    Some processors declare a video processor that needs torchvision even for image-only use (Qwen2-VL,
    Qwen2.5-VL). This builds the processor class with every part other than the tokenizer and the image
    processor set to None; the processor then handles text and images exactly as the original does.
    The chat template is the tokenizer's unless ``chat_template`` is passed.

    Example:
        >>> proc = build_processor("Qwen2VLProcessor", tokenizer, image_processor)  # doctest: +SKIP
    """
    import transformers

    cls = getattr(transformers, processor_cls) if isinstance(processor_cls, str) else processor_cls

    class _WithoutOptionalParts(cls):  # type: ignore[misc, valid-type]
        # While constructing, every declared part is expected (None allowed); afterwards only the parts
        # present count, so that saving, printing and calling skip the missing ones.
        _present: list[str] | None = None

        @classmethod
        def get_attributes(klass) -> list[str]:
            names = list(super().get_attributes())
            return names if klass._present is None else [n for n in names if n in klass._present]

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    _WithoutOptionalParts.__name__ = cls.__name__
    _WithoutOptionalParts.__qualname__ = cls.__qualname__
    parts = {name: None for name in cls.get_attributes()}
    parts["tokenizer"] = tokenizer
    if "image_processor" in parts:
        parts["image_processor"] = image_processor
    kwargs.setdefault("chat_template", getattr(tokenizer, "chat_template", None))
    named = {
        n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD
    }
    extra = {k: v for k, v in kwargs.items() if (k in named or k == "chat_template") and k not in parts}
    processor = _WithoutOptionalParts(**parts, **extra)
    _WithoutOptionalParts._present = [n for n, v in parts.items() if v is not None]
    for name, value in parts.items():
        if value is None and name in vars(processor):
            delattr(processor, name)
    return processor


# ----------------------------------------------------------------------------------------------------------
# the language decoder and its layers
# ----------------------------------------------------------------------------------------------------------

_VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder", "vision")
_DECODER_CANDIDATES = (
    "model.language_model",
    "language_model",
    "model.text_model",
    "text_model",
    "model.decoder",
    "model",
    "transformer",
    "gpt_neox",
    "decoder",
)
_LAYER_ATTRS = ("layers", "h", "layer", "blocks", "block")
_MLP_ATTRS = ("mlp", "feed_forward", "ffn")  # the usual homes of the MLP (any sub-module is searched)
_DOWN_NAMES = ("down_proj", "c_proj", "fc2", "w2", "dense_4h_to_h", "fc_out", "wo")
_GATE_NAMES = ("gate_proj", "w1", "wi_0")
_UP_NAMES = ("up_proj", "c_fc", "fc1", "w3", "dense_h_to_4h", "fc_in", "wi_1", "wi")
_FUSED_NAMES = ("gate_up_proj",)  # Phi-3 style: gate and up in one projection


def _other_towers(model: nn.Module) -> list[str]:
    """Paths of the sub-models of other modalities, found by structure: modules whose ``config`` is one
    of the model's sub-configs other than the text one (vision tower, Q-Former, audio encoder), and
    modules attached under a vision tower's usual attribute names. Class names are not used (AyaVision's
    and Cohere2Vision's base models are called ``...VisionModel`` and hold the language model)."""
    config = getattr(model, "config", None)
    others: list[Any] = []
    if config is not None:
        try:
            text = config.get_text_config(decoder=True)
        except Exception:  # noqa: BLE001 - custom configs
            text = None
        for key in getattr(config, "sub_configs", None) or {}:
            sub = getattr(config, key, None)
            if sub is not None and sub is not text and sub is not config and "text" not in key:
                others.append(sub)
    paths = []
    for name, module in model.named_modules():
        if not name or _inside(name, paths):
            continue
        cfg = getattr(module, "config", None)
        if (cfg is not None and any(cfg is o for o in others)) or name.rsplit(".", 1)[-1] in _VISION_NAMES:
            paths.append(name)
    return paths


def _inside(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _decoder_chain(model: nn.Module) -> list[nn.Module]:
    """``model.get_decoder()``, then that module's ``get_decoder()``, ... (deepest last): a VLM's language
    model, then its decoder stack (BLIP-2's OPT, Florence-2's BART decoder)."""
    chain: list[nn.Module] = []
    current: Any = model
    for _ in range(6):
        get = getattr(current, "get_decoder", None)
        if not callable(get):
            break
        try:
            nxt = get()
        except Exception:  # noqa: BLE001 - some models raise when they have no decoder
            break
        if not isinstance(nxt, nn.Module) or nxt is current or any(nxt is c for c in chain):
            break
        chain.append(nxt)
        current = nxt
    return chain


def _projection(parent: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(parent, name, None)
        if isinstance(child, nn.Module) and isinstance(getattr(child, "weight", None), torch.Tensor) \
                and child.weight.dim() == 2:
            return name, child
    return None


def _mlp_pair(module: nn.Module) -> bool:
    """True when ``module`` holds an MLP: a down projection fed by an up (or gate, or fused) projection."""
    down = _projection(module, _DOWN_NAMES)
    if down is None:
        return False
    width = _features(down[1])[0]
    for names, factor in ((_UP_NAMES, 1), (_GATE_NAMES, 1), (_FUSED_NAMES, 2)):
        up = _projection(module, names)
        if up is not None and _features(up[1])[1] == factor * width:
            return True
    return False


def _find_mlp(layer: nn.Module) -> tuple[str, str, nn.Module] | None:
    """``(kind, relative path, module)`` of a decoder layer's MLP, breadth first (the layer itself for
    OPT/BART, ``mlp``/``ffn``/``feed_forward``/``layer.2.DenseReluDense`` elsewhere); kind ``moe`` for a
    mixture of experts (a module with ``experts``), ``dense`` otherwise; None when there is none."""
    queue: list[tuple[str, nn.Module]] = [("", layer)]
    while queue:
        path, module = queue.pop(0)
        if isinstance(getattr(module, "experts", None), (nn.Module, torch.Tensor)):
            return "moe", path, module
        if _mlp_pair(module):
            return "dense", path, module
        queue.extend((f"{path}.{n}" if path else n, c) for n, c in module.named_children())
    return None


def _layer_lists(root: nn.Module, root_path: str, towers: Sequence[str],
                 structural: bool) -> list[tuple[str, nn.ModuleList]]:
    """Non-empty ``ModuleList``s under ``root`` outside other towers whose first element holds an MLP
    (``structural``), or that sit under a usual layer attribute name (the fallback)."""
    out = []
    for name, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        full = f"{root_path}.{name}" if root_path and name else (name or root_path)
        if _inside(full, towers):
            continue
        if structural:
            if _find_mlp(module[0]) is not None:
                out.append((full, module))
        elif name.rsplit(".", 1)[-1] in _LAYER_ATTRS:
            out.append((full, module))
    return out


def _best_list(lists: list[tuple[str, nn.ModuleList]], root_path: str) -> tuple[str, nn.ModuleList] | None:
    """The decoder stack among layer lists: not an encoder's when a decoder's exists, then the shallowest."""
    if not lists:
        return None

    def rank(item: tuple[str, nn.ModuleList]) -> tuple[int, int]:
        rel = item[0][len(root_path):].lstrip(".")
        parts = rel.split(".")
        encoder = any("encoder" in p for p in parts)
        return (1 if encoder else 0, len(parts))

    return min(lists, key=rank)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The language tower's decoder layers and the module path of their ``ModuleList``.

    Resolved by structure: follow ``model.get_decoder()`` (and the returned module's own
    ``get_decoder()``) to the language decoder, then take the shallowest ``ModuleList`` under it
    whose layers hold an MLP (a down projection fed by an up projection), so layers one level below
    ``get_decoder()`` (Kosmos-2, BLIP-2, Llama-4) and the decoder of an encoder-decoder language
    model (Florence-2's BART) are found; known attribute paths and the whole model are tried next.
    Towers of other modalities (the vision tower, a Q-Former) are recognised by their sub-config,
    never by class names, and are never returned.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> prefix, layers = decoder_layers(tiny_vlm("qwen2_vl")[0])
        >>> prefix, len(layers)
        ('model.language_model.layers', 2)
    """
    towers = _other_towers(model)
    modules = dict(model.named_modules())
    roots: list[tuple[str, nn.Module]] = []
    for decoder in reversed(_decoder_chain(model)):
        path = _path_of(model, decoder)
        if path is not None and not _inside(path, towers):
            roots.append((path, decoder))
    roots += [(p, modules[p]) for p in _DECODER_CANDIDATES if p in modules and not _inside(p, towers)]
    roots.append(("", model))
    for structural in (True, False):
        for path, root in roots:
            best = _best_list(_layer_lists(root, path, towers, structural), path)
            if best is not None:
                return best
    tried = [f"{p or '<root>'}" for p, _ in roots]
    absent = [p for p in _DECODER_CANDIDATES if p not in modules]
    raise UnitResolutionError(
        f"cannot find the language decoder layers of {type(model).__name__}: no ModuleList of layers with an "
        f"MLP (or named {', '.join(_LAYER_ATTRS)}) under {', '.join(tried)}, outside the towers "
        f"{towers or 'none'}; decoder paths {', '.join(absent)} are absent"
    )


# ----------------------------------------------------------------------------------------------------------
# layer selectors
# ----------------------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)-(\d+)$")
_OPEN = re.compile(r"^(\d+)-$")
_INDEX = re.compile(r"^-?\d+$")
_SLICE = re.compile(r"^(-?\d+)?:(-?\d+)?$")


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """Turn a layer selector into a sorted list of distinct layer indices in ``[0, n_layers)``.

    ``None``, ``""`` or ``"all"``: every layer. A string is a comma-separated list of parts:

    * ``"5"`` one layer; ``"-1"`` a Python-style negative index (the last layer);
    * ``"4-7"`` an inclusive range; ``"8-"`` layer 8 to the last;
    * ``"16:"``, ``":8"``, ``"-8:"``, ``"2:-2"`` Python slices (stop exclusive, negatives from the end).

    A sequence of ints takes each as an index (negatives from the end). Indices or slice bounds outside
    ``[-n_layers, n_layers)`` (``n_layers`` allowed as a slice stop), reversed ranges and empty results
    raise ``ValueError`` naming the valid range.

    Example:
        >>> parse_layers("0,2,5-6", 8), parse_layers("-2:", 8), parse_layers(None, 3)
        ([0, 2, 5, 6], [6, 7], [0, 1, 2])
    """
    if n_layers <= 0:
        raise ValueError(f"the model has no decoder layers (n_layers={n_layers})")
    valid = f"valid layers are 0..{n_layers - 1} (or -{n_layers}..-1 from the end)"

    def norm(i: int, what: str) -> int:
        if not -n_layers <= i < n_layers:
            raise ValueError(f"layer {i} in {what!r} is out of range: {valid}")
        return i % n_layers

    if spec is None:
        return list(range(n_layers))
    chosen: set[int] = set()
    if isinstance(spec, str):
        text = spec.strip().replace(" ", "")
        if text in ("", "all"):
            return list(range(n_layers))
        for part in text.split(","):
            if m := _RANGE.match(part):
                lo, hi = norm(int(m[1]), part), norm(int(m[2]), part)
                if lo > hi:
                    raise ValueError(f"layer range {part!r} is reversed: {valid}")
                chosen.update(range(lo, hi + 1))
            elif m := _OPEN.match(part):
                chosen.update(range(norm(int(m[1]), part), n_layers))
            elif _INDEX.match(part):
                chosen.add(norm(int(part), part))
            elif m := _SLICE.match(part):
                bounds = [int(b) if b is not None else None for b in (m[1], m[2])]
                for b in bounds:
                    if b is not None and not -n_layers <= b <= n_layers:
                        raise ValueError(f"slice bound {b} in {part!r} is out of range: {valid}")
                chosen.update(range(n_layers)[slice(*bounds)])
            else:
                raise ValueError(
                    f"cannot parse layer selector part {part!r}; use e.g. '4-7', '8-', '0,2,5', '16:', '-8:'"
                )
    else:
        for i in spec:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"layer indices must be ints, got {i!r}")
            chosen.add(norm(i, str(list(spec))))
    if not chosen:
        raise ValueError(f"layer selector {spec!r} selects no layer: {valid}")
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------------------
# unit sites
# ----------------------------------------------------------------------------------------------------------


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a GPT-2 Conv1D."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnitResolutionError(f"{type(module).__name__} has no 2-D weight to hold units")
    if _is_conv1d(module):
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def _site_in_layer(layer: nn.Module, layer_path: str, index: int, kind: str) -> UnitSite:
    found = _find_mlp(layer)
    if found is None:
        raise UnitResolutionError(
            f"decoder layer {layer_path} ({type(layer).__name__}) has no MLP: no sub-module (tried the layer, "
            f"{', '.join(_MLP_ATTRS)} and the rest) with a down projection ({', '.join(_DOWN_NAMES)}) fed by an up "
            f"projection ({', '.join(_UP_NAMES + _GATE_NAMES + _FUSED_NAMES)})"
        )
    mlp_kind, rel, mlp = found
    where_mlp = f"{layer_path}.{rel}" if rel else layer_path
    if mlp_kind == "moe":
        raise UnitResolutionError(
            f"decoder layer {index} ({where_mlp}, {type(mlp).__name__}) is a mixture of experts: MoE MLPs are not "
            "supported (a unit belongs to one expert that only some tokens use); select dense layers with "
            "--layers (layers=...)"
        )
    names = {"act": _DOWN_NAMES, "down": _DOWN_NAMES, "gate": _GATE_NAMES, "up": _UP_NAMES}[kind]
    child = _projection(mlp, names)
    if child is None:
        fused = _projection(mlp, _FUSED_NAMES) is not None and kind in ("gate", "up")
        raise UnitResolutionError(
            f"no {kind!r} units in {where_mlp} ({type(mlp).__name__}); tried sub-modules {', '.join(names)}"
            + ("; this MLP has no gate" if kind == "gate" and not fused else "")
            + ("; its gate and up projections are fused (gate_up_proj): use act or down" if fused else "")
        )
    name, module = child
    fan_in, fan_out = _features(module)
    where: Literal["input", "output"] = "input" if kind == "act" else "output"
    size = fan_in if where == "input" else fan_out
    return UnitSite(f"{where_mlp}.{name}", index, kind, size, where)  # type: ignore[arg-type]


def resolve_units(
    model: nn.Module, kind: str = "act", layers: str | Sequence[int] | None = None
) -> list[UnitSite]:
    """The unit sites of the language decoder's MLPs, one per selected layer, in layer order.

    ``kind`` is ``act`` (default), ``gate``, ``up`` or ``down``; ``layers`` a selector for
    :func:`parse_layers`. Raises :class:`UnitResolutionError` naming what was tried when the architecture
    is unknown, the kind does not exist (``gate`` on GPT-2) or nothing matches.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> sites = resolve_units(tiny_vlm("gpt2")[0], "act", layers="-1")
        >>> sites[0].module_name, sites[0].size, sites[0].where
        ('transformer.h.1.mlp.c_proj', 64, 'input')
    """
    if kind not in UNIT_KINDS:
        raise UnitResolutionError(f"unknown unit kind {kind!r}; choose one of {', '.join(UNIT_KINDS)}")
    prefix, layer_list = decoder_layers(model)
    try:
        indices = parse_layers(layers, len(layer_list))
    except ValueError as exc:
        raise UnitResolutionError(f"{type(model).__name__}: {exc}") from exc
    sites = [_site_in_layer(layer_list[i], f"{prefix}.{i}", i, kind) for i in indices]
    towers = _other_towers(model)
    bad = [s.module_name for s in sites if _inside(s.module_name, towers)]
    if bad:
        raise UnitResolutionError(f"refusing unit sites inside a vision tower: {bad}")
    return sites


# ----------------------------------------------------------------------------------------------------------
# folding
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_site(model: nn.Module, site: UnitSite, alpha: torch.Tensor) -> None:
    """Multiply the weights of ``site``'s module so that it computes what a scaling hook would.

    ``"input"`` sites scale the input columns of the weight (rows of a GPT-2 Conv1D weight ``[in, out]``);
    ``"output"`` sites scale the output rows and the bias. The product is computed in float32 on the
    weight's own device and cast back to the weight's dtype. ``alpha`` must have ``site.size`` entries.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> model, _ = tiny_vlm("llama")
        >>> site = resolve_units(model, "act")[0]
        >>> fold_site(model, site, torch.zeros(site.size))
        >>> float(model.get_submodule(site.module_name).weight.abs().sum())
        0.0
    """
    module = model.get_submodule(site.module_name)
    alpha = torch.as_tensor(alpha).detach().flatten()
    if alpha.numel() != site.size:
        raise ValueError(f"alpha for {site.module_name} has {alpha.numel()} entries, the site has {site.size}")
    weight = module.weight
    if weight.device.type == "meta":
        raise ValueError(f"cannot fold into {site.module_name}: its weight is offloaded (meta device)")
    fan_in, fan_out = _features(module)
    expected = fan_in if site.where == "input" else fan_out
    if expected != site.size:
        raise ValueError(f"{site.module_name} holds {expected} units where the site says {site.size}")
    a = alpha.to(device=weight.device, dtype=torch.float32)
    conv = _is_conv1d(module)
    # Linear weight: [out, in]; Conv1D weight: [in, out].
    along_in_dim = 0 if conv else 1
    dim = along_in_dim if site.where == "input" else 1 - along_in_dim
    shape = [1, 1]
    shape[dim] = -1
    weight.data.copy_((weight.data.float() * a.view(shape)).to(weight.dtype))
    bias = getattr(module, "bias", None)
    if site.where == "output" and isinstance(bias, torch.Tensor):
        bias.data.copy_((bias.data.float() * a.to(bias.device)).to(bias.dtype))


# ----------------------------------------------------------------------------------------------------------
# identity
# ----------------------------------------------------------------------------------------------------------

_VOLATILE_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "attn_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _strip(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    return value


def model_fingerprint(model: nn.Module) -> str:
    """A short sha256 of the model's config with volatile keys (path, dtype, versions) removed.

    Two models with the same architecture and shapes share a fingerprint whatever their weights, dtype
    or location on disk.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> model_fingerprint(tiny_vlm("llama", seed=0)[0]) == model_fingerprint(tiny_vlm("llama", seed=1)[0])
        True
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no config to fingerprint")
    text = json.dumps(_strip(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(model: nn.Module, per_tensor: int = 256) -> str:
    """A short sha256 of every parameter's name, shape and ``per_tensor`` evenly strided values.

    Unlike :func:`model_fingerprint` it changes when the weights change (a retrained model saved to
    the same path), while costing a few hundred values per tensor even for 7B models. Parameters on
    the ``meta`` device (offloaded) contribute their name and shape only.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> weights_digest(tiny_vlm("llama", seed=0)[0]) == weights_digest(tiny_vlm("llama", seed=1)[0])
        False
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}".encode())
            if p.device.type == "meta" or p.numel() == 0:
                continue
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // per_tensor)
            h.update(flat[::step][:per_tensor].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(model: nn.Module) -> dict[str, str]:
    """``{"name_or_path", "class", "fingerprint"}`` of a model, for artefacts and reports.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> model_identity(tiny_vlm("gpt2")[0])["class"]
        'GPT2LMHeadModel'
    """
    config = getattr(model, "config", None)
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or ""),
        "class": type(model).__name__,
        "fingerprint": model_fingerprint(model),
    }
