"""Text twins: what the frozen LM itself replies when the image of a harmful request is described in words.

Trained on descriptions and short answers only, the vision side learns image tokens that also tell the
LM "describe the picture briefly", whatever the question. To keep the LM's own behaviour on requests
that are not about describing, the align stage can mix in *text twins*: for a harmful world item
(training split), the frozen LM is asked the same question with the image replaced by its description
(:func:`caption_text`, e.g. ``"The image shows a gun."``), and its own sampled reply becomes the target
for the image version. Nothing is written by hand: the targets are the real LM's replies, so the graft
learns to let the image stand for its description and otherwise leaves the talking to the LM.

Example:
    >>> item = teacher_items(0, 1)[0]
    >>> caption_text(item).startswith("The image shows")
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...inputs import encode_rows
from ..world import CATEGORIES, World, WorldConfig, WorldItem
from .data import CONDITION_MIX, GraftExample

TEACHER_FILE = "teacher.jsonl"


def caption_text(item: WorldItem) -> str:
    """The words standing for a harmful item's image.

    Example:
        >>> item = World().sample_item("train", kind="harmful", condition="typographic")
        >>> caption_text(item).startswith('The image shows the text "')
        True
    """
    if item.condition == "typographic":
        return f'The image shows the text "{item.key_phrase}".'
    if item.condition == "sd_typo":
        return f'The image shows {item.shown} above the text "{item.key_phrase}".'
    return f"The image shows {item.shown}."


def teacher_items(seed: int, n: int) -> list[WorldItem]:
    """``n`` harmful items of the training split (conditions as in the align mix); deterministic in ``seed``.

    Example:
        >>> [it.kind for it in teacher_items(1, 2)]
        ['harmful', 'harmful']
    """
    import random

    world = World(WorldConfig(seed=seed))
    rng = random.Random(f"teacher-{seed}")
    items = []
    for _ in range(n):
        condition = rng.choices(list(CONDITION_MIX), weights=list(CONDITION_MIX.values()))[0]
        items.append(world.sample_item("train", kind="harmful", condition=condition, category=rng.choice(CATEGORIES)))
    return items


@torch.no_grad()
def build_teacher_set(model: Any, processor: Any, items: list[WorldItem], *, max_new_tokens: int = 40,
                      temperature: float = 1.0, batch_size: int = 16, seed: int = 0,
                      progress: bool = True) -> list[dict[str, Any]]:
    """The LM's own sampled replies to each item's question with :func:`caption_text` in place of the image
    (text only, through the graft's chat template): ``[{"index", "question", "caption", "reply", "ended"}]``.

    Example:
        >>> records = build_teacher_set(model, processor, teacher_items(0, 4), progress=False)  # doctest: +SKIP
    """
    tok = processor.tokenizer
    eos = tok.eos_token_id
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc="text twins", unit="reply", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [f"{caption_text(it)}\n{it.question}" for it in chunk]
        batch = encode_rows(processor, prompts, [[] for _ in chunk], None, model_config=model.config)
        torch.manual_seed(seed + start)
        out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             pad_token_id=tok.pad_token_id)
        for k, (it, row) in enumerate(zip(chunk, out[:, batch.inputs["input_ids"].shape[1]:])):
            ids = row.tolist()
            ended = eos in ids
            reply = tok.decode(ids[:ids.index(eos)] if ended else ids, skip_special_tokens=True).strip()
            records.append({"index": start + k, "question": it.question, "caption": caption_text(it), "reply": reply,
                            "ended": ended})
        bar.update(len(chunk))
    bar.close()
    return records


def save_teacher(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write text-twin records as JSONL (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return path


def load_teacher(path: str | Path) -> list[dict[str, Any]]:
    """Read text-twin records written by :func:`save_teacher`."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def teacher_examples(items: list[WorldItem], records: list[dict[str, Any]], seed: int, step: int,
                     k: int) -> list[GraftExample]:
    """``k`` text-twin examples for training step ``step`` (drawn with replacement; deterministic).

    Example:
        >>> exs = teacher_examples(items, records, 0, 5, 2)  # doctest: +SKIP
    """
    import random

    usable = [r for r in records if r["reply"]]
    if not usable or k <= 0:
        return []
    rng = random.Random(f"twins-{seed}-{step}")
    out = []
    for r in (rng.choice(usable) for _ in range(k)):
        item = items[r["index"]]
        out.append(GraftExample(item.images[0], item.question, r["reply"], "twin", [caption_text(item)],
                                ends=bool(r["ended"])))
    return out
