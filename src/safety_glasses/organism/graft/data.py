"""Training data of the graft, drawn from the organism's synthetic world (train split only).

Two kinds of targets, both about what an image *shows* (nothing about toxicity is trained: harmful
drawings only get descriptions, never replies to harmful requests):

- **slot captions** (the ``pretrain`` stage, no LM pass): for each of the ``n`` image tokens, a token of
  the LM's vocabulary that the projected image token should look like. Shape scenes fill one slot group per
  quadrant (``" red circle top left"``, a newline filler where the quadrant is empty); drawings of harmful
  activities read ``"The image shows a gun."``, typographic images ``"The text says: <phrase>"``, SD+TYPO
  images ``"A gun above the words: <phrase>"`` (left aligned, filler after);
- **question / answer pairs** (the ``align`` stage, loss through the frozen LM): the world's VQA
  questions with their one-word answers, description requests of shape scenes, and descriptions of the
  harmful drawings and of the phrase in typographic images (:data:`DESCRIBE_QUESTIONS`, :data:`READ_QUESTIONS`).

Batches are a pure function of ``(seed, step)``, so a resumed run sees the same data.

Example:
    >>> batch = sample_examples(seed=0, step=3, n=4)
    >>> len(batch), all(ex.answer for ex in batch)
    (4, True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..world import CATEGORIES, QUADRANTS, World, WorldConfig, WorldItem

DESCRIBE_QUESTIONS: tuple[str, ...] = ("What is shown in the image?", "What do you see in this picture?",
                                       "What is in this picture?", "Describe the image.")
READ_QUESTIONS: tuple[str, ...] = ("What does the text in the image say?", "Read the text in the image.",
                                   "Which words are written in the picture?")
SD_TYPO_QUESTIONS: tuple[str, ...] = ("Describe the image.", "What is shown in the picture, and what is written "
                                      "under it?")
KIND_MIX: dict[str, float] = {"vqa": 0.55, "benign": 0.1, "harmful": 0.35}
CONDITION_MIX: dict[str, float] = {"standard": 0.5, "typographic": 0.25, "sd_typo": 0.25}


@dataclass
class GraftExample:
    """One training example: an image, a question, its answer and the image's slot caption text(s).

    ``slots`` is either one left-aligned caption (``slot_groups == 1``) or one text per quadrant.
    """

    image: Image.Image
    question: str
    answer: str
    kind: str
    slots: list[str] = field(default_factory=list)
    slot_groups: int = 1
    ends: bool = True  # the answer ends the turn (False: a reply cut at a length limit; no end token trained)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def example_from_item(item: WorldItem, rng: random.Random) -> GraftExample:
    """The graft's example for a world item (``vqa``, ``benign`` or ``harmful``).

    Example:
        >>> item = World().sample_item("train", kind="harmful", condition="standard")
        >>> example_from_item(item, random.Random(0)).slots[0].startswith("The image shows")
        True
    """
    image = item.images[0]
    if item.kind in ("vqa", "benign"):
        if item.scene is None:
            raise ValueError(f"world item {item.id} carries no scene ground truth")
        slots = [(f" {o[1]} {o[0]} {QUADRANTS[q]}" if o is not None else "") for q, o in enumerate(item.scene.objects)]
        answer = item.target
        return GraftExample(image, item.question, answer, item.kind, slots, slot_groups=4)
    name, phrase = item.shown, item.key_phrase or ""
    if item.condition == "standard":
        if name is None:
            raise ValueError(f"world item {item.id} carries no drawing name")
        question = rng.choice(DESCRIBE_QUESTIONS)
        answer = f"The image shows {name}." if question == "Describe the image." else name
        return GraftExample(image, question, answer, "harmful", [f"The image shows {name}."])
    if item.condition == "typographic":
        return GraftExample(image, rng.choice(READ_QUESTIONS), phrase, "harmful", [f"The text says: {phrase}"])
    if name is None:
        raise ValueError(f"world item {item.id} carries no drawing name")
    answer = f"The image shows {name} above the words \"{phrase}\"."
    return GraftExample(image, rng.choice(SD_TYPO_QUESTIONS), answer, "harmful",
                        [f"{_capital(name)} above the words: {phrase}"])


def sample_examples(seed: int, step: int, n: int, *, single_object: bool = False,
                    kind_mix: dict[str, float] | None = None) -> list[GraftExample]:
    """``n`` examples of training step ``step`` (a pure function of ``seed`` and ``step``).

    ``single_object``: shape scenes with exactly one object only (the curriculum's first phase). Images are
    drawn at the world's own size (64 px); the processor resizes them to the graft's input size.

    Example:
        >>> [ex.kind for ex in sample_examples(0, 0, 3, kind_mix={"vqa": 1.0, "benign": 0.0, "harmful": 0.0})]
        ['vqa', 'vqa', 'vqa']
    """
    mix = kind_mix or KIND_MIX
    world = World(WorldConfig(seed=seed * 1_000_003 + step))
    rng = random.Random(f"graft-{seed}-{step}")
    out: list[GraftExample] = []
    while len(out) < n:
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]
        if kind == "harmful":
            condition = rng.choices(list(CONDITION_MIX), weights=list(CONDITION_MIX.values()))[0]
            item = world.sample_item("train", kind="harmful", condition=condition, category=rng.choice(CATEGORIES))
        else:
            item = world.sample_item("train", kind=kind)
            if single_object and item.scene is not None and sum(o is not None for o in item.scene.objects) != 1:
                continue
        out.append(example_from_item(item, rng))
    return out


# ------------------------------------------------------------------------------------------------------
# slot targets (pretrain stage)
# ------------------------------------------------------------------------------------------------------

def filler_id(tokenizer: Any) -> int:
    """The token that fills unused caption slots: the LM's newline token."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if not ids:
        raise ValueError("the tokenizer cannot encode a newline")
    return int(ids[-1])


def slot_ids(example: GraftExample, tokenizer: Any, n_tokens: int) -> list[int]:
    """The ``n_tokens`` target token ids of ``example``'s image tokens.

    With one slot group the caption is left aligned and padded with :func:`filler_id`; with four groups
    (shape scenes) each quadrant owns ``n_tokens // 4`` consecutive slots.

    Example:
        >>> len(slot_ids(sample_examples(0, 0, 1)[0], tokenizer, 16))  # doctest: +SKIP
        16
    """
    fill = filler_id(tokenizer)

    def fit(text: str, width: int) -> list[int]:
        ids = tokenizer.encode(text, add_special_tokens=False)[:width] if text else []
        return ids + [fill] * (width - len(ids))

    if example.slot_groups == 1:
        return fit(example.slots[0], n_tokens)
    width = n_tokens // example.slot_groups
    ids = [t for text in example.slots for t in fit(text, width)]
    return ids + [fill] * (n_tokens - len(ids))


# ------------------------------------------------------------------------------------------------------
# LM sequences (align stage)
# ------------------------------------------------------------------------------------------------------

def _render(processor: Any, question: str, answer: str | None) -> str:
    tok = processor.tokenizer
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "image"},
                                                                   {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return str(tok.apply_chat_template(messages, chat_template=processor.chat_template, tokenize=False,
                                       add_generation_prompt=answer is None))


def _ids(processor: Any, text: str, n_tokens: int) -> list[int]:
    expanded = text.replace(processor.image_token, processor.image_token * n_tokens)
    return list(processor.tokenizer(expanded, add_special_tokens=False)["input_ids"])


def prompt_prefix_ids(processor: Any, n_tokens: int) -> list[int]:
    """Token ids every prompt starts with, up to the first image token (system prompt and user header):
    the part whose key/value cache the training step computes once.

    Example:
        >>> processor.tokenizer.decode(prompt_prefix_ids(processor, 16))  # doctest: +SKIP
        '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\n'
    """
    ids = _ids(processor, _render(processor, "x", None), n_tokens)
    return ids[:ids.index(processor.image_token_id)]


@dataclass
class LMBatch:
    """Right-padded token ids after the cached prefix, with masks for image slots and answer targets."""

    ids: torch.Tensor          # [B, L] long
    attention: torch.Tensor    # [B, L] bool
    image: torch.Tensor        # [B, L] bool: positions the projected image tokens fill
    target: torch.Tensor       # [B, L] bool: answer tokens (trained to be predicted from the position before)
    pixel_values: torch.Tensor


def encode_for_lm(processor: Any, examples: list[GraftExample], n_tokens: int,
                  prefix: list[int]) -> LMBatch:
    """Encode examples as the processor would at inference (same template and tokenizer call), drop the
    common ``prefix`` and right-pad; targets are the answer tokens up to and including the end-of-turn token.

    Example:
        >>> batch = encode_for_lm(processor, sample_examples(0, 0, 2), 16, prompt_prefix_ids(processor, 16))  # doctest: +SKIP
        >>> batch.image.sum(1).tolist()  # doctest: +SKIP
        [16, 16]
    """
    tok = processor.tokenizer
    eos = tok.eos_token_id
    rows: list[tuple[list[int], int]] = []
    for ex in examples:
        prompt = _ids(processor, _render(processor, ex.question, None), n_tokens)
        full = _ids(processor, _render(processor, ex.question, ex.answer), n_tokens)
        if full[:len(prompt)] != prompt or prompt[:len(prefix)] != prefix:
            raise ValueError("the chat template renders prompts that are not prefixes of the full text")
        answer = full[len(prompt):]
        if eos in answer:
            answer = answer[:answer.index(eos) + 1]
        else:
            answer = answer + [eos]
        if not ex.ends:
            answer = answer[:-1]
        rows.append((prompt[len(prefix):] + answer, len(answer)))
    length = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.bool)
    target = torch.zeros_like(attention)
    for i, (row, n_answer) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = True
        target[i, len(row) - n_answer:len(row)] = True
    image = (ids == processor.image_token_id) & attention
    if not bool((image.sum(1) == n_tokens).all()):
        raise ValueError(f"each example must hold exactly {n_tokens} image tokens")
    pixels = processor.image_processor([ex.image for ex in examples], return_tensors="pt")["pixel_values"]
    return LMBatch(ids, attention, image, target, pixels)
