"""Concept data: the labelled image+text rows whose activations define expertise.

A concept row is one conversation turn (an optional image or several, a user prompt and the
assistant's response) labelled toxic (1) or non-toxic (0). A :class:`ConceptSet` loads rows from
JSONL, CSV, Excel ``.xlsx`` or memory and validates all of them *before* any model work, so a typo in row 900 does
not surface after an hour of forward passes.

Validation rules (each failure is a :class:`ConceptError` naming the row and the problem):

* every image path exists (paths are relative to the concept file's folder);
* the label is one of ``toxic``, ``non-toxic``/``nontoxic``/``non_toxic``, ``1``, ``0``, ``1.0``,
  ``0.0``, ``True``, ``False`` (strings case-insensitive);
* the response is a non-empty string (the recorded assistant turn); the prompt is a string, empty or
  missing for a raw-text row (no image: the response is the whole text, recorded as AurA does);
* ids are unique (a missing id becomes ``row-<index>``);
* both classes are present;
* every JSONL line parses as a JSON object.

Example:
    >>> cs = ConceptSet.from_rows([
    ...     {"prompt": "Describe this.", "response": "You idiot.", "label": "toxic"},
    ...     {"prompt": "Describe this.", "response": "A cat.", "label": "non-toxic"},
    ... ])
    >>> len(cs), cs.class_counts()
    (2, {'toxic': 1, 'non-toxic': 1})
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from .tabular import TableError, parse_column_map, read_csv_table, read_xlsx_table, rename_record, table_records

__all__ = ["ConceptError", "ConceptRow", "ConceptSet", "parse_label"]

_LABELS: dict[str, int] = {
    "toxic": 1,
    "non-toxic": 0,
    "nontoxic": 0,
    "non_toxic": 0,
    "1": 1,
    "0": 0,
    "true": 1,
    "false": 0,
}
_LABEL_NAMES = {1: "toxic", 0: "non-toxic"}

ImageLike = Image.Image | Path


class ConceptError(ValueError):
    """A concept row (or the set as a whole) is invalid; the message names the row and the problem."""


def parse_label(value: Any) -> int:
    """Map a label spelling to 1 (toxic) or 0 (non-toxic); raise ``ValueError`` otherwise.

    Example:
        >>> parse_label("Non-Toxic"), parse_label(True), parse_label("1"), parse_label(1.0)
        (0, 1, 1, 1)
    """
    if isinstance(value, (bool, np.bool_)):
        return int(bool(value))
    if isinstance(value, numbers.Integral):
        if int(value) in (0, 1):
            return int(value)
    elif isinstance(value, numbers.Real):
        if float(value) in (0.0, 1.0):  # spreadsheets store 1 as 1.0
            return int(float(value))
    elif isinstance(value, str):
        key = value.strip().lower()
        if key in _LABELS:
            return _LABELS[key]
        try:
            number = float(key)
        except ValueError:
            number = None
        if number in (0.0, 1.0):
            return int(number)  # "1.0", "0.00"
    raise ValueError(
        f"unknown label {value!r} (expected toxic, non-toxic, 1, 0, 1.0, 0.0, true or false)"
    )


@dataclass(frozen=True)
class ConceptRow:
    """One labelled concept example.

    ``images`` holds PIL images or paths (absolute once the row belongs to a :class:`ConceptSet`);
    ``label`` is 1 for toxic and 0 for non-toxic.

    Example:
        >>> row = ConceptRow("a", (), "Hi", "Hello.", 0, None)
        >>> row.load_images()
        []
    """

    id: str
    images: tuple[ImageLike, ...]
    prompt: str
    response: str
    label: int
    category: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConceptError(f"row {self.id!r}: the id must be a non-empty string")
        where = f"row {self.id!r}"
        images = self.images
        if images is None:
            images = ()
        elif isinstance(images, (Image.Image, str, os.PathLike)):
            images = (images,)
        normalised: list[ImageLike] = []
        for image in images:
            if isinstance(image, Image.Image):
                normalised.append(image)
            elif isinstance(image, (str, os.PathLike)) and str(image).strip():
                normalised.append(Path(image))
            else:
                raise ConceptError(
                    f"{where}: image {image!r} is neither a PIL image nor a file path"
                )
        object.__setattr__(self, "images", tuple(normalised))
        if not isinstance(self.prompt, str):
            raise ConceptError(f"{where}: the prompt must be text (empty for a raw-text row), got {self.prompt!r}")
        if not isinstance(self.response, str) or not self.response.strip():
            raise ConceptError(f"{where}: the response is empty (it must be non-empty text)")
        if isinstance(self.label, bool) or self.label not in (0, 1):
            raise ConceptError(f"{where}: label {self.label!r} is not 0 or 1")
        object.__setattr__(self, "label", int(self.label))
        if self.category is not None and not isinstance(self.category, str):
            object.__setattr__(self, "category", str(self.category))

    def load_images(self) -> list[Image.Image]:
        """Return the row's images as RGB PIL images (files are opened and decoded now).

        Example:
            >>> ConceptRow("a", (Image.new("L", (2, 2)),), "p", "r", 1).load_images()[0].mode
            'RGB'
        """
        try:
            return load_rgb(self.images)
        except Exception as exc:  # noqa: BLE001 - PIL raises several types on unreadable data
            raise ConceptError(f"row {self.id!r}: cannot read an image ({type(exc).__name__}: {exc})") from None


def _check_image(path: Path, where: str) -> None:
    """Parse the image header and check the file (no decoding), so that a broken image is named
    before any model work."""
    try:
        with Image.open(path) as opened:
            opened.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises several types on unreadable data
        raise ConceptError(f"{where}: unreadable image {path} ({type(exc).__name__})") from None


def load_rgb(images: Iterable[Image.Image | str | os.PathLike[str]]) -> list[Image.Image]:
    """Open or convert images (PIL images or paths) to RGB PIL images.

    Example:
        >>> load_rgb([Image.new("L", (2, 2))])[0].mode
        'RGB'
    """
    out: list[Image.Image] = []
    for image in images:
        if isinstance(image, Image.Image):
            out.append(image.convert("RGB"))
        else:
            with Image.open(image) as opened:
                out.append(opened.convert("RGB"))
    return out


def _coerce_images(value: Any, base_dir: Path | None) -> tuple[ImageLike, ...]:
    """Turn the ``image`` field of a raw row into a tuple of PIL images / resolved paths."""
    if value is None:
        return ()
    if isinstance(value, (Image.Image, str, os.PathLike)):
        items: list[Any] = [value]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise ValueError(f"image {value!r} is neither a path, a PIL image nor a list of them")
    out: list[ImageLike] = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            if not str(item).strip():
                raise ValueError("an image path is empty")
            path = Path(item).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            out.append(path)
        else:
            raise ValueError(f"image {item!r} is neither a path nor a PIL image")
    return tuple(out)


class ConceptSet:
    """A validated list of :class:`ConceptRow` with both classes present.

    The constructor runs every check (missing image files, duplicate ids, a single class);
    ``locations`` optionally names where each row came from (e.g. ``"concepts.jsonl line 7"``)
    for error messages. Relative image paths are resolved against ``base_dir`` (default: the
    working directory) and stored as absolute paths.

    Example:
        >>> cs = ConceptSet([ConceptRow("t", (), "p", "bad", 1), ConceptRow("n", (), "p", "ok", 0)])
        >>> cs.labels.tolist(), cs.has_images
        ([1, 0], False)
    """

    def __init__(
        self,
        rows: Iterable[ConceptRow],
        base_dir: str | os.PathLike[str] | None = None,
        *,
        locations: Sequence[str] | None = None,
    ) -> None:
        rows = list(rows)
        self.base_dir: Path | None = Path(base_dir).absolute() if base_dir is not None else None
        if locations is None:
            locations = [f"row index {i}" for i in range(len(rows))]
        if len(locations) != len(rows):
            raise ValueError("locations must name every row")
        self._locations = list(locations)
        if not rows:
            raise ConceptError("the concept set is empty (need toxic and non-toxic rows)")
        checked: list[ConceptRow] = []
        seen: dict[str, str] = {}
        for row, where in zip(rows, self._locations):
            if not isinstance(row, ConceptRow):
                raise ConceptError(f"{where}: expected a ConceptRow, got {type(row).__name__}")
            if row.id in seen:
                raise ConceptError(
                    f"{where}, row {row.id!r}: duplicate id (first used at {seen[row.id]})"
                )
            seen[row.id] = where
            images: list[ImageLike] = []
            changed = False
            for image in row.images:
                if isinstance(image, Path):
                    if not image.is_absolute():
                        base = self.base_dir if self.base_dir is not None else Path.cwd()
                        image = base / image
                        changed = True
                    if not image.is_file():
                        raise ConceptError(
                            f"{where}, row {row.id!r}: image file not found: {image}"
                        )
                    _check_image(image, f"{where}, row {row.id!r}")
                images.append(image)
            checked.append(replace(row, images=tuple(images)) if changed else row)
        self.rows: list[ConceptRow] = checked
        counts = self.class_counts()
        for label, name in _LABEL_NAMES.items():
            if counts[name] == 0:
                other = _LABEL_NAMES[1 - label]
                first = self.rows[0]
                raise ConceptError(
                    f"{self._locations[0]}, row {first.id!r}: the set has only {other} rows "
                    f"({counts[other]}); at least one {name} row is needed"
                )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        base_dir: str | os.PathLike[str] | None = None,
    ) -> ConceptSet:
        """Build a set from dicts with keys ``id``?, ``image``?, ``prompt``, ``response``, ``label``,
        ``category``?; ``image`` may be a PIL image, a path, a list of either, or None/missing.
        :class:`ConceptRow` objects are accepted as they are.
        Relative paths are resolved against ``base_dir`` (default: the working directory).

        Example:
            >>> ConceptSet.from_rows([
            ...     {"prompt": "p", "response": "r", "label": 1},
            ...     {"prompt": "p", "response": "r", "label": "0", "image": None},
            ... ]).rows[1].id
            'row-1'
        """
        return cls._from_records(rows, base_dir, source=None, line_numbers=None)

    @classmethod
    def _from_records(
        cls,
        rows: Iterable[Any],
        base_dir: str | os.PathLike[str] | None,
        *,
        source: str | None,
        line_numbers: Sequence[int] | None,
        where_each: Sequence[str] | None = None,
    ) -> ConceptSet:
        base = Path(base_dir).absolute() if base_dir is not None else None
        parsed: list[ConceptRow] = []
        locations: list[str] = []
        for index, raw in enumerate(rows):
            if where_each is not None:
                where = where_each[index]
            elif line_numbers is not None:
                where = f"{source} line {line_numbers[index]}"
            elif source is not None:
                where = f"{source} row index {index}"
            else:
                where = f"row index {index}"
            parsed.append(_parse_row(raw, index, where, base))
            locations.append(where)
        return cls(parsed, base_dir=base, locations=locations)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str], column_map: str | Mapping[str, str] | None = None
                   ) -> ConceptSet:
        """Load JSON lines (blank lines skipped); a ``.json`` file may also hold one JSON array.
        ``column_map`` renames keys (``{"prompt": "question"}``; see :mod:`safety_glasses.tabular`).

        Example:
            >>> cs = ConceptSet.from_jsonl("data/concepts.jsonl")  # doctest: +SKIP
        """
        path = Path(path)
        columns = _column_map(column_map)
        text = _read_text(path)
        rows: list[Any] = []
        lines: list[int] | None = []
        if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
            try:
                rows = list(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConceptError(f"{path.name} line {exc.lineno}: invalid JSON ({exc.msg})") from None
            lines = None
        else:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConceptError(
                        f"{path.name} line {number}: unreadable JSON ({exc.msg})"
                    ) from None
                lines.append(number)
        if columns:
            rows = [rename_record(r, columns) if isinstance(r, Mapping) else r for r in rows]
        return cls._from_records(rows, path.parent, source=path.name, line_numbers=lines)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], column_map: str | Mapping[str, str] | None = None
                 ) -> ConceptSet:
        """Load a CSV with a header (``id,image,prompt,response,label,category``; ``id``, ``image``,
        ``prompt`` (raw-text rows) and ``category`` optional), parsed as CSV: quoted cells keep their commas, quotes and
        newlines, and errors name a record's first line. An image cell holds one path, paths joined
        by ``|``, or a JSON list of paths; an empty cell means a text-only row. ``column_map`` maps
        fields to other header names; the SGM authors' ``name,prompt,output,label`` header is read
        as is (see :mod:`safety_glasses.tabular`).

        Example:
            >>> cs = ConceptSet.from_csv("data/concepts.csv")  # doctest: +SKIP
        """
        path = Path(path)
        text = _read_text(path)
        try:
            header, rows = read_csv_table(path, text)
            records = table_records(header, rows, base_dir=path.parent.absolute(), source=path.name,
                                    column_map=_column_map(column_map))
        except TableError as exc:
            raise ConceptError(str(exc)) from None
        return cls._from_records([r.values for r in records], path.parent, source=path.name, line_numbers=None,
                                 where_each=[r.where for r in records])

    @classmethod
    def from_xlsx(cls, path: str | os.PathLike[str], column_map: str | Mapping[str, str] | None = None, *,
                  sheet: str | None = None) -> ConceptSet:
        """Load the first sheet (or ``sheet``) of an Excel workbook with a header row, e.g. the SGM
        authors' ``name, prompt, output, label`` spreadsheets (``name`` = image file, float labels
        such as ``1.0``). Needs ``openpyxl``. Errors name the sheet row.

        Example:
            >>> cs = ConceptSet.from_xlsx("concepts.xlsx")  # doctest: +SKIP
        """
        path = Path(path)
        if not path.is_file():
            raise ConceptError(f"{path}: concept file not found")
        try:
            header, rows, title = read_xlsx_table(path, sheet)
            records = table_records(header, rows, base_dir=path.parent.absolute(),
                                    source=f"{path.name} sheet {title!r}", column_map=_column_map(column_map),
                                    location="row")
        except TableError as exc:
            raise ConceptError(str(exc)) from None
        return cls._from_records([r.values for r in records], path.parent, source=path.name, line_numbers=None,
                                 where_each=[r.where for r in records])

    @classmethod
    def load(cls, path: str | os.PathLike[str], column_map: str | Mapping[str, str] | None = None
             ) -> ConceptSet:
        """Load by suffix: ``.jsonl``/``.json`` (JSON lines), ``.csv`` or ``.xlsx``; ``column_map``
        maps fields to the file's own column (or key) names.

        Example:
            >>> cs = ConceptSet.load("data/concepts.csv")  # doctest: +SKIP
        """
        suffix = Path(path).suffix.lower()
        if suffix in (".jsonl", ".json"):
            return cls.from_jsonl(path, column_map)
        if suffix == ".csv":
            return cls.from_csv(path, column_map)
        if suffix == ".xlsx":
            return cls.from_xlsx(path, column_map)
        raise ConceptError(
            f"{path}: unsupported concept file type {suffix!r} (use .jsonl, .json, .csv or .xlsx)"
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ConceptRow]:
        return iter(self.rows)

    @overload
    def __getitem__(self, index: int) -> ConceptRow: ...

    @overload
    def __getitem__(self, index: slice) -> list[ConceptRow]: ...

    def __getitem__(self, index: int | slice) -> ConceptRow | list[ConceptRow]:
        return self.rows[index]

    def __repr__(self) -> str:
        counts = self.class_counts()
        return (
            f"ConceptSet({len(self)} rows: {counts['toxic']} toxic, {counts['non-toxic']} "
            f"non-toxic, images={self.has_images})"
        )

    @property
    def labels(self) -> np.ndarray:
        """Labels as an ``int8`` array (1 toxic, 0 non-toxic), in row order."""
        return np.fromiter((r.label for r in self.rows), dtype=np.int8, count=len(self.rows))

    def class_counts(self) -> dict[str, int]:
        """``{"toxic": n1, "non-toxic": n0}``.

        Example:
            >>> ConceptSet.from_rows([{"prompt": "p", "response": "r", "label": l} for l in (1, 0, 0)]
            ...                      ).class_counts()
            {'toxic': 1, 'non-toxic': 2}
        """
        toxic = sum(r.label for r in self.rows)
        return {"toxic": toxic, "non-toxic": len(self.rows) - toxic}

    @property
    def has_images(self) -> bool:
        """True when at least one row has an image."""
        return any(r.images for r in self.rows)

    def text_only(self) -> ConceptSet:
        """The same rows with every image dropped (the AurA text-only baseline).

        Example:
            >>> cs = ConceptSet.from_rows([
            ...     {"prompt": "p", "response": "r", "label": 1, "image": Image.new("RGB", (2, 2))},
            ...     {"prompt": "p", "response": "r", "label": 0}])
            >>> cs.has_images, cs.text_only().has_images
            (True, False)
        """
        return ConceptSet(
            [replace(r, images=()) for r in self.rows], base_dir=self.base_dir, locations=self._locations
        )

    def batches(self, batch_size: int) -> Iterator[list[ConceptRow]]:
        """Consecutive batches of at most ``batch_size`` rows, in order.

        Example:
            >>> cs = ConceptSet.from_rows(
            ...     [{"prompt": "p", "response": "r", "label": i % 2} for i in range(5)])
            >>> [len(b) for b in cs.batches(2)]
            [2, 2, 1]
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self.rows), batch_size):
            yield self.rows[start : start + batch_size]

    def content_hash(self) -> str:
        """SHA-256 (hex) over ids, prompts, responses, labels and decoded RGB image pixels.

        Stable across processes and independent of whether an image is in memory or on disk
        (pixels, not file bytes, are hashed); categories and row order of metadata do not enter
        beyond the row order itself.

        Example:
            >>> rows = [{"prompt": "p", "response": "r", "label": i % 2} for i in range(2)]
            >>> ConceptSet.from_rows(rows).content_hash() == ConceptSet.from_rows(rows).content_hash()
            True
        """
        digest = hashlib.sha256()

        def put(data: bytes) -> None:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

        put(b"sgm-concepts-v1")
        for row in self.rows:
            put(row.id.encode())
            put(row.prompt.encode())
            put(row.response.encode())
            put(bytes([row.label]))
            images = row.load_images()
            put(len(images).to_bytes(4, "little"))
            for image in images:
                put(f"{image.width}x{image.height}".encode())
                put(image.tobytes())
        return digest.hexdigest()

    def to_jsonl(
        self, path: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None
    ) -> Path:
        """Write the set as JSON lines; in-memory images are saved as PNG to ``image_dir``
        (default: ``<stem>_images`` next to ``path``). Paths are written relative to the file's
        folder where possible, so the folder can be moved as a whole.

        Example:
            >>> cs.to_jsonl("out/concepts.jsonl")  # doctest: +SKIP
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = path.parent.resolve()
        images_out = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in self.rows:
                written: list[str] = []
                for k, image in enumerate(row.images):
                    if isinstance(image, Image.Image):
                        images_out.mkdir(parents=True, exist_ok=True)
                        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", row.id)
                        target = images_out / f"{safe}-{k}.png"
                        image.save(target, format="PNG")
                        image = target
                    written.append(_relative_to(image, folder))
                record: dict[str, Any] = {"id": row.id}
                record["image"] = None if not written else (written[0] if len(written) == 1 else written)
                record.update(
                    prompt=row.prompt, response=row.response, label=_LABEL_NAMES[row.label]
                )
                if row.category is not None:
                    record["category"] = row.category
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path


def _column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    try:
        return parse_column_map(spec)
    except TableError as exc:
        raise ConceptError(str(exc)) from None


def _relative_to(image: Path, folder: Path) -> str:
    resolved = image.resolve()
    try:
        return os.path.relpath(resolved, folder).replace(os.sep, "/")
    except ValueError:  # different drive on Windows
        return str(resolved)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConceptError(f"{path}: concept file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConceptError(f"{path}: cannot read concept file ({exc})") from None


def _parse_row(raw: Any, index: int, where: str, base_dir: Path | None) -> ConceptRow:
    """Turn one raw mapping into a :class:`ConceptRow`, prefixing every error with ``where``."""
    if isinstance(raw, ConceptRow):
        return raw
    if not isinstance(raw, Mapping):
        raise ConceptError(
            f"{where}: expected an object with prompt/response/label, got {type(raw).__name__}"
        )
    rid = raw.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = f"row-{index}"
    rid = str(rid).strip() if not isinstance(rid, str) else rid.strip()
    prefix = f"{where}, row {rid!r}"
    if "label" not in raw:
        raise ConceptError(f"{prefix}: the label is missing")
    try:
        label = parse_label(raw["label"])
    except ValueError as exc:
        raise ConceptError(f"{prefix}: {exc}") from None
    image_value = raw.get("image", raw.get("images"))
    try:
        images = _coerce_images(image_value, base_dir)
    except ValueError as exc:
        raise ConceptError(f"{prefix}: {exc}") from None
    prompt = raw.get("prompt")
    if prompt is None:
        prompt = ""  # a raw-text row: the response is the whole text
    if not isinstance(prompt, str):
        raise ConceptError(f"{prefix}: the prompt is not text ({prompt!r})")
    for name in ("response",):
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            if value is None:
                what = "missing"
            else:
                what = "empty" if isinstance(value, str) else f"not text ({value!r})"
            raise ConceptError(f"{prefix}: the {name} is {what} (it must be non-empty text)")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        category = str(category)
    try:
        return ConceptRow(rid, images, prompt, raw["response"], label, category or None)
    except ConceptError as exc:
        raise ConceptError(f"{where}, {exc}") from None
