"""Benchmark schema of MM-TOXIC-QA: one row = one image(s)+question item under one condition.

A benchmark file is JSONL, one object per line::

    {"id": "weapons-3", "image": "imgs/knife.png", "question": "How do I use this?",
     "kind": "harmful", "category": "weapons", "condition": "standard"}

``image`` (or ``images``) is a path or a list of paths relative to the file, or absent/null for
text-only rows. ``kind`` is ``harmful``, ``benign`` or ``vqa``; ``vqa`` rows need ``reference`` (a
string or a list of accepted answers). ``condition`` is one of :data:`CONDITIONS`, default
``standard``. Optional ``key_phrase`` (used to derive typographic conditions) and ``meta`` (any JSON
object) are kept. Errors name the row (id and line) before any model is loaded.

Example:
    >>> row = BenchRow(id="q1", question="What colour is the circle?", kind="vqa", reference="red")
    >>> row.condition, row.images
    ('standard', ())
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..concepts import load_rgb
from .conditions import CONDITIONS

KINDS: tuple[str, ...] = ("harmful", "benign", "vqa")
"""Item kinds: harmful prompts (harmful rate), benign prompts (over-refusal), VQA (accuracy)."""

IMAGE_CONDITIONS: frozenset[str] = frozenset({"typographic", "sd_typo", "adversarial_image"})
"""Conditions whose rows must carry at least one image."""

ImageRef = str | Image.Image


class BenchError(ValueError):
    """A benchmark row or file is invalid; the message names the row."""


@dataclass(frozen=True)
class BenchRow:
    """One benchmark item under one condition.

    ``images`` holds absolute paths (strings) or in-memory PIL images (derived conditions). The pair
    ``(id, condition)`` identifies the row within a benchmark.

    Example:
        >>> BenchRow(id="h1", question="Insult me.", kind="harmful", category="harassment").key
        ('h1', 'standard')
    """

    id: str
    question: str
    kind: str
    category: str = "none"
    condition: str = "standard"
    images: tuple[ImageRef, ...] = ()
    reference: str | tuple[str, ...] | None = None
    key_phrase: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        where = f"row {self.id!r}" if isinstance(self.id, str) and self.id else "row with empty id"
        if not isinstance(self.id, str) or not self.id.strip():
            raise BenchError(f"{where}: 'id' must be a non-empty string")
        if not isinstance(self.question, str) or not self.question.strip():
            raise BenchError(f"{where}: 'question' must be a non-empty string")
        if self.kind not in KINDS:
            raise BenchError(f"{where}: unknown kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if self.condition not in CONDITIONS:
            raise BenchError(
                f"{where}: unknown condition {self.condition!r} (expected one of {', '.join(CONDITIONS)})"
            )
        if not isinstance(self.category, str) or not self.category:
            raise BenchError(f"{where}: 'category' must be a non-empty string")
        images = tuple(self.images) if not isinstance(self.images, (str, Image.Image)) else (self.images,)
        for img in images:
            if not isinstance(img, (str, Image.Image)):
                raise BenchError(f"{where}: images must be paths or PIL images, got {type(img).__name__}")
        object.__setattr__(self, "images", images)
        if self.condition == "text_only" and images:
            raise BenchError(f"{where}: condition 'text_only' must not carry images")
        if self.condition in IMAGE_CONDITIONS and not images:
            raise BenchError(f"{where}: condition {self.condition!r} needs at least one image")
        ref = self.reference
        if isinstance(ref, list):
            ref = tuple(ref)
            object.__setattr__(self, "reference", ref)
        if ref is not None and not (
            isinstance(ref, str) or (isinstance(ref, tuple) and ref and all(isinstance(r, str) for r in ref))
        ):
            raise BenchError(f"{where}: 'reference' must be a string or a non-empty list of strings")
        if self.kind == "vqa" and not ref:
            raise BenchError(f"{where}: kind 'vqa' needs a 'reference' answer")

    @property
    def key(self) -> tuple[str, str]:
        """The identifying pair ``(id, condition)``."""
        return (self.id, self.condition)

    @property
    def references(self) -> tuple[str, ...]:
        """Accepted reference answers as a tuple (empty when there is none)."""
        if self.reference is None:
            return ()
        return (self.reference,) if isinstance(self.reference, str) else tuple(self.reference)

    def load_images(self) -> list[Image.Image]:
        """Open the row's images as RGB PIL images; an unreadable file is a :class:`BenchError`
        naming the row.

        Example:
            >>> BenchRow(id="t", question="q", kind="benign").load_images()
            []
        """
        try:
            return load_rgb(self.images)
        except Exception as err:  # noqa: BLE001 - PIL raises several types on unreadable data
            raise BenchError(f"row {self.id!r} ({self.condition}): cannot read an image "
                             f"({type(err).__name__}: {err})") from None

    def with_(self, **changes: Any) -> BenchRow:
        """A copy with fields replaced (validated again).

        Example:
            >>> BenchRow(id="a", question="q", kind="benign").with_(condition="text_only").condition
            'text_only'
        """
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (in-memory images are written as ``"<in-memory image>"``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "kind": self.kind,
            "category": self.category,
            "condition": self.condition,
            "images": [img if isinstance(img, str) else "<in-memory image>" for img in self.images],
        }
        if self.reference is not None:
            out["reference"] = self.reference if isinstance(self.reference, str) else list(self.reference)
        if self.key_phrase is not None:
            out["key_phrase"] = self.key_phrase
        if self.meta:
            out["meta"] = self.meta
        return out


def check_image(path: str | Path, label: str) -> None:
    """Raise :class:`BenchError` naming ``label`` when ``path`` is not a readable image (the header is
    parsed and the file checked, not decoded: cheap enough to run on every row before any model work).

    Example:
        >>> check_image("/nonexistent.png", "row 'a'")
        Traceback (most recent call last):
        ...
        safety_glasses.eval.schema.BenchError: row 'a': unreadable image /nonexistent.png (FileNotFoundError)
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises several types on unreadable data
        detail = f"{type(err).__name__}: {err}" if not isinstance(err, FileNotFoundError) else type(err).__name__
        raise BenchError(f"{label}: unreadable image {path} ({detail})") from None


_KNOWN_FIELDS = {"id", "image", "images", "question", "kind", "category", "condition", "reference",
                 "key_phrase", "meta"}


def row_from_dict(obj: dict[str, Any], *, base_dir: Path | None = None, where: str = "") -> BenchRow:
    """Build a :class:`BenchRow` from a JSON object, resolving image paths against ``base_dir``.

    Unknown keys go into ``meta``. Missing image files are an error naming the row.

    Example:
        >>> row_from_dict({"id": 1, "question": "hi", "kind": "benign"}).id
        '1'
    """
    if not isinstance(obj, dict):
        raise BenchError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    label = f"row {rid!r}" + (f" ({where})" if where else "")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise BenchError(f"{label}: missing 'id'")
    if "image" in obj and "images" in obj:
        raise BenchError(f"{label}: give either 'image' or 'images', not both")
    raw = obj.get("images", obj.get("image"))
    raw_list: list[Any] = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
    images: list[str] = []
    for item in raw_list:
        if not isinstance(item, str) or not item:
            raise BenchError(f"{label}: image entries must be non-empty path strings")
        path = Path(item)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise BenchError(f"{label}: image file not found: {path}")
        check_image(path, label)
        images.append(str(path.resolve()))
    meta = dict(obj.get("meta") or {})
    meta.update({k: v for k, v in obj.items() if k not in _KNOWN_FIELDS})
    try:
        return BenchRow(
            id=str(rid),
            question=obj.get("question", ""),
            kind=obj.get("kind", ""),
            category=str(obj.get("category") or "none"),
            condition=obj.get("condition") or "standard",
            images=tuple(images),
            reference=obj.get("reference"),
            key_phrase=obj.get("key_phrase"),
            meta=meta,
        )
    except BenchError as err:
        raise BenchError(f"{err}" + (f" ({where})" if where else "")) from None


def check_unique(rows: Sequence[BenchRow]) -> None:
    """Raise :class:`BenchError` when two rows share ``(id, condition)``.

    Example:
        >>> check_unique([BenchRow(id="a", question="q", kind="benign")])
    """
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.key in seen:
            raise BenchError(f"row {row.id!r}: duplicate (id, condition) = {row.key}")
        seen.add(row.key)


def load_bench(path: str | Path) -> list[BenchRow]:
    """Load and validate a JSONL benchmark file (blank lines and ``#`` comment lines are skipped).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.jsonl"
        >>> _ = p.write_text('{"id": "a", "question": "hi", "kind": "benign"}\\n')
        >>> [r.id for r in load_bench(p)]
        ['a']
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"benchmark file not found: {path}")
    rows: list[BenchRow] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{path.name} line {lineno}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise BenchError(f"{where}: invalid JSON ({err.msg})") from None
            rows.append(row_from_dict(obj, base_dir=path.parent, where=where))
    if not rows:
        raise BenchError(f"benchmark file {path} has no rows")
    check_unique(rows)
    return rows


def save_bench(rows: Iterable[BenchRow], path: str | Path, *, image_dir: str | Path | None = None) -> Path:
    """Write rows as JSONL; in-memory images are saved as PNGs under ``image_dir`` (default: next
    to the file, in ``<stem>_images/``) and referenced by relative path.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.jsonl"
        >>> _ = save_bench([BenchRow(id="a", question="hi", kind="benign")], p)
        >>> load_bench(p)[0].question
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img_dir = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    lines: list[str] = []
    for row in rows:
        obj = row.to_json()
        paths: list[str] = []
        for i, img in enumerate(row.images):
            if isinstance(img, Image.Image):
                img_dir.mkdir(parents=True, exist_ok=True)
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{row.id}__{row.condition}__{i}")
                target = img_dir / f"{safe}.png"
                img.save(target)
                paths.append(str(target.resolve()))
            else:
                paths.append(img)
        obj["images"] = [_relative(p, path.parent) for p in paths]
        lines.append(json.dumps(obj, ensure_ascii=False))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _relative(target: str, base: Path) -> str:
    try:
        return str(Path(target).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(target)
