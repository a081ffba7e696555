"""Turn concept rows (prompt, images, response) into model inputs with the model's own processor.

Text layout:

* with a chat template (the processor's, else the tokenizer's): one user turn holding one image entry per
  image and the prompt, then the response as the assistant turn. The rendered text is cut right after
  the response, so the sequence ends on the reply's last token (as during generation; the template's
  end-of-turn tokens are not appended). With ``response=None`` the generation prompt is added instead.
  Multimodal processors get list content (``[{"type": "image"}, {"type": "text", ...}]``); a bare
  tokenizer gets string content, which text-only templates expect.
* without a template, the plain layout ``"USER: <image>...<image>\\n{prompt}\\nASSISTANT: {response}"``
  (``"USER: {prompt}\\nASSISTANT:"`` without images / response), where ``<image>`` is the model's image
  placeholder token (the processor's ``image_token``, else ``config.image_token_id``). The tokenizer's own
  special tokens (e.g. BOS) are added when encoding the plain layout, not when encoding a template.
* the raw layout (``layout="raw"``, and any row whose prompt is empty and has no image): the prompt
  continued by the response, ``"{prompt} {response}"``, as a base LM reads text; with an empty prompt the
  response is the whole text (AurA's recording of plain sentences). No template is needed, and the
  tokenizer's BOS is added as for plain text.

Batches are left-padded; for text-only models (a bare tokenizer) ``inputs`` also holds ``position_ids``
counted from each row's first real token, so that models with learned absolute positions (GPT-2) see the
same positions padded or not (multimodal models compute their own).

Token masks (``[B, T]`` bool, padding always excluded): ``all``; ``image`` (the image placeholder/patch
tokens the model replaces with image features); ``text`` (all minus image); ``response`` (the assistant
reply: every token after the longest common prefix of the encoded row with and without its response;
empty for rows without a response); ``prompt`` (all minus response).

Example:
    >>> from safety_glasses.testing import tiny_vlm, tiny_image
    >>> model, proc = tiny_vlm("llava")
    >>> batch = encode_rows(proc, ["hi"], [[tiny_image()]], ["hello"], model_config=model.config)
    >>> int(batch.masks["image"].sum())
    16
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

__all__ = ["EncodedBatch", "LAYOUTS", "MASK_NAMES", "build_text", "encode_rows", "image_token_ids", "row_layout",
           "tokenizer_of"]

MASK_NAMES: tuple[str, ...] = ("all", "text", "image", "response", "prompt")
LAYOUTS: tuple[str, ...] = ("auto", "chat", "plain", "raw")
"""How a row becomes text: ``chat`` (the chat template), ``plain`` (``USER: ...\nASSISTANT: ...``), ``raw``
(the prompt continued directly, as a base LM reads text; AurA's layout), ``auto`` (chat when the model has
a template, else plain; a row with an empty prompt and no image is always raw)."""
_DROP_KEYS = ("labels",)


def tokenizer_of(processor_or_tokenizer: Any) -> Any:
    """The tokenizer inside a processor, or the object itself when it is a tokenizer.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> type(tokenizer_of(tiny_vlm("llava")[1])).__name__
        'TokenizersBackend'
    """
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", None)
    return processor_or_tokenizer if tokenizer is None else tokenizer


def _is_multimodal(processor: Any) -> bool:
    return tokenizer_of(processor) is not processor and getattr(processor, "image_processor", None) is not None


def _chat_template(processor: Any) -> str | None:
    template = getattr(processor, "chat_template", None)
    if not template:
        template = getattr(tokenizer_of(processor), "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def _image_token_text(processor: Any, model_config: Any) -> str | None:
    for holder in (processor, tokenizer_of(processor)):
        token = getattr(holder, "image_token", None)
        if isinstance(token, str) and token:
            return token
    ids = image_token_ids(processor, model_config)
    if ids:
        return str(tokenizer_of(processor).convert_ids_to_tokens(ids[0]))
    return None


def image_token_ids(processor: Any, model_config: Any = None) -> list[int]:
    """Ids of the placeholder tokens that the model replaces with image features.

    Taken from the model config (``image_token_id`` / ``image_token_index``) when given, else from the
    processor (``image_token_id``) or its tokenizer (``image_token``). Empty for text-only models.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> model, proc = tiny_vlm("qwen2_vl")
        >>> image_token_ids(proc, model.config) == [proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")]
        True
    """
    if model_config is not None:
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(model_config, attr, None)
            if isinstance(value, int) and value >= 0:
                return [value]
    tok = tokenizer_of(processor)
    holders = (processor,) if processor is not tok else ()
    for holder in holders:
        value = getattr(holder, "image_token_id", None)
        if isinstance(value, int) and value >= 0:
            return [value]
    token = getattr(tok, "image_token", None)
    if isinstance(token, str) and token:
        value = tok.convert_tokens_to_ids(token)
        if isinstance(value, int) and value != getattr(tok, "unk_token_id", None):
            return [value]
    return []


def row_layout(processor_or_tokenizer: Any, prompt: str, n_images: int, layout: str = "auto") -> str:
    """The layout (``chat``, ``plain`` or ``raw``) one row is rendered in; see :data:`LAYOUTS`.

    Raises ``ValueError`` for ``chat`` without a template and for images in the ``raw`` layout.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> tok = tiny_vlm("llama")[1]
        >>> row_layout(tok, "Hi", 0), row_layout(tok, "", 0), row_layout(tiny_vlm("gpt2")[1], "Hi", 0)
        ('chat', 'raw', 'plain')
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        if not prompt.strip() and n_images == 0:
            return "raw"
        return "chat" if _chat_template(processor_or_tokenizer) is not None else "plain"
    if layout == "chat" and _chat_template(processor_or_tokenizer) is None:
        raise ValueError("layout 'chat' needs a chat template, and this model has none (use plain or raw)")
    if layout == "raw" and n_images:
        raise ValueError("the raw layout takes text only (this row has images)")
    return layout


def _join_raw(prompt: str, response: str | None) -> str:
    """A prompt continued by its response: one space between them unless either side brings whitespace."""
    if not response:
        return prompt
    if not prompt or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"


def build_text(
    processor_or_tokenizer: Any,
    prompt: str,
    n_images: int,
    response: str | None,
    *,
    model_config: Any = None,
    layout: str = "auto",
) -> str:
    """Render one row as the text the processor expects, in the row's layout (:func:`row_layout`).

    See the module docstring for the exact layouts. With ``response=None`` the text ends with the
    generation prompt (ready for ``generate``; in the raw layout: the prompt itself); otherwise it ends
    right after the response. A chat template that trims the reply (Gemma's) is matched on the trimmed
    reply.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> build_text(tiny_vlm("gpt2")[1], "Hi", 0, "Hello")
        'USER: Hi\\nASSISTANT: Hello'
        >>> build_text(tiny_vlm("llama")[1], "The cat", 0, "sat down.", layout="raw")
        'The cat sat down.'
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if response == "":
        response = None  # an empty reply is the bare generation prompt
    tok = tokenizer_of(processor_or_tokenizer)
    chosen = row_layout(processor_or_tokenizer, prompt, n_images, layout)
    if chosen == "raw":
        return _join_raw(prompt, response)
    template = _chat_template(processor_or_tokenizer) if chosen == "chat" else None
    if template is None:
        images = ""
        if n_images:
            token = _image_token_text(processor_or_tokenizer, model_config)
            if token is None:
                raise ValueError("this row has images but the model has no image placeholder token")
            images = token * n_images + "\n"
        text = f"USER: {images}{prompt}\nASSISTANT:"
        return text if response is None else f"{text} {response}"
    structured = _is_multimodal(processor_or_tokenizer)
    if n_images and not structured:
        raise ValueError("this row has images but the processor has no image processor (text-only model?)")
    user: Any = [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}] if structured else prompt
    messages: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if response is not None:
        reply: Any = [{"type": "text", "text": response}] if structured else response
        messages.append({"role": "assistant", "content": reply})
    text = tok.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=response is None
    )
    if response is not None:
        for needle in dict.fromkeys((response, response.strip())):
            cut = text.rfind(needle) if needle else -1
            if cut >= 0:
                text = text[: cut + len(needle)]
                break
        else:
            raise ValueError("the chat template did not render the response text; cannot locate the reply")
    return str(text)


@dataclass
class EncodedBatch:
    """Model inputs for a left-padded batch plus named token masks.

    ``inputs`` is ready for ``model(**inputs)`` and ``model.generate(**inputs)``; ``attention_mask`` is the
    same mask as bool; ``masks`` maps each of :data:`MASK_NAMES` to a ``[B, T]`` bool tensor.

    Example:
        >>> from safety_glasses.testing import tiny_vlm
        >>> model, tok = tiny_vlm("llama")
        >>> batch = encode_rows(tok, ["a", "longer prompt"], [[], []], ["x", "y"], model_config=model.config)
        >>> batch.attention_mask[:, -1].all().item()
        True
    """

    inputs: dict[str, torch.Tensor]
    attention_mask: torch.Tensor
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> EncodedBatch:
        """A copy with every tensor moved to ``device`` (floating inputs keep their dtype).

        Example:
            >>> batch = batch.to("cpu")  # doctest: +SKIP
        """
        return EncodedBatch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            attention_mask=self.attention_mask.to(device),
            masks={k: v.to(device) for k, v in self.masks.items()},
        )

    def __len__(self) -> int:
        return int(self.attention_mask.shape[0])


@contextmanager
def _left_padding(tok: Any) -> Iterator[None]:
    old_side, old_pad = tok.padding_side, tok.pad_token
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    try:
        yield
    finally:
        tok.padding_side = old_side
        if old_pad is None:
            tok.pad_token = None


def _encode(processor: Any, texts: list[str], images: list[list[Image.Image]], special: bool) -> dict[str, Any]:
    tok = tokenizer_of(processor)
    has_images = any(len(row) for row in images)
    kwargs = dict(padding=True, return_tensors="pt", add_special_tokens=special)
    with _left_padding(tok), warnings.catch_warnings():
        # PaliGemma's processor trips a numpy 2 DeprecationWarning on every call; it is harmless.
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword")
        if not _is_multimodal(processor):
            if has_images:
                raise ValueError("rows have images but the model's processor has no image processor")
            enc = tok(texts, **kwargs)
            # Left padding shifts positions: models with learned absolute positions (GPT-2) need explicit
            # position ids counted from each row's first real token; rotary models get the same numbers
            # transformers' generate() would compute, and generate() extends them while decoding.
            positions = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "position_ids": positions}
        if has_images:
            enc = processor(text=texts, images=[list(row) for row in images], **kwargs)
        else:
            try:
                enc = processor(text=texts, **kwargs)
            except ValueError:
                # Some processors (PaliGemma) refuse a batch without images: the text goes through the
                # tokenizer, as the language model reads it.
                enc = tok(texts, **kwargs)
                enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    return {k: v for k, v in dict(enc).items() if k not in _DROP_KEYS and isinstance(v, torch.Tensor)}


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


def _bos_text(tok: Any) -> str:
    """The BOS token's text when the tokenizer adds it to plain text by itself (Llama, Gemma), else ``""``."""
    bos = getattr(tok, "bos_token", None)
    if not bos or getattr(tok, "bos_token_id", None) is None:
        return ""
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return str(bos) if ids and ids[0] == tok.bos_token_id else ""


def encode_rows(
    processor: Any,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    responses: Sequence[str | None] | None,
    *,
    model_config: Any = None,
    layout: str = "auto",
) -> EncodedBatch:
    """Encode a batch of rows with left padding, returning inputs and token masks.

    ``images[i]`` lists row ``i``'s images (empty for text-only rows; rows with and without images can be
    mixed). ``responses`` gives each row's assistant reply (None entries, or ``responses=None``, encode
    the prompt with the generation prompt, ready for ``generate``). ``layout`` is one of :data:`LAYOUTS`
    (rows with an empty prompt and no image are raw text: the response is the whole text, AurA's
    recording of plain sentences). ``processor`` is a multimodal
    processor or, for text-only models, a tokenizer. ``model_config`` tells which token ids are image
    placeholders (falls back to the processor's ``image_token``).

    Example:
        >>> from safety_glasses.testing import tiny_vlm, tiny_image
        >>> model, proc = tiny_vlm("qwen2_vl")
        >>> b = encode_rows(proc, ["a", "b"], [[tiny_image()], []], ["yes", "no"], model_config=model.config)
        >>> b.masks["response"].any(dim=1).tolist()
        [True, True]
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("encode_rows needs at least one row")
    if len(images) != n:
        raise ValueError(f"got {n} prompts but {len(images)} image lists")
    replies: list[str | None] = [None] * n if responses is None else list(responses)
    if len(replies) != n:
        raise ValueError(f"got {n} prompts but {len(replies)} responses")
    image_lists = [list(row) for row in images]
    layouts = [row_layout(processor, p, len(imgs), layout) for p, imgs in zip(prompts, image_lists)]
    # Templates write their own special tokens; plain and raw text get the tokenizer's (BOS). In a batch
    # that mixes both, the non-template rows get the BOS text written out instead.
    special = "chat" not in layouts
    bos = "" if special else _bos_text(tokenizer_of(processor))

    def render(i: int, response: str | None) -> str:
        text = build_text(processor, prompts[i], len(image_lists[i]), response, model_config=model_config,
                          layout=layouts[i])
        return text if layouts[i] == "chat" else bos + text

    full_texts = [render(i, r) for i, r in enumerate(replies)]
    inputs = _encode(processor, full_texts, image_lists, special)
    attention = inputs["attention_mask"].bool()
    ids = inputs["input_ids"]
    n_tokens = ids.shape[1]
    response = torch.zeros_like(attention)
    with_reply = [i for i, r in enumerate(replies) if r is not None]
    if with_reply:
        prompt_texts = [render(i, None) for i in with_reply]
        prompt_enc = _encode(processor, prompt_texts, [image_lists[i] for i in with_reply], special)
        p_ids, p_att = prompt_enc["input_ids"], prompt_enc["attention_mask"].bool()
        for j, i in enumerate(with_reply):
            row = ids[i][attention[i]]
            start = _common_prefix(row, p_ids[j][p_att[j]])
            pad = n_tokens - row.numel()
            response[i, pad + start :] = True
    image_ids = image_token_ids(processor, model_config)
    if image_ids:
        image = torch.isin(ids, torch.tensor(image_ids, dtype=ids.dtype)) & attention
    else:
        image = torch.zeros_like(attention)
    masks = {
        "all": attention.clone(),
        "text": attention & ~image,
        "image": image,
        "response": response & attention,
        "prompt": attention & ~response,
    }
    return EncodedBatch(inputs=inputs, attention_mask=attention, masks=masks)
