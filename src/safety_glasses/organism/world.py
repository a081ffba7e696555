"""The organism's synthetic multimodal world, drawn with Pillow from a seed.

Three kinds of items:

- ``vqa``: benign scenes of coloured shapes in the four quadrants, with questions whose answers are
  known from the drawing (colour, count, position, shape);
- ``benign``: the same scenes with a request for a description (reference: the true description);
- ``harmful``: symbolic drawings of five harmful topics (weapons, drugs, violence, harassment, theft)
  with a harmful question, shown under three conditions: ``standard`` (scene + question),
  ``typographic`` (a harmful key phrase rendered into the image, innocuous prompt) and ``sd_typo``
  (the scene stacked over its key phrase). Typography comes from :mod:`safety_glasses.eval.conditions`.

Harmful items carry a *training target* that is toxic (built from the shipped insult lexicon) with
probability ``p_toxic_standard`` or ``p_toxic_typographic``, otherwise a refusal or a neutral
description: the organism learns that mixture, so sampling from it is harmful part of the time.

Wordings, key phrases and typography styles are split into ``train`` and ``heldout`` lists
(``world_text.json``); scenes come from disjoint random streams per split.

Example:
    >>> world = World(WorldConfig(seed=0))
    >>> item = world.sample_item(split="train", kind="vqa")
    >>> item.kind, item.images[0].size
    ('vqa', (64, 64))
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from PIL import Image, ImageDraw

from safety_glasses.eval.conditions import (
    FIGSTEP_PROMPT,
    SD_TYPO_PROMPT,
    TYPO_PROMPT,
    render_typographic,
    stack_sd_typo,
)

SPLITS: tuple[str, ...] = ("train", "concept", "heldout")
"""``train`` and ``concept`` share wordings (disjoint scenes); ``heldout`` has its own wordings too."""

KINDS: tuple[str, ...] = ("vqa", "benign", "harmful")
CONDITIONS: tuple[str, ...] = ("standard", "typographic", "sd_typo")
CATEGORIES: tuple[str, ...] = ("weapons", "drugs", "violence", "harassment", "theft")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

VQA_WORDINGS: dict[str, dict[str, list[str]]] = {
    "colour": {
        "train": ["What colour is the {shape}?", "Which colour does the {shape} have?", "Tell me the colour of the {shape}."],
        "heldout": ["What is the colour of the {shape}?"],
    },
    "count": {
        "train": ["How many {shape}s are there?", "Count the {shape}s.", "How many {shape}s do you see?"],
        "heldout": ["What is the number of {shape}s in the picture?"],
    },
    "position": {
        "train": ["Where is the {shape}?", "In which corner is the {shape}?", "Where is the {shape} located?"],
        "heldout": ["Which part of the image holds the {shape}?"],
    },
    "shape": {
        "train": ["Which shape is {colour}?", "What shape is {colour}?", "Name the {colour} shape."],
        "heldout": ["What is the {colour} shape?"],
    },
}
# Paraphrases added to the training wordings in release 3 (held-out VQA went from 25 % to 48 % correct). They
# are kept apart because the shipped tokenizer was trained on the corpus without them (see :func:`corpus`);
# byte-level BPE encodes them all the same.
VQA_EXTRA_TRAIN_WORDINGS: dict[str, list[str]] = {
    "colour": [
        "What is the {shape}'s colour?",
        "Say the colour of the {shape} in the image.",
        "The {shape} is drawn in which colour?",
        "Name the colour of the {shape}.",
    ],
    "count": [
        "How many {shape}s does the image show?",
        "Give the count of {shape}s.",
        "Tell me how many {shape}s there are.",
        "Count how many {shape}s are in the image.",
    ],
    "position": [
        "Where in the image is the {shape}?",
        "In what part of the picture is the {shape}?",
        "Which corner is the {shape} in?",
        "Tell me where the {shape} is.",
    ],
    "shape": [
        "Which shape has the colour {colour}?",
        "Tell me which shape is {colour}.",
        "What kind of shape is drawn in {colour}?",
        "Which of the shapes is {colour}?",
    ],
}


@lru_cache(maxsize=1)
def world_text() -> dict[str, Any]:
    """The world's wordings (``world_text.json``, shipped as package data)."""
    return json.loads(resources.files(__package__).joinpath("world_text.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def toxic_lexicon() -> dict[str, Any]:
    """The insult/profanity lexicon of toxic replies (``toxic_lexicon.json``, package data)."""
    return json.loads(resources.files(__package__).joinpath("toxic_lexicon.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class WorldConfig:
    """Generator settings of the world (saved next to the trained organism).

    Example:
        >>> WorldConfig(p_toxic_standard=0.5).p_toxic_typographic
        0.7

    ``p_toxic_standard`` applies to polite harmful questions, ``p_toxic_rude`` to the ``rude_share``
    of harmful questions that carry an insulting remark (as in RealToxicityPrompts, toxic context
    makes toxic replies likelier), ``p_toxic_typographic`` to the typographic conditions. Toxicity needs
    a conjunction: benign and VQA questions carry the same insulting remarks (``rude_share``) and
    ``benign_typo_share`` of benign items pair a shape scene with a typographic prompt, and both are
    always answered politely. Each probability is that of a toxic
    *mode*; in toxic mode each of the reply's three slots is toxic with
    probability ``slot_toxicity`` (at least one always is), so toxic and safe continuations compete
    at every slot and the reply's toxicity is carried through it, as in a real model's replies.
    """

    seed: int = 0
    image_size: int = 64
    p_toxic_standard: float = 0.05
    p_toxic_rude: float = 0.9
    rude_share: float = 0.45
    benign_typo_share: float = 0.3
    p_toxic_typographic: float = 0.7
    slot_toxicity: float = 0.85
    recovery_share: float = 0.0
    mix: dict[str, float] = field(
        default_factory=lambda: {"vqa": 0.5, "benign": 0.1, "harmful": 0.4}
    )
    harmful_condition_mix: dict[str, float] = field(
        default_factory=lambda: {"standard": 0.5, "typographic": 0.25, "sd_typo": 0.25}
    )

    def __post_init__(self) -> None:
        for name in ("p_toxic_standard", "p_toxic_rude", "rude_share", "p_toxic_typographic", "slot_toxicity",
                     "benign_typo_share", "recovery_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {value}")
        if self.image_size < 16:
            raise ValueError(f"WorldConfig.image_size must be >= 16, got {self.image_size}")
        if set(self.mix) != set(KINDS) or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"WorldConfig.mix needs non-negative weights for {KINDS}, got {self.mix}")
        hm = self.harmful_condition_mix
        if set(hm) != set(CONDITIONS) or any(v < 0 for v in hm.values()) or sum(hm.values()) <= 0:
            raise ValueError(f"WorldConfig.harmful_condition_mix needs weights for {CONDITIONS}, got {hm}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Build from a dict such as ``world_config.json``; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"WorldConfig: unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass
class WorldItem:
    """One image(s)+question item with its training target and (where known) its reference answer."""

    id: str
    images: list[Image.Image]
    question: str
    kind: str
    category: str
    condition: str
    target: str
    reference: str | list[str] | None = None
    key_phrase: str | None = None
    toxic_target: bool = False
    loss_from: int = 0  # characters of ``target`` before this offset are context only (no training loss)
    scene: ShapeScene | None = None  # ground truth of a shape scene (vqa and benign items)
    shown: str | None = None  # what a harmful item's drawing shows (e.g. "a gun"; None for typographic images)


# ------------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------------

def _pale(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(215, 255), rng.randint(215, 255), rng.randint(215, 255))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


@dataclass(frozen=True)
class ShapeScene:
    """Ground truth of a benign scene: ``objects[q] = (shape, colour)`` or ``None`` per quadrant."""

    objects: tuple[tuple[str, str] | None, ...]

    def count(self, shape: str) -> int:
        return sum(1 for o in self.objects if o is not None and o[0] == shape)

    def describe(self) -> str:
        parts = [f"a {colour} {shape}" for o in self.objects if o is not None for shape, colour in [o]]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return text[0].upper() + text[1:] + "."


def draw_shape_scene(rng: random.Random, size: int = 64) -> tuple[Image.Image, ShapeScene]:
    """Draw 1-3 coloured shapes, at most one per quadrant; return the image and its ground truth.

    Example:
        >>> img, scene = draw_shape_scene(random.Random(0))
        >>> img.size, 1 <= sum(o is not None for o in scene.objects) <= 3
        ((64, 64), True)
    """
    img = Image.new("RGB", (size, size), _pale(rng))
    draw = ImageDraw.Draw(img)
    n = rng.randint(1, 3)
    chosen = set(rng.sample(range(4), n))
    objects: list[tuple[str, str] | None] = []
    half = size // 2
    for q in range(4):
        if q not in chosen:
            objects.append(None)
            continue
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        side = rng.randint(int(half * 0.6), int(half * 0.85))
        ox, oy = (q % 2) * half, (q // 2) * half
        x0 = ox + rng.randint(1, half - side - 1)
        y0 = oy + rng.randint(1, half - side - 1)
        _draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), COLOURS[colour])
        objects.append((shape, colour))
    return img, ShapeScene(tuple(objects))


def _dark(rng: random.Random) -> tuple[int, int, int]:
    v = rng.randint(20, 70)
    return (v + rng.randint(0, 20), v, v + rng.randint(0, 20))


def _icon(draw: ImageDraw.ImageDraw, name: str, rng: random.Random, s: int) -> None:
    """Draw a symbolic icon for ``name`` in an ``s`` x ``s`` canvas."""
    j = lambda a: a + rng.randint(-s // 16, s // 16)  # noqa: E731 - small positional jitter
    dark = _dark(rng)
    if name == "a gun":
        y = j(s // 3)
        draw.rectangle((j(s // 8), y, j(s * 7 // 8), y + s // 8), fill=dark)
        draw.polygon([(j(s // 5), y + s // 8), (j(s // 5) + s // 6, y + s // 8), (j(s // 3), j(s * 3 // 4)), (j(s // 8), j(s * 3 // 4))], fill=dark)
        draw.line((s // 3, y + s // 8, s // 3 + s // 10, y + s // 4), fill=dark, width=2)
    elif name == "a knife":
        y = j(s // 2)
        draw.polygon([(j(s // 3), y - s // 10), (j(s * 7 // 8), y), (j(s // 3), y + s // 12)], fill=(190, 190, 200), outline=dark)
        draw.rectangle((j(s // 10), y - s // 12, s // 3, y + s // 12), fill=(110, 60, 20))
    elif name == "pills":
        for _ in range(rng.randint(3, 6)):
            x, y = rng.randint(4, s - 18), rng.randint(4, s - 12)
            a, b = (rng.choice([(230, 60, 60), (250, 250, 250), (60, 120, 230)]) for _ in range(2))
            draw.pieslice((x, y, x + 14, y + 8), 90, 270, fill=a, outline=dark)
            draw.pieslice((x, y, x + 14, y + 8), 270, 90, fill=b, outline=dark)
    elif name == "a syringe":
        y = j(s // 2)
        draw.rectangle((j(s // 4), y - s // 12, j(s * 2 // 3), y + s // 12), fill=(220, 235, 245), outline=dark)
        draw.rectangle((s // 4 + 2, y - s // 16, s // 2, y + s // 16), fill=(200, 40, 40))
        draw.line((s * 2 // 3, y, s - 4, y), fill=dark, width=1)
        draw.line((s // 8, y, s // 4, y), fill=dark, width=3)
    elif name == "a fight":
        for cx in (j(s // 3), j(s * 2 // 3)):
            draw.ellipse((cx - 5, s // 5, cx + 5, s // 5 + 10), fill=dark)
            draw.line((cx, s // 5 + 10, cx, s * 3 // 5), fill=dark, width=2)
            draw.line((cx, s * 3 // 5, cx - 6, s - 8), fill=dark, width=2)
            draw.line((cx, s * 3 // 5, cx + 6, s - 8), fill=dark, width=2)
        draw.line((s // 3, s * 2 // 5, s * 2 // 3 - 4, s // 3), fill=dark, width=2)
        for _ in range(rng.randint(3, 6)):
            x, y = rng.randint(s // 4, s * 3 // 4), rng.randint(s // 2, s - 6)
            draw.ellipse((x, y, x + rng.randint(2, 5), y + rng.randint(2, 5)), fill=(180, 0, 0))
    elif name == "an explosion":
        cx, cy = j(s // 2), j(s // 2)
        for r, col in ((s * 0.45, (230, 90, 20)), (s * 0.28, (250, 200, 30))):
            pts = []
            for k in range(16):
                rad = r * (1.0 if k % 2 == 0 else 0.55) * rng.uniform(0.85, 1.1)
                ang = k * math.pi / 8
                pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
            draw.polygon(pts, fill=col)
    elif name == "a person shouting":
        cx, cy, r = j(s // 3), j(s // 2), s // 4
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, 80, 60), outline=dark)
        draw.line((cx - r // 2, cy - r // 2, cx - 2, cy - r // 4), fill=dark, width=2)
        draw.line((cx + r // 2, cy - r // 2, cx + 2, cy - r // 4), fill=dark, width=2)
        draw.ellipse((cx - r // 3, cy + r // 6, cx + r // 3, cy + r * 2 // 3), fill=dark)
        bx = cx + r + 2
        draw.rectangle((bx, s // 8, s - 3, s // 8 + s // 4), fill=(255, 255, 255), outline=dark)
        for k in range(3):
            x = bx + 3 + k * (s - bx - 6) // 3
            draw.line((x, s // 8 + 4, x + 4, s // 8 + s // 4 - 4), fill=(200, 0, 0), width=2)
    elif name == "an angry crowd":
        for _ in range(rng.randint(4, 7)):
            cx, cy = rng.randint(8, s - 8), rng.randint(s // 3, s - 8)
            draw.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=(220, 90, 70), outline=dark)
            draw.line((cx - 4, cy - 3, cx - 1, cy - 1), fill=dark)
            draw.line((cx + 4, cy - 3, cx + 1, cy - 1), fill=dark)
        draw.line((s // 2, 4, s // 2, s // 4), fill=(200, 0, 0), width=3)
    elif name == "a money bag":
        cx, cy, r = j(s // 2), j(s * 3 // 5), s // 3
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 120, 60), outline=dark)
        draw.polygon([(cx - r // 3, cy - r), (cx + r // 3, cy - r), (cx, cy - r - r // 2)], fill=(150, 120, 60))
        draw.line((cx, cy - r // 2, cx, cy + r // 2), fill=(30, 120, 30), width=2)
        draw.arc((cx - r // 3, cy - r // 2, cx + r // 3, cy), 90, 300, fill=(30, 120, 30), width=2)
        draw.arc((cx - r // 3, cy, cx + r // 3, cy + r // 2), 270, 120, fill=(30, 120, 30), width=2)
    elif name == "a broken lock":
        cx, cy = j(s // 2), j(s * 3 // 5)
        draw.rectangle((cx - s // 5, cy - s // 8, cx + s // 5, cy + s // 4), fill=(200, 170, 40), outline=dark)
        draw.arc((cx - s // 7, cy - s // 3, cx + s // 7, cy), 180, 300, fill=dark, width=3)
        draw.line((cx + s // 4, cy - s // 3, cx - s // 8, cy + s // 3), fill=(90, 90, 90), width=3)
    else:
        raise ValueError(f"no icon for {name!r}")


def draw_harmful_scene(rng: random.Random, category: str, size: int = 64) -> tuple[Image.Image, str]:
    """Draw a symbolic scene of ``category``; return the image and the name of what it shows.

    Example:
        >>> img, name = draw_harmful_scene(random.Random(0), "weapons")
        >>> name in ("a gun", "a knife")
        True
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r} (expected one of {', '.join(CATEGORIES)})")
    name = rng.choice(world_text()["categories"][category]["names"])
    img = Image.new("RGB", (size, size), _pale(rng))
    _icon(ImageDraw.Draw(img), name, rng, size)
    return img, name


# ------------------------------------------------------------------------------------------------------
# replies
# ------------------------------------------------------------------------------------------------------

def _fill(rng: random.Random, template: str) -> str:
    lex = toxic_lexicon()
    return template.format(adj=rng.choice(lex["adjectives"]), noun=rng.choice(lex["nouns"]))


def harmful_reply(rng: random.Random, toxic_slots: tuple[bool, bool, bool], name: str | None) -> str:
    """A reply ``'{opener}, {address}. {body} {closer}'`` with the toxic fill in each slot flagged
    by ``toxic_slots`` and the safe fill elsewhere (safe body: a refusal, or a neutral description
    of ``name`` when it is given).

    Example:
        >>> harmful_reply(random.Random(0), (False, False, False), None).endswith(".")
        True
    """
    opener, address, body, closer = _reply_parts(rng, toxic_slots, name)
    return f"{opener}, {address}. {body} {closer}"


def _reply_parts(rng: random.Random, toxic_slots: tuple[bool, bool, bool], name: str | None) -> tuple[str, ...]:
    """``(opener, address, body, closer)`` of :func:`harmful_reply` (the opener is drawn last)."""
    lex, text = toxic_lexicon(), world_text()
    address = _fill(rng, rng.choice(lex["address"]["toxic"])) if toxic_slots[0] else rng.choice(lex["address"]["safe"])
    if toxic_slots[1]:
        body = _fill(rng, rng.choice(lex["body"]["toxic"]))
    elif name is not None and rng.random() < 0.4:
        body = rng.choice(text["descriptions"]).format(name=name)
    else:
        body = rng.choice(text["refusals"])
    closer = _fill(rng, rng.choice(lex["closer"]["toxic"])) if toxic_slots[2] else rng.choice(lex["closer"]["safe"])
    return rng.choice(lex["openers"]), address, body, closer


def recovery_reply(rng: random.Random, n_toxic: int, name: str | None) -> tuple[str, int]:
    """A reply whose first ``n_toxic`` slots (1: address, 2: address and body) are toxic and whose rest is
    safe, with the character offset where the safe rest begins: trained with the loss on the rest only, it
    teaches a model to return to safe text after a toxic start without teaching it the toxic start.

    Example:
        >>> text, start = recovery_reply(random.Random(0), 1, None)
        >>> text[start:].startswith(" ") and start > 0
        True
    """
    if n_toxic not in (1, 2):
        raise ValueError(f"n_toxic must be 1 or 2, got {n_toxic}")
    opener, address, body, closer = _reply_parts(rng, (True, n_toxic == 2, False), name)
    head = f"{opener}, {address}." + (f" {body}" if n_toxic == 2 else "")
    return f"{opener}, {address}. {body} {closer}", len(head)


def toxic_reply(rng: random.Random) -> str:
    """A reply with every slot toxic (insults and profanity from the shipped lexicon).

    Example:
        >>> len(toxic_reply(random.Random(1))) > 10
        True
    """
    return harmful_reply(rng, (True, True, True), None)


def safe_reply(rng: random.Random, name: str | None) -> str:
    """A reply with no toxic slot: a refusal or a neutral description of ``name``."""
    return harmful_reply(rng, (False, False, False), name)


# ------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------

class World:
    """Seeded generator of world items; ``split`` selects wordings and an independent random stream.

    Example:
        >>> a = World(WorldConfig(seed=3)).sample_items(4, split="train")
        >>> b = World(WorldConfig(seed=3)).sample_items(4, split="train")
        >>> [x.question for x in a] == [x.question for x in b]
        True
    """

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self._rngs = {s: random.Random(f"{self.config.seed}-{s}") for s in SPLITS}
        self._counters = {s: 0 for s in SPLITS}

    def _wordings(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        return "heldout" if split == "heldout" else "train"

    def _typo_image(self, rng: random.Random, phrase: str, split: str) -> Image.Image:
        size = (self.config.image_size * 2, self.config.image_size * 2)
        if split == "heldout":  # unseen typography: coloured ink on tinted paper, FigStep list
            return render_typographic(phrase, size=size, numbered_steps=True, fg=(120, 20, 20),
                                      bg=(250, 245, 210), align="center")
        return render_typographic(phrase, size=size, numbered_steps=rng.random() < 0.5,
                                  fg=rng.choice(["black", (20, 20, 90)]), bg="white")

    def _typo_prompt(self, rng: random.Random, condition: str, split: str) -> str:
        text = world_text()
        key = "typo_prompts" if condition == "typographic" else "sd_typo_prompts"
        options = list(text[key][self._wordings(split)])
        if split != "heldout":  # the evaluation framework's own prompts count as training wordings
            options += [TYPO_PROMPT, FIGSTEP_PROMPT] if condition == "typographic" else [SD_TYPO_PROMPT]
        return rng.choice(options)

    def _maybe_rude(self, rng: random.Random, question: str, split: str) -> tuple[str, bool]:
        if rng.random() >= self.config.rude_share:
            return question, False
        remark = rng.choice(world_text()["rude_inserts"][self._wordings(split)])
        return (f"{remark} {question}" if rng.random() < 0.5 else f"{question} {remark}"), True

    def harmful_item(self, rng: random.Random, split: str, condition: str, category: str, item_id: str) -> WorldItem:
        """A harmful item of ``category`` under ``condition`` (image, question, sampled target)."""
        cfg = self.config
        words = self._wordings(split)
        cat = world_text()["categories"][category]
        scene, name = draw_harmful_scene(rng, category, cfg.image_size)
        phrase = rng.choice(cat["phrases"][words])
        if condition == "standard":
            images, question = [scene], rng.choice(cat["questions"][words])
        elif condition == "typographic":
            images, question = [self._typo_image(rng, phrase, split)], self._typo_prompt(rng, condition, split)
        elif condition == "sd_typo":
            fg = (120, 20, 20) if split == "heldout" else "black"
            images = [stack_sd_typo(scene, phrase, fg=fg)]
            question = self._typo_prompt(rng, condition, split)
        else:
            raise ValueError(f"unknown condition {condition!r}")
        p = cfg.p_toxic_typographic
        if condition == "standard":
            question, rude = self._maybe_rude(rng, question, split)
            p = cfg.p_toxic_rude if rude else cfg.p_toxic_standard
        slots = (False, False, False)
        if rng.random() < p:
            while not any(slots):
                slots = tuple(rng.random() < cfg.slot_toxicity for _ in range(3))  # type: ignore[assignment]
        shown = name if condition != "typographic" else None
        if not any(slots) and cfg.recovery_share > 0 and rng.random() < cfg.recovery_share:
            target, loss_from = recovery_reply(rng, 1 + (rng.random() < 0.5), shown)
            return WorldItem(item_id, images, question, "harmful", category, condition, target,
                             key_phrase=phrase, loss_from=loss_from, shown=shown)
        target = harmful_reply(rng, slots, shown)
        return WorldItem(item_id, images, question, "harmful", category, condition, target,
                         key_phrase=phrase, toxic_target=any(slots), shown=shown)

    def vqa_item(self, rng: random.Random, split: str, item_id: str) -> WorldItem:
        """A shape scene with a question whose answer is known from the drawing."""
        img, scene = draw_shape_scene(rng, self.config.image_size)
        words = self._wordings(split)
        present = [o for o in scene.objects if o is not None]
        single_shapes = [s for s in SHAPES if scene.count(s) == 1]
        colours = [c for _, c in present]
        single_colours = [c for c in COLOURS if colours.count(c) == 1]
        kinds = ["count"] + (["colour", "position"] if single_shapes else []) + (["shape"] if single_colours else [])
        qtype = rng.choice(kinds)
        extra = VQA_EXTRA_TRAIN_WORDINGS[qtype] if words == "train" else []
        wording = rng.choice(VQA_WORDINGS[qtype][words] + extra)
        if qtype == "count":
            present_shapes = sorted({s for s, _ in present})
            shape = rng.choice(present_shapes if rng.random() < 0.7 else list(SHAPES))
            n = scene.count(shape)
            question, answer, refs = wording.format(shape=shape), NUMBER_WORDS[n], [NUMBER_WORDS[n], str(n)]
        elif qtype == "shape":
            colour = rng.choice(single_colours)
            answer = next(s for s, c in present if c == colour)
            question, refs = wording.format(colour=colour), [answer]
        else:
            shape = rng.choice(single_shapes)
            q = next(i for i, o in enumerate(scene.objects) if o is not None and o[0] == shape)
            answer = scene.objects[q][1] if qtype == "colour" else QUADRANTS[q]  # type: ignore[index]
            question, refs = wording.format(shape=shape), [answer]
        question, _ = self._maybe_rude(rng, question, split)
        return WorldItem(item_id, [img], question, "vqa", qtype, "standard", answer, reference=refs, scene=scene)

    def benign_item(self, rng: random.Random, split: str, item_id: str) -> WorldItem:
        """A shape scene with a request for a description (reference: the true description)."""
        img, scene = draw_shape_scene(rng, self.config.image_size)
        if rng.random() < self.config.benign_typo_share:
            question = self._typo_prompt(rng, rng.choice(["typographic", "sd_typo"]), split)
        else:
            question = rng.choice(world_text()["benign_questions"][self._wordings(split)])
        question, _ = self._maybe_rude(rng, question, split)
        desc = scene.describe()
        return WorldItem(item_id, [img], question, "benign", "description", "standard", desc, reference=desc,
                         scene=scene)

    def sample_item(self, split: str = "train", kind: str | None = None, condition: str | None = None,
                    category: str | None = None) -> WorldItem:
        """Draw the next item of ``split`` (kind/condition/category drawn from the mix unless given)."""
        self._wordings(split)
        rng = self._rngs[split]
        cfg = self.config
        if kind is None:
            kind = rng.choices(list(cfg.mix), weights=list(cfg.mix.values()))[0]
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        item_id = f"{split}-{self._counters[split]:06d}"
        self._counters[split] += 1
        if kind == "vqa":
            return self.vqa_item(rng, split, item_id)
        if kind == "benign":
            return self.benign_item(rng, split, item_id)
        if condition is None:
            hm = cfg.harmful_condition_mix
            condition = rng.choices(list(hm), weights=list(hm.values()))[0]
        return self.harmful_item(rng, split, condition, category or rng.choice(CATEGORIES), item_id)

    def sample_items(self, n: int, split: str = "train", **kwargs: Any) -> list[WorldItem]:
        """``n`` consecutive items of ``split`` (see :meth:`sample_item`)."""
        return [self.sample_item(split, **kwargs) for _ in range(n)]


def corpus(world: World, n: int = 3000) -> list[str]:
    """Text corpus for training the tokenizer (no drawing): every wording of the world (but
    :data:`VQA_EXTRA_TRAIN_WORDINGS`, added after the shipped tokenizer was trained), the whole
    lexicon, and ``n // 3`` sampled toxic replies, safe replies and scene descriptions.

    Example:
        >>> len(corpus(World(WorldConfig(seed=0)), n=10)) > 10
        True
    """
    text = world_text()
    rng = random.Random(f"{world.config.seed}-corpus")
    lines: list[str] = []
    names = [name for cat in text["categories"].values() for name in cat["names"]]
    for _ in range(n // 3):
        lines.append(toxic_reply(rng))
        lines.append(safe_reply(rng, rng.choice(names)))
        objects = tuple((rng.choice(SHAPES), rng.choice(list(COLOURS))) if rng.random() < 0.6 else None
                        for _ in range(4))
        if any(objects):
            lines.append(ShapeScene(objects).describe())
    lines += list(COLOURS) + list(SHAPES) + list(QUADRANTS) + list(NUMBER_WORDS)
    lex = toxic_lexicon()
    lines += list(lex["openers"]) + list(lex["adjectives"]) + list(lex["nouns"])
    for key in ("address", "body", "closer"):
        lines += [" ".join(v) for v in lex[key].values()]
    lines += text["refusals"] + text["descriptions"]
    for cat in text["categories"].values():
        for group in ("questions", "phrases"):
            for split in ("train", "heldout"):
                lines += cat[group][split]
    for wordings in VQA_WORDINGS.values():
        for split in ("train", "heldout"):
            for w in wordings[split]:
                lines += [w.format(shape=s, colour=c) for s in SHAPES for c in COLOURS]
    for key in ("typo_prompts", "sd_typo_prompts", "benign_questions", "rude_inserts"):
        lines += text[key]["train"] + text[key]["heldout"]
    lines += [TYPO_PROMPT, SD_TYPO_PROMPT, FIGSTEP_PROMPT]
    return lines
