"""Printing tables from the ``fggm`` commands (kept apart from ``safety_glasses``: the two packages do
not import each other)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement


def print_table(table: Any, console: Console) -> None:
    """Print a rich table whole: in a terminal it wraps inside the terminal's width; piped, redirected
    or captured (where rich assumes 80 columns and would cut headers such as ``share dev``) it is as
    wide as it needs.

    Example:
        >>> from rich.table import Table
        >>> t = Table("scheduler", "sum SE [b/s/Hz]"); t.add_row("sac:smart16-scores", "29.31")
        >>> print_table(t, Console(file=__import__("io").StringIO()))
    """
    if console.is_terminal:
        console.print(table, soft_wrap=False)
        return
    wide = Console(width=100_000, file=console.file, color_system=None)
    width = Measurement.get(wide, wide.options, table).maximum
    Console(width=max(80, width), file=console.file, color_system=None).print(table)
