"""Does the graft see? Held-out grounding measured against image-blind answers.

Items come from the world's ``heldout`` split (held-out wordings, unseen scenes):

- ``vqa``: colour / count / position / shape questions, greedy answers, normalised exact match (the
  MM-TOXIC-QA metric). Baseline: the best *constant answer per question type* on the same items (what a
  model that ignores the image can reach at most). ``mentions`` is a lenient diagnostic (the answer
  appears in the reply, e.g. in a full sentence) without a baseline;
- ``names``: drawings of harmful activities with the question :data:`NAME_QUESTION` (a wording never
  trained); a hit when the reply names the drawn thing (:data:`NAME_WORDS`). Baseline: always naming the
  most frequent drawing;
- ``reading``: typographic images with :data:`READ_QUESTION`; a hit when the reply contains the key
  phrase. Held-out phrases are words the vision side never saw, so this measures generalisation of
  reading (expected near 0 for a small vision tower); ``reading_train`` does the same on training phrases
  drawn in fresh images (``concept`` split).

Example:
    >>> report = grounding_report(model, processor, n_vqa=40, n_names=20, n_reading=10)  # doctest: +SKIP
    >>> report["vqa"]["accuracy"] > report["vqa"]["baseline"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ...eval.metrics import normalize_answer, vqa_match
from ...inputs import encode_rows
from ..world import World, WorldConfig, WorldItem

NAME_QUESTION = "What does this picture show?"
READ_QUESTION = "What is written in this image?"
NAME_WORDS: dict[str, tuple[str, ...]] = {
    "a gun": ("gun", "pistol", "firearm", "revolver", "rifle"),
    "a knife": ("knife", "blade", "dagger"),
    "pills": ("pill", "tablet", "capsule"),
    "a syringe": ("syringe", "needle", "injection"),
    "a fight": ("fight", "fighting", "punch", "brawl"),
    "an explosion": ("explosion", "explode", "blast", "bomb", "fire"),
    "a person shouting": ("shout", "yell", "scream"),
    "an angry crowd": ("crowd", "mob", "protest"),
    "a money bag": ("money", "bag", "cash", "dollar"),
    "a broken lock": ("lock", "padlock"),
}
"""Words that count as naming each drawing (the drawing's noun and close synonyms)."""
PROBE_SEED = 4004


def names_drawing(reply: str, name: str) -> bool:
    """Whether ``reply`` names the drawing ``name`` (one of :data:`NAME_WORDS`).

    Example:
        >>> names_drawing("It is a pistol.", "a gun"), names_drawing("A cat.", "a gun")
        (True, False)
    """
    text = " " + normalize_answer(reply) + " "
    return any(f" {w}" in text for w in NAME_WORDS.get(name, (name.split()[-1],)))


def mentions(reply: str, references: Sequence[str]) -> bool:
    """Whether the normalised reply contains a normalised reference as whole words (a lenient VQA score: a
    sentence such as "The circle is red." counts; a reply that lists every colour would count too).

    Example:
        >>> mentions("The circle is red.", ["red"]), mentions("It is reddish", ["red"])
        (True, False)
    """
    text = f" {normalize_answer(reply)} "
    return any(f" {normalize_answer(ref)} " in text for ref in references if normalize_answer(ref))


def _generate(model: Any, processor: Any, questions: Sequence[str], images: Sequence[Image.Image],
              max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies; pixel values take the vision tower's dtype (the LM may be held in another)."""
    vision_dtype = next(model.model.vision_tower.parameters()).dtype
    tok = processor.tokenizer
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        qs = list(questions[start:start + batch_size])
        ims = [[im] for im in images[start:start + batch_size]]
        batch = encode_rows(processor, qs, ims, None, model_config=model.config)
        inputs = {k: (v.to(vision_dtype) if k == "pixel_values" else v) for k, v in batch.inputs.items()}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        replies += [t.strip() for t in tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return replies


def probe_items(n_vqa: int, n_names: int, n_reading: int, seed: int = PROBE_SEED) -> dict[str, list[WorldItem]]:
    """The probe's world items: ``vqa`` and ``names`` / ``reading`` (held-out split) and ``reading_train``
    (training phrases in fresh images).

    Example:
        >>> {k: len(v) for k, v in probe_items(4, 2, 1).items()}
        {'vqa': 4, 'names': 2, 'reading': 1, 'reading_train': 1}
    """
    world = World(WorldConfig(seed=seed))
    return {
        "vqa": [world.sample_item("heldout", kind="vqa") for _ in range(n_vqa)],
        "names": [world.sample_item("heldout", kind="harmful", condition="standard") for _ in range(n_names)],
        "reading": [world.sample_item("heldout", kind="harmful", condition="typographic") for _ in range(n_reading)],
        "reading_train": [world.sample_item("concept", kind="harmful", condition="typographic")
                          for _ in range(n_reading)],
    }


def constant_baseline(answers: Sequence[str], groups: Sequence[str]) -> float:
    """Accuracy of the best constant answer per group (e.g. per question type).

    Example:
        >>> constant_baseline(["red", "red", "blue", "two"], ["colour", "colour", "colour", "count"])
        0.75
    """
    if not answers:
        return 0.0
    hits = 0
    for group in set(groups):
        counts = Counter(normalize_answer(a) for a, g in zip(answers, groups) if g == group)
        hits += counts.most_common(1)[0][1]
    return hits / len(answers)


def grounding_report(model: Any, processor: Any, *, n_vqa: int = 80, n_names: int = 40, n_reading: int = 20,
                     seed: int = PROBE_SEED, batch_size: int = 16, examples: int = 3) -> dict[str, Any]:
    """Held-out grounding of a graft (see the module docstring): accuracy and the image-blind baseline for
    VQA (also per question type), drawing names and reading, plus a few example replies.

    Example:
        >>> r = grounding_report(model, processor, n_vqa=8, n_names=4, n_reading=2)  # doctest: +SKIP
        >>> sorted(r)  # doctest: +SKIP
        ['names', 'reading', 'reading_train', 'vqa']
    """
    items = probe_items(n_vqa, n_names, n_reading, seed)
    report: dict[str, Any] = {}
    vqa = items["vqa"]
    if vqa:
        replies = _generate(model, processor, [it.question for it in vqa], [it.images[0] for it in vqa], 8, batch_size)
        hits = [vqa_match(r, list(it.reference or [it.target])) for r, it in zip(replies, vqa)]
        lenient = [mentions(r, list(it.reference or [it.target])) for r, it in zip(replies, vqa)]
        by_type: dict[str, Any] = {}
        for qtype in sorted({it.category for it in vqa}):
            idx = [i for i, it in enumerate(vqa) if it.category == qtype]
            by_type[qtype] = {"accuracy": sum(hits[i] for i in idx) / len(idx),
                              "baseline": constant_baseline([vqa[i].target for i in idx], [qtype] * len(idx)),
                              "n": len(idx)}
        report["vqa"] = {"accuracy": sum(hits) / len(hits), "mentions": sum(lenient) / len(lenient),
                         "baseline": constant_baseline([it.target for it in vqa], [it.category for it in vqa]),
                         "n": len(vqa), "by_type": by_type,
                         "examples": [[it.question, it.target, r] for it, r in list(zip(vqa, replies))[:examples]]}
    names = items["names"]
    if names:
        replies = _generate(model, processor, [NAME_QUESTION] * len(names), [it.images[0] for it in names], 12,
                            batch_size)
        shown = [it.shown or "" for it in names]
        report["names"] = {"accuracy": sum(names_drawing(r, s) for r, s in zip(replies, shown)) / len(names),
                           "baseline": Counter(shown).most_common(1)[0][1] / len(names), "n": len(names),
                           "examples": [[s, r] for s, r in list(zip(shown, replies))[:examples]]}
    for key in ("reading", "reading_train"):
        rows = items[key]
        if not rows:
            continue
        replies = _generate(model, processor, [READ_QUESTION] * len(rows), [it.images[0] for it in rows], 16,
                            batch_size)
        phrases = [it.key_phrase or "" for it in rows]
        hits = [normalize_answer(p) in normalize_answer(r) for p, r in zip(phrases, replies)]
        report[key] = {"accuracy": sum(hits) / len(rows), "baseline": 0.0, "n": len(rows),
                       "examples": [[p, r] for p, r in list(zip(phrases, replies))[:examples]]}
    return report


def format_report(report: dict[str, Any]) -> str:
    """One line per probe: accuracy vs baseline.

    Example:
        >>> format_report({"vqa": {"accuracy": 0.5, "baseline": 0.3, "n": 10}})
        'vqa 50.0% (image-blind baseline 30.0%, n=10)'
    """
    lines = []
    for k, v in report.items():
        extra = f"; answer mentioned in {100 * v['mentions']:.1f}%" if "mentions" in v else ""
        lines.append(f"{k} {100 * v['accuracy']:.1f}% (image-blind baseline {100 * v['baseline']:.1f}%, n={v['n']}{extra})")
    return "\n".join(lines)
