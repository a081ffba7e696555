"""Shared pieces of the ``sgm`` command line (used by the core, organism and eval commands)."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import typer

EXPECTED_ERRORS = (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError, ImportError)

THREADS_HELP = ("torch CPU threads (default: torch's choice; 1 suits small models on a busy machine, "
                "where extra threads mostly spin)")
"""Help text of every command's ``--threads`` option."""


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                      line: str | None = None) -> None:
    from ._secrets import redact_secrets

    text = redact_secrets(" ".join(str(message).split()))
    print(f"warning: {text}", file=sys.stderr, flush=True)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures become one ``error: ...`` line on stderr and exit code 2 (no traceback);
    warnings raised inside the command print as one ``warning: ...`` line each.

    Example:
        >>> @app.command()
        ... @cli_errors
        ... def fit(...): ...
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("default", UserWarning)
            warnings.showwarning = _one_line_warning
            try:
                return fn(*args, **kwargs)
            except typer.Exit:
                raise
            except EXPECTED_ERRORS as e:
                from ._secrets import redact_secrets

                text = str(e).strip()
                msg = text.splitlines()[0] if text else type(e).__name__
                print(f"error: {redact_secrets(msg)}", file=sys.stderr, flush=True)  # a net under every message
                raise typer.Exit(2) from None

    return wrapper


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written, before any work.

    Nothing is created: the folder itself is made later by the command. Writability is probed with a
    temporary file in the folder (or its nearest existing parent), so read-only filesystems are caught
    whoever runs the command.

    Example:
        >>> check_out_dir(Path("/proc/version"))
        Traceback (most recent call last):
        ...
        ValueError: --out /proc/version is a file, not a folder
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{option} {path} cannot be created: {probe} is a file")
    if probe.exists() and not probe.stat().st_mode & 0o222:  # read-only by its mode, even for root
        raise ValueError(f"{option} {path} is not writable ({probe} is read-only)")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".sgm-write-check-")
    except OSError as err:
        raise ValueError(f"{option} {path} is not writable ({err.strerror or type(err).__name__} in {probe})") from None
    os.close(fd)
    os.remove(name)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this command (``None``: leave torch's default); must be >= 1.

    Example:
        >>> set_threads(None)
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def print_table(table: Any, console: Any = None) -> None:
    """Print a rich table whole: in a terminal it wraps inside the terminal's width; piped or
    redirected (where rich would assume 80 columns and cut names) it is as wide as it needs.

    Example:
        >>> from rich.table import Table
        >>> t = Table("module"); t.add_row("model.language_model.layers.31.mlp.down_proj")
        >>> print_table(t)  # doctest: +SKIP
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    for column in getattr(table, "columns", []):
        if column.overflow == "ellipsis":
            column.overflow = "fold"  # a long word (a module path) folds instead of being cut
    if console.is_terminal:
        console.print(table, soft_wrap=False)
        return
    wide = Console(width=100_000, file=console.file, color_system=None)
    width = Measurement.get(wide, wide.options, table).maximum
    Console(width=max(80, width), file=console.file, color_system=None).print(table)


def run_app(app: Any, args: list[str] | None = None) -> None:
    """Run a typer app with usage errors (an unknown option, ``--ttis abc``) as one ``error: ...`` line
    and exit code 2, like every other bad input; ``--help`` and a bare command still print the help.

    Example:
        >>> run_app(app, ["fit", "--help"])  # doctest: +SKIP
    """
    import typer

    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, standalone_mode=False)
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `sgm` or `sgm models` alone: the help, as typer shows it
            app(args)
            return
        from ._secrets import redact_secrets

        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        print(f"error: {redact_secrets(message)}{where}", file=sys.stderr, flush=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except (KeyboardInterrupt, EOFError):
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

