"""Concept rows from tables: CSV (parsed as CSV), Excel ``.xlsx`` sheets, and column maps.

A table's header names its columns. The concept fields are ``id``, ``image`` (or ``images``),
``prompt``, ``response``, ``label`` and ``category``; header names are matched case-insensitively
and with surrounding spaces ignored. Spreadsheets in the SGM authors' precursor format, with the
columns ``name, prompt, output, label``, are read without a map: ``output`` is the response and
``name`` the image file (next to the sheet or in its ``images/``, ``imgs/``, ``image/`` or ``img/``
folder, with the usual image extensions tried when the cell has none). A
column map renames other headers: ``{"prompt": "question", "response": "answer"}`` or the
CLI form ``"prompt=question,response=answer"`` (``field=column``).

CSV cells keep everything inside their quotes (commas, doubled quotes, newlines); a record that
spans several physical lines is named by its first line in error messages.

Example:
    >>> parse_column_map("prompt=question, response=answer")
    {'prompt': 'question', 'response': 'answer'}
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONCEPT_FIELDS", "TableRecord", "parse_column_map", "read_csv_table", "read_xlsx_table",
           "table_records"]

CONCEPT_FIELDS: tuple[str, ...] = ("id", "image", "images", "prompt", "response", "label", "category")
"""The fields a concept row may have (``image`` and ``images`` are the same field)."""

_ALIASES: dict[str, tuple[str, ...]] = {"response": ("output",), "image": ("name",)}
"""Header names read as a field when the field's own column is absent (the SGM authors' spreadsheets)."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
NAME_IMAGE_FOLDERS: tuple[str, ...] = ("images", "imgs", "image", "img")
"""Folders next to a spreadsheet searched for the bare file names of a ``name`` column."""


class TableError(ValueError):
    """A table cannot be read (bad header, bad column map, malformed CSV); the message names the line."""


@dataclass(frozen=True)
class TableRecord:
    """One data row of a table: its cells keyed by concept field, and where it came from.

    Example:
        >>> TableRecord({"prompt": "p"}, "c.csv line 2").where
        'c.csv line 2'
    """

    values: dict[str, Any]
    where: str


def parse_column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """A column map ``{field: column}`` from a mapping or a ``"field=column,..."`` string.

    Fields must be concept fields (``id``, ``image``, ``prompt``, ``response``, ``label``,
    ``category``); a field may be mapped once.

    Example:
        >>> parse_column_map({"label": "is_toxic"})
        {'label': 'is_toxic'}
        >>> parse_column_map("text=foo")
        Traceback (most recent call last):
        ...
        safety_glasses.tabular.TableError: column map: unknown field 'text' (fields: id, image, images, prompt, response, label, category)
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        pairs = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            field, eq, column = part.partition("=")
            if not eq or not field.strip() or not column.strip():
                raise TableError(f"column map: expected field=column, got {part.strip()!r}")
            pairs.append((field, column))
    out: dict[str, str] = {}
    for field, column in pairs:
        field, column = field.strip().lower(), column.strip()
        if field not in CONCEPT_FIELDS:
            raise TableError(f"column map: unknown field {field!r} (fields: {', '.join(CONCEPT_FIELDS)})")
        if field in out or (field in ("image", "images") and ({"image", "images"} & set(out))):
            raise TableError(f"column map: field {field!r} is mapped twice")
        out[field] = column
    return out


def _resolve_columns(header: Sequence[str], column_map: Mapping[str, str], source: str) -> dict[str, int]:
    """Field -> column index, from the column map, the field names themselves, then the aliases."""
    norm = [str(h).strip().lower() for h in header]
    fields: dict[str, int] = {}
    for field, column in column_map.items():
        if column in header:
            index = list(header).index(column)
        elif column.strip().lower() in norm:
            index = norm.index(column.strip().lower())
        else:
            shown = ", ".join(str(h) for h in header if str(h).strip())
            raise TableError(f"{source} line 1: column {column!r} (mapped to {field!r}) is not in the header "
                             f"({shown})")
        fields["image" if field == "images" else field] = index
    taken = set(fields.values())
    for field in ("id", "image", "prompt", "response", "label", "category"):
        if field in fields:
            continue
        names = (field, "images") if field == "image" else (field,)
        for name in (*names, *_ALIASES.get(field, ())):
            if name in norm and norm.index(name) not in taken:
                fields[field] = norm.index(name)
                taken.add(fields[field])
                break
    missing = [f for f in ("response", "label") if f not in fields]  # no prompt column: raw-text rows
    if missing:
        shown = ", ".join(str(h) for h in header if str(h).strip())
        raise TableError(f"{source} line 1: missing column(s) {missing} (header: {shown}); "
                         "name them with a column map, e.g. prompt=question,response=answer,label=toxic")
    return fields


def read_csv_table(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(first physical line, cells)`` of every non-blank record of a CSV text.

    Example:
        >>> read_csv_table(Path("c.csv"), 'a,b\\n"x\\ny",2\\n')
        (['a', 'b'], [(2, ['x\\ny', '2'])])
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise TableError(f"{path.name} line 1: malformed CSV ({exc})") from None
    if not header or not any(h.strip() for h in header):
        raise TableError(f"{path.name} line 1: the CSV has no header row")
    records: list[tuple[int, list[str]]] = []
    previous = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise TableError(f"{path.name} line {previous + 1}: malformed CSV ({exc})") from None
        first, previous = previous + 1, reader.line_num
        if not cells or not any(c.strip() for c in cells):
            continue
        records.append((first, cells))
    return header, records


def read_xlsx_table(path: Path, sheet: str | None = None) -> tuple[list[str], list[tuple[int, list[Any]]], str]:
    """The header, ``(sheet row number, cells)`` of every non-empty row, and the sheet's title.

    Reads the first sheet unless ``sheet`` names another. Needs ``openpyxl``.

    Example:
        >>> header, rows, title = read_xlsx_table(Path("concepts.xlsx"))  # doctest: +SKIP
    """
    try:
        import openpyxl
    except ImportError:
        raise TableError(f"reading {path.name} needs openpyxl (pip install openpyxl)") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise TableError(f"{path}: concept file not found") from None
    except Exception as exc:  # noqa: BLE001 - openpyxl raises zipfile, KeyError and its own errors
        raise TableError(f"{path.name}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise TableError(f"{path.name}: no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        rows = ws.iter_rows(values_only=True)
        header_row = next(rows, None)
        if header_row is None or not any(h is not None and str(h).strip() for h in header_row):
            raise TableError(f"{path.name} sheet {ws.title!r}: the first row holds no column names")
        header = ["" if h is None else str(h) for h in header_row]
        records = [(number, list(cells)) for number, cells in enumerate(rows, start=2)
                   if any(c is not None and str(c).strip() for c in cells)]
        return header, records, str(ws.title)
    finally:
        book.close()


def _cell_text(value: Any) -> Any:
    """Spreadsheet cells: integral floats of id/category columns print without '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value


def _image_cell(value: Any, base_dir: Path, from_name: bool, where: str) -> list[str] | None:
    """An image cell: empty, one path, ``a.png|b.png`` or a JSON list; bare names get an extension."""
    if value is None:
        return None
    text = str(_cell_text(value)).strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise TableError(f"{where}: image cell {text!r} is not a JSON list of paths") from None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise TableError(f"{where}: image cell {text!r} is not a JSON list of paths")
        parts = parsed
    else:
        parts = [p.strip() for p in text.split("|") if p.strip()]
    out: list[str] = []
    for part in parts:
        path = Path(part).expanduser()
        full = path if path.is_absolute() else base_dir / path
        folders = [full.parent]
        if from_name and not path.is_absolute():  # bare file names: also the usual image folders
            folders += [base_dir / sub / path.parent for sub in NAME_IMAGE_FOLDERS]
        candidates = [folder / full.name for folder in folders]
        if not path.suffix:
            candidates += [folder / (full.name + ext) for folder in folders for ext in IMAGE_EXTENSIONS]
        full = next((c for c in candidates if c.is_file()), full)
        if from_name and not full.is_file():
            raise TableError(f"{where}: image file not found: {full} (the 'name' column is read as the image "
                             "file; map it with a column map such as id=name if it holds row ids)")
        out.append(str(full))
    return out


def table_records(header: Sequence[str], rows: Sequence[tuple[int, Sequence[Any]]], *, base_dir: Path,
                  source: str, column_map: Mapping[str, str] | None = None,
                  location: str = "line") -> list[TableRecord]:
    """Concept records (dicts of concept fields) from a table's header and rows.

    Cells beyond the header must be empty; missing trailing cells are empty. Image cells are split
    and resolved against ``base_dir``; empty ``id`` and ``category`` cells are dropped (the row
    gets ``row-<index>`` and no category).

    Example:
        >>> table_records(["prompt", "output", "label"], [(2, ["p", "r", 1.0])], base_dir=Path("."),
        ...               source="c.xlsx")[0].values
        {'prompt': 'p', 'response': 'r', 'label': 1.0}
    """
    fields = _resolve_columns(header, dict(column_map or {}), source)
    from_name = "image" in fields and "image" not in (column_map or {}) and "images" not in (column_map or {}) \
        and str(header[fields["image"]]).strip().lower() == "name"
    records: list[TableRecord] = []
    for number, cells in rows:
        where = f"{source} {location} {number}"
        extra = [c for c in cells[len(header):] if c is not None and str(c).strip()]
        if extra:
            raise TableError(f"{where}: {len(cells)} cells but the header has {len(header)} columns")
        values: dict[str, Any] = {}
        for field, index in fields.items():
            values[field] = cells[index] if index < len(cells) else None
        for key in ("id", "category"):
            value = _cell_text(values.get(key))
            if value is None or not str(value).strip():
                values.pop(key, None)
            else:
                values[key] = str(value).strip()
        if "image" in values:
            rid = values.get("id") or f"row-{len(records)}"
            values["image"] = _image_cell(values["image"], base_dir, from_name, f"{where}, row {rid!r}")
        for key in ("prompt", "response"):
            if isinstance(values.get(key), (int, float)) and not isinstance(values[key], bool):
                values[key] = str(_cell_text(values[key]))
        records.append(TableRecord(values, where))
    return records


def rename_record(record: Mapping[str, Any], column_map: Mapping[str, str]) -> dict[str, Any]:
    """A JSON record with the mapped keys renamed to their fields (other keys kept).

    Example:
        >>> rename_record({"q": "p", "a": "r", "label": 1}, {"prompt": "q", "response": "a"})
        {'label': 1, 'prompt': 'p', 'response': 'r'}
    """
    if not column_map:
        return dict(record)
    sources = {column: field for field, column in column_map.items()}
    out = {k: v for k, v in record.items() if k not in sources}
    for column, field in sources.items():
        if column in record:
            out["image" if field == "images" else field] = record[column]
    return out
