"""Shared pieces of the ``sgm`` command line (used by the core, organism and eval commands)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

EXPECTED_ERRORS = (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError, ImportError)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures become one ``error: ...`` line on stderr and exit code 2 (no traceback).

    Example:
        >>> @app.command()
        ... @cli_errors
        ... def fit(...): ...
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except EXPECTED_ERRORS as e:
            text = str(e).strip()
            msg = text.splitlines()[0] if text else type(e).__name__
            print(f"error: {msg}", file=sys.stderr, flush=True)
            raise typer.Exit(2) from None

    return wrapper
