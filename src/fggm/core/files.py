"""JSON result files shared by every problem: written whole or not at all, read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON whole or not at all (a temporary file renamed into place; parents created).

    Example:
        >>> import tempfile; write_json(Path(tempfile.mkdtemp()) / "r.json", {"a": 1}).name
        'r.json'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def read_format(path: str | Path, fmt: str, error: type[Exception], what: str) -> dict[str, Any]:
    """The JSON object in ``path`` whose ``"format"`` is ``fmt``; else ``FileNotFoundError`` or
    ``error`` with one line (``what`` names the expected kind of file).

    Example:
        >>> import tempfile; p = write_json(Path(tempfile.mkdtemp()) / "a.json", {"format": "x/1"})
        >>> read_format(p, "x/1", ValueError, "an x file")["format"]
        'x/1'
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"attack file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{p} is not valid JSON: {exc.msg}") from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise error(f"{p} is not {what} (format {d.get('format') if isinstance(d, dict) else None!r})")
    return d
