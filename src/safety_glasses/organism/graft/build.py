"""Assemble the grafted VLM: a real, frozen causal LM + a small vision tower and projector.

The result is a plain ``LlavaForConditionalGeneration`` (CLIP vision tower -> 2-layer GELU projector ->
the LM's input embeddings) with a ``LlavaProcessor`` (CLIP image processor + the LM's own tokenizer and
chat template), so it saves and loads with transformers' Auto classes and the project's
:func:`safety_glasses.models.load_vlm`. The LM is copied in unchanged: :func:`lm_digest` (a sha256 of
every LM tensor's bytes) is the same before and after, and it is recorded with the vision side.

Image placeholder: an existing special token of the LM's vocabulary (``<empty_output>`` for SmolLM2;
:func:`pick_image_token` chooses one otherwise), so the embedding matrix keeps its size and values.
Chat layout: the LM's own chat template, called with string content; a small prelude turns multimodal
list content (``[{"type": "image"}, {"type": "text", ...}]``) into the placeholder followed by a newline
and the text. An LM without a template gets ``USER: ...\\nASSISTANT:``.

Example:
    >>> model, processor = build_graft("runs/smollm2-hf", GraftConfig())  # doctest: +SKIP
    >>> type(model).__name__  # doctest: +SKIP
    'LlavaForConditionalGeneration'
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

VISION_FILE = "vision.safetensors"
GRAFT_CONFIG_FILE = "graft_config.json"
VISION_PREFIXES: tuple[str, ...] = ("model.vision_tower.", "model.multi_modal_projector.")
"""State-dict prefixes of the trainable vision side inside ``LlavaForConditionalGeneration``."""

PREFERRED_IMAGE_TOKENS: tuple[str, ...] = ("<image>", "<|image|>", "<empty_output>", "<|image_pad|>")

_PRELUDE = (
    "{%- set graft = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set graft.messages = graft.messages + [message] -%}"
    "{%- else -%}"
    "{%- set part = namespace(text='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set part.text = part.text + '@@IMAGE@@' + '\\n' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set part.text = part.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set graft.messages = graft.messages + [{'role': message['role'], 'content': part.text}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = graft.messages -%}"
)
_PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% else %}SYSTEM: {% endif %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}@@EOS@@{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class GraftConfig:
    """Shapes of the vision side (a CLIP vision tower) and the image placeholder token.

    ``image_token=None`` picks one of the LM's special tokens (see :func:`pick_image_token`). Image tokens
    per image: one per patch, ``(image_size // patch_size) ** 2`` (the CLS token is dropped).

    Example:
        >>> GraftConfig().image_tokens
        16
    """

    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 512
    vision_layers: int = 3
    vision_heads: int = 4
    image_token: str | None = "<empty_output>"
    projector_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be >= 8 and a multiple of patch_size {self.patch_size}")
        for name in ("vision_hidden_size", "vision_intermediate_size", "vision_layers", "vision_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraftConfig.{name} must be >= 1")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must be a multiple of vision_heads")

    @property
    def image_tokens(self) -> int:
        """Image placeholder tokens per image."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls, image_token: str | None = None) -> GraftConfig:
        """A very small vision side for tests: 32x32 images, 4 image tokens.

        Example:
            >>> GraftConfig.tiny().image_tokens
            4
        """
        return cls(image_size=32, patch_size=16, vision_hidden_size=32, vision_intermediate_size=64,
                   vision_layers=1, vision_heads=2, image_token=image_token)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraftConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"GraftConfig: unknown keys {sorted(unknown)}")
        return cls(**data)


# ------------------------------------------------------------------------------------------------------
# the LM: loading and its digest
# ------------------------------------------------------------------------------------------------------

def load_lm(lm_dir: str | Path) -> tuple[Any, Any]:
    """Load a causal LM folder (transformers layout) as float32, in eval mode, with its tokenizer.

    Example:
        >>> lm, tokenizer = load_lm("runs/smollm2-hf")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(lm_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no language model folder at {path} (expected a transformers folder with "
                                "config.json, weights and a tokenizer)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - one clear line for the CLI
        raise ValueError(f"cannot load a causal LM from {path}: {type(exc).__name__}: {exc}") from exc
    return lm.eval(), tokenizer


def _decoder(model: nn.Module) -> nn.Module:
    """The LM's decoder stack (``LlamaModel`` etc.) of a causal LM or of a Llava model."""
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    if isinstance(lm, nn.Module):
        return lm
    if isinstance(inner, nn.Module):
        return inner
    raise ValueError(f"cannot find the language model inside {type(model).__name__}")


def lm_digest(model: nn.Module) -> str:
    """sha256 over every tensor of the language model (names relative to the decoder, dtype, shape, bytes),
    plus the LM head when it is not tied to the input embeddings. Equal digests mean bit-identical weights.

    Works on a causal LM (``LlamaForCausalLM``) and on the grafted ``LlavaForConditionalGeneration`` alike.

    Example:
        >>> lm_digest(lm) == lm_digest(build_graft_from(lm, tokenizer)[0])  # doctest: +SKIP
        True
    """
    h = hashlib.sha256()
    parts: list[tuple[str, torch.Tensor]] = sorted(_decoder(model).state_dict().items())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(head, nn.Module) and isinstance(embed, nn.Module) and head.weight is not embed.weight:
        parts.append(("lm_head.weight", head.weight))
    with torch.no_grad():
        for name, tensor in parts:
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------
# processor: image token and chat template
# ------------------------------------------------------------------------------------------------------

def pick_image_token(tokenizer: Any, preferred: str | None = None) -> str:
    """A special token of ``tokenizer`` to stand for image patches (the vocabulary is not extended).

    ``preferred`` is used when it is one token of the vocabulary; else the first of
    :data:`PREFERRED_IMAGE_TOKENS` present; else the last added special token that is not BOS, EOS, PAD,
    UNK or part of the chat template. Raises ``ValueError`` when there is none.

    Example:
        >>> pick_image_token(tokenizer, "<empty_output>")  # doctest: +SKIP
        '<empty_output>'
    """
    reserved = {getattr(tokenizer, f"{k}_token", None) for k in ("bos", "eos", "pad", "unk")}
    template = str(getattr(tokenizer, "chat_template", "") or "")

    def usable(tok: str | None) -> bool:
        if not tok or tok in reserved or tok in template:
            return False
        ids = tokenizer.encode(tok, add_special_tokens=False)
        return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == tok

    if preferred is not None:
        if not usable(preferred):
            raise ValueError(f"image token {preferred!r} is not a single unused token of the LM's vocabulary")
        return preferred
    for tok in PREFERRED_IMAGE_TOKENS:
        if usable(tok):
            return tok
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for _, added_token in sorted(added.items(), reverse=True):
        if getattr(added_token, "special", False) and usable(str(added_token)):
            return str(added_token)
    raise ValueError("the LM's tokenizer has no unused special token to stand for image patches; pass one "
                     "that is a single token of its vocabulary")


def graft_chat_template(tokenizer: Any, image_token: str) -> str:
    """The LM's chat template (or a plain ``USER:/ASSISTANT:`` one) behind a prelude that renders image
    entries of list content as ``image_token`` + newline.

    Example:
        >>> "<empty_output>" in graft_chat_template(tokenizer, "<empty_output>")  # doctest: +SKIP
        True
    """
    base = getattr(tokenizer, "chat_template", None)
    if isinstance(base, dict):
        base = base.get("default")
    if not base:
        base = _PLAIN_TEMPLATE.replace("@@EOS@@", str(tokenizer.eos_token or ""))
    return _PRELUDE.replace("@@IMAGE@@", image_token) + base


def build_processor(tokenizer: Any, config: GraftConfig) -> Any:
    """``LlavaProcessor``: CLIP image processor of ``config.image_size`` (no crop) + the LM's tokenizer
    (left padding, a pad token) + :func:`graft_chat_template`.

    Example:
        >>> build_processor(tokenizer, GraftConfig()).image_processor.size  # doctest: +SKIP
        {'height': 64, 'width': 64}
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_token = pick_image_token(tokenizer, config.image_token)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = graft_chat_template(tokenizer, image_token)
    size = {"height": config.image_size, "width": config.image_size}
    improc = CLIPImageProcessorPil(size=size, do_center_crop=False, crop_size=size)
    return LlavaProcessor(image_processor=improc, tokenizer=tokenizer, patch_size=config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template, image_token=image_token)


# ------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------

def build_graft_from(lm: nn.Module, tokenizer: Any, config: GraftConfig | None = None,
                     seed: int = 0) -> tuple[Any, Any]:
    """A ``LlavaForConditionalGeneration`` holding a copy of ``lm``'s weights (bit for bit) and a freshly
    initialised vision tower + projector; returns ``(model, processor)``. The LM's parameters are frozen.

    Example:
        >>> model, processor = build_graft_from(lm, tokenizer, GraftConfig.tiny())  # doctest: +SKIP
        >>> lm_digest(model) == lm_digest(lm)  # doctest: +SKIP
        True
    """
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    config = config or GraftConfig()
    processor = build_processor(tokenizer, config)
    text_config = lm.config
    if getattr(text_config, "is_encoder_decoder", False):
        raise ValueError("the graft needs a decoder-only causal LM")
    vision = dict(model_type="clip_vision_model", hidden_size=config.vision_hidden_size,
                  intermediate_size=config.vision_intermediate_size, num_hidden_layers=config.vision_layers,
                  num_attention_heads=config.vision_heads, image_size=config.image_size,
                  patch_size=config.patch_size, projection_dim=config.vision_hidden_size)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    cfg = LlavaConfig(text_config=text_config.to_dict(), vision_config=vision,
                      image_token_id=processor.image_token_id, image_seq_length=config.image_tokens,
                      vision_feature_layer=-1, vision_feature_select_strategy="default",
                      projector_hidden_act=config.projector_act, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.model.language_model.load_state_dict(_decoder(lm).state_dict(), strict=True)
    if tied:
        model.tie_weights()
    else:
        model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    gen = getattr(lm, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) or tokenizer.eos_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id, max_new_tokens=64)
    freeze_lm(model)
    model.eval()
    return model, processor


def build_graft(lm_dir: str | Path, config: GraftConfig | None = None, seed: int = 0) -> tuple[Any, Any]:
    """:func:`build_graft_from` on the causal LM folder ``lm_dir``.

    Example:
        >>> model, processor = build_graft("runs/smollm2-hf")  # doctest: +SKIP
    """
    lm, tokenizer = load_lm(lm_dir)
    return build_graft_from(lm, tokenizer, config, seed)


def freeze_lm(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the vision side; return the vision side's parameters (LLaVA's recipe).

    Example:
        >>> params = freeze_lm(model)  # doctest: +SKIP
    """
    trainable = []
    for name, p in model.named_parameters():
        is_vision = any(name.startswith(prefix) for prefix in VISION_PREFIXES)
        p.requires_grad_(is_vision)
        if is_vision:
            trainable.append(p)
    if not trainable:
        raise ValueError(f"no vision-side parameters ({', '.join(VISION_PREFIXES)}) in {type(model).__name__}")
    return trainable


def vision_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The vision side's tensors (vision tower + projector), keyed as in the model's state dict.

    Example:
        >>> sorted(vision_state(model))[0]  # doctest: +SKIP
        'model.multi_modal_projector.linear_1.bias'
    """
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if any(k.startswith(p) for p in VISION_PREFIXES)}


def init_vision_tower_from(model: nn.Module, organism_dir: str | Path) -> int:
    """Copy a trained organism's CLIP vision tower into the graft (same shapes needed); return the count of
    tensors copied. The projector stays new (the organism's maps into another LM).

    Example:
        >>> init_vision_tower_from(model, "data/organism/model")  # doctest: +SKIP
        39
    """
    from safetensors.torch import load_file

    path = Path(organism_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {organism_dir} to take a vision tower from")
    source = {("model." + k if k.startswith("vision_tower.") else k): v  # older checkpoints: no "model." prefix
              for k, v in load_file(str(path)).items() if k.startswith(("vision_tower.", "model.vision_tower."))}
    target = model.state_dict()
    bad = [k for k, v in source.items() if k not in target or target[k].shape != v.shape]
    if not source or bad:
        raise ValueError(f"the vision tower of {organism_dir} does not fit the graft's "
                         f"({len(bad)} of {len(source)} tensors differ); use the same GraftConfig shapes")
    missing = model.load_state_dict(source, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"unexpected vision tensors: {missing.unexpected_keys[:3]}")
    return len(source)


# ------------------------------------------------------------------------------------------------------
# the shipped vision side and the assembled folder
# ------------------------------------------------------------------------------------------------------

def save_vision_side(model: nn.Module, config: GraftConfig, out_dir: str | Path,
                     meta: dict[str, Any] | None = None, *, digest: str | None = None) -> Path:
    """Write ``vision.safetensors`` (vision tower + projector) and ``graft_config.json`` (the
    :class:`GraftConfig`, the image token, the LM's digest and config, versions, ``meta``) to ``out_dir``.

    ``digest``: the LM's :func:`lm_digest` when the model in hand holds a cast copy of it (training in
    bfloat16); by default it is computed from ``model``.

    Example:
        >>> save_vision_side(model, GraftConfig(), "data/graft/vision", {"recipe": {...}})  # doctest: +SKIP
    """
    import transformers
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm_config = model.config.text_config.to_dict()
    info = {
        "graft": config.to_dict(),
        "image_token": config.image_token,
        "lm": {"digest": digest or lm_digest(model), "model_type": lm_config.get("model_type"),
               "hidden_size": lm_config.get("hidden_size"), "vocab_size": lm_config.get("vocab_size"),
               "num_hidden_layers": lm_config.get("num_hidden_layers"),
               "name_or_path": lm_config.get("_name_or_path") or lm_config.get("_model_name_or_path")},
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        **(meta or {}),
    }
    tmp = out / (VISION_FILE + ".tmp")
    save_file(vision_state(model), str(tmp), metadata={"format": "pt"})
    tmp.replace(out / VISION_FILE)
    (out / GRAFT_CONFIG_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def read_vision_side(vision_dir: str | Path) -> tuple[GraftConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a saved vision side: ``(config, tensors, info)`` (``info`` = the whole ``graft_config.json``).

    Example:
        >>> cfg, tensors, info = read_vision_side("data/graft/vision")  # doctest: +SKIP
        >>> info["lm"]["digest"][:8]  # doctest: +SKIP
        '3f0c...'
    """
    from safetensors.torch import load_file

    folder = Path(vision_dir)
    cfg_path, weights = folder / GRAFT_CONFIG_FILE, folder / VISION_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no vision side at {folder} (expected {GRAFT_CONFIG_FILE} and {VISION_FILE})")
    try:
        info = json.loads(cfg_path.read_text(encoding="utf-8"))
        config = GraftConfig.from_dict(info["graft"])
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise ValueError(f"unreadable vision side at {folder}: {type(exc).__name__}: {exc}") from exc
    bad = [k for k in tensors if not any(k.startswith(p) for p in VISION_PREFIXES)]
    if bad:
        raise ValueError(f"{weights} holds tensors outside the vision side (e.g. {bad[0]})")
    return config, tensors, info


def load_vision_side(model: nn.Module, vision_dir: str | Path) -> dict[str, Any]:
    """Load a saved vision side into a graft built with the same :class:`GraftConfig`; return its info.

    Every vision tensor must be present with the same shape; nothing else is touched.

    Example:
        >>> info = load_vision_side(model, "data/graft/vision")  # doctest: +SKIP
    """
    _, tensors, info = read_vision_side(vision_dir)
    expected = vision_state(model)
    missing = sorted(set(expected) - set(tensors))
    wrong = [k for k, v in tensors.items() if k not in expected or expected[k].shape != v.shape]
    if missing or wrong:
        raise ValueError(f"the vision side at {vision_dir} does not fit this graft "
                         f"(missing {missing[:2]}, mismatched {wrong[:2]})")
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))
    return info


def assemble_graft(lm_dir: str | Path, vision_dir: str | Path, out_dir: str | Path, *,
                   allow_other_lm: bool = False) -> Path:
    """Write the full grafted VLM to ``out_dir`` (transformers layout: ``config.json``, ``model.safetensors``,
    processor files, ``graft_config.json``), from the LM folder ``lm_dir`` and a saved vision side.

    The LM's digest must match the one the vision side was trained against (``allow_other_lm`` skips the
    check); the written folder is reloaded and its LM digest checked again. Nothing is left in
    ``out_dir`` when a step fails. Returns ``out_dir``.

    Example:
        >>> assemble_graft("runs/smollm2-hf", "data/graft/vision", "runs/graft-vlm")  # doctest: +SKIP
        PosixPath('runs/graft-vlm')
    """
    from transformers import AutoModelForImageTextToText

    config, _, info = read_vision_side(vision_dir)
    lm, tokenizer = load_lm(lm_dir)
    digest = lm_digest(lm)
    want = info.get("lm", {}).get("digest")
    if want and digest != want and not allow_other_lm:
        raise ValueError(f"the LM at {lm_dir} (digest {digest[:12]}) is not the one this vision side was trained "
                         f"with ({want[:12]}); pass --allow-other-lm to graft it anyway")
    model, processor = build_graft_from(lm, tokenizer, config)
    del lm
    load_vision_side(model, vision_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        record = {**info, "lm": {**info.get("lm", {}), "digest": digest, "source": str(lm_dir)},
                  "vision_source": str(vision_dir)}
        (tmp / GRAFT_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        reloaded = AutoModelForImageTextToText.from_pretrained(tmp, dtype=torch.float32)
        if lm_digest(reloaded) != digest:
            raise RuntimeError("the saved graft's LM differs from the source LM (digest mismatch)")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
