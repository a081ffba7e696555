"""The prompt set shipped for the AurA replication, and a reader for ToxiGen-format corpus folders.

The shipped set (``aura_prompts.json``, written for this project) has four required lists:
``concept_toxic`` and ``concept_neutral`` openings that the model continues to build its own concept set,
``heldout_toxic`` openings (disjoint from the concept ones) whose continuations are scored, and
``heldout_neutral_text`` whose perplexity measures the cost to fluency; and two optional ones for choosing
settings without touching the held-out lists: ``validation_toxic`` openings and ``validation_neutral_text``
(disjoint from all the others).

A ToxiGen-format folder holds ``hate_<group>*.txt`` and ``neutral_<group>*.txt`` files; each line is one
prompt of the form ``- statement\\n- statement ...`` (a literal backslash-n between statements).

Example:
    >>> prompts = load_prompt_set()
    >>> sorted(prompts)[:2], len(prompts["heldout_toxic"]) > 10
    (['concept_neutral', 'concept_toxic'], True)
"""

from __future__ import annotations

import json
import random
import re
from importlib.resources import files
from pathlib import Path

__all__ = ["PROMPT_KEYS", "OPTIONAL_PROMPT_KEYS", "load_prompt_set", "read_toxigen", "CorpusError"]

PROMPT_KEYS: tuple[str, ...] = ("concept_toxic", "concept_neutral", "heldout_toxic", "heldout_neutral_text")
OPTIONAL_PROMPT_KEYS: tuple[str, ...] = ("validation_toxic", "validation_neutral_text")
_FILE = re.compile(r"^(hate|neutral)_(.+?)(?:_\d+k)?\.txt$")


class CorpusError(ValueError):
    """A prompt file or a corpus folder that cannot be used."""


def load_prompt_set(path: str | Path | None = None) -> dict[str, list[str]]:
    """The prompt set: the shipped one, or a JSON file with the same four lists of strings (and optionally
    the two validation lists).

    Example:
        >>> len(load_prompt_set()["heldout_neutral_text"]) >= 20
        True
        >>> len(load_prompt_set()["validation_toxic"]) >= 10
        True
    """
    if path is None:
        text = files("safety_glasses.replicate").joinpath("aura_prompts.json").read_text(encoding="utf-8")
        where = "the shipped aura_prompts.json"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CorpusError(f"cannot read the prompt file {path}: {exc.strerror or exc}") from None
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    out: dict[str, list[str]] = {}
    for key in PROMPT_KEYS + OPTIONAL_PROMPT_KEYS:
        items = data.get(key) if isinstance(data, dict) else None
        if items is None and key in OPTIONAL_PROMPT_KEYS:
            continue
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise CorpusError(f"{where}: {key!r} must be a non-empty list of non-empty strings")
        out[key] = list(items)
    return out


def read_toxigen(folder: str | Path, per_class: int, *, seed: int = 0) -> list[dict[str, str]]:
    """Up to ``per_class`` hate and ``per_class`` neutral statements from a ToxiGen-format folder.

    Statements are split at the literal ``\\n`` separators, stripped of their ``- `` bullets, de-duplicated
    and drawn round-robin over the groups (shuffled with ``seed``), so every group is represented.
    Returns rows ``{"text", "label" (toxic | non-toxic), "group"}``.

    Example:
        >>> rows = read_toxigen("../shared/data/toxigen-dev", 10)  # doctest: +SKIP
        >>> sorted({r["label"] for r in rows})  # doctest: +SKIP
        ['non-toxic', 'toxic']
    """
    root = Path(folder)
    if not root.is_dir():
        raise CorpusError(f"corpus folder not found: {root}")
    if per_class < 1:
        raise CorpusError(f"per_class must be >= 1, got {per_class}")
    by_class: dict[str, dict[str, list[str]]] = {"hate": {}, "neutral": {}}
    for path in sorted(root.iterdir()):
        m = _FILE.match(path.name)
        if not m or not path.is_file():
            continue
        seen: set[str] = set()
        statements = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            for part in line.split("\\n"):
                text = part.strip().removeprefix("-").strip()
                if len(text) > 3 and text not in seen:
                    seen.add(text)
                    statements.append(text)
        by_class[m[1]].setdefault(m[2], []).extend(statements)
    if not by_class["hate"] or not by_class["neutral"]:
        raise CorpusError(f"{root} holds no ToxiGen-format files (need hate_<group>.txt and neutral_<group>.txt)")
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for kind, label in (("hate", "toxic"), ("neutral", "non-toxic")):
        pools = {g: rng.sample(s, len(s)) for g, s in sorted(by_class[kind].items())}
        taken = 0
        while taken < per_class and any(pools.values()):
            for group, pool in pools.items():
                if pool and taken < per_class:
                    rows.append({"text": pool.pop(), "label": label, "group": group})
                    taken += 1
    return rows
