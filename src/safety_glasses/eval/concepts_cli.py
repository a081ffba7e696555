"""``sgm concepts build``: a concept set from a model's own replies to a benchmark, judged.

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(concepts_app, ["build", "--help"]).exit_code
    0
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .._cli import cli_errors, print_table

concepts_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build concept sets.")
console = Console()


@concepts_app.command("build")
@cli_errors
def build_command(
    model: str = typer.Option(..., help="Model folder, prepared real-model name or hub id."),
    bench: Path = typer.Option(..., help="Benchmark any eval loader reads: native JSONL, an MM-SafetyBench folder, "
                                         "a BeaverTails-V-style JSONL/Parquet, an MM-Vet folder."),
    judge: str = typer.Option("profanity", help="Safety judge spec (decides toxic vs non-toxic): profanity, "
                                                "toxicity[:label=toxic,threshold=0.5], hf-classifier:PATH, ..."),
    out: Path = typer.Option(..., help="Output folder: concepts.jsonl, images/, replies.jsonl, build.json."),
    nontoxic_from: str = typer.Option("safety-prompt,benign", help="Where non-toxic rows come from: safety-prompt "
                                      "(the same harmful rows under a safety instruction) and/or benign rows."),
    safety_instruction: Optional[str] = typer.Option(None, help="The instruction put before harmful questions "
                                                                "(default: a short harmless-assistant instruction)."),
    bench_format: str = typer.Option("auto", help="auto | bench | mmsb | mmvet | beavertails-v."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N benchmark rows."),
    max_new_tokens: int = typer.Option(64, help="Tokens per reply."),
    sample: bool = typer.Option(False, help="Sample replies instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature of the model's replies."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass of the model's replies."),
    samples_per_row: int = typer.Option(1, help="Replies per row and source (needs --sample)."),
    batch_size: int = typer.Option(8, help="Replies per batch."),
    layout: str = typer.Option("auto", help="auto | chat | plain | raw (see sgm fit --help)."),
    balance: bool = typer.Option(True, help="Balance toxic and non-toxic rows per harmful category."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
    seed: int = typer.Option(0, help="Sampling and balancing seed."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 | auto."),
    device_map: Optional[str] = typer.Option(None, help="e.g. auto (needs accelerate)."),
    judge_device: str = typer.Option("cpu", help="Device of model judges: cpu | cuda | auto."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (1 suits small models on a busy machine)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The SGM authors' procedure: the model's replies to harmful rows (toxic where the judge says so) and to the
    same rows under a safety instruction or to benign rows (non-toxic), balanced per category."""
    from ..inputs import LAYOUTS
    from ..models import load_vlm
    from .concept_build import SAFETY_INSTRUCTION, ConceptBuildConfig, build_concept_set
    from .judges import make_judge
    from .loaders import load_benchmark
    from .runner import set_torch_threads

    set_torch_threads(threads)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    config = ConceptBuildConfig(
        nontoxic_from=tuple(s.strip() for s in nontoxic_from.split(",") if s.strip()),
        safety_instruction=safety_instruction or SAFETY_INSTRUCTION, max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature, top_p=top_p, samples_per_row=samples_per_row, batch_size=batch_size, layout=layout,
        seed=seed, balance=balance)
    rows = load_benchmark(bench, fmt=bench_format)  # validated before the model loads
    if limit is not None:
        if limit < 1:
            raise ValueError("--limit must be >= 1")
        rows = rows[:limit]
    built = make_judge(judge, device=judge_device)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use another --out or --overwrite)")
    with console.status(f"loading {model}"):
        m, proc = load_vlm(model, dtype=dtype, device_map=device_map)
    summary = build_concept_set(m, proc, rows, built, out, config=config, overwrite=overwrite, progress=progress,
                                extra={"model": model, "bench": str(bench)})
    table = Table(title=f"concept set from {model}'s replies (judge {built.judge_id})")
    for col in ("category", "toxic", "non-toxic", "from benign", "toxic dropped"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, c in summary["found"]["per_category"].items():
        table.add_row(cat, str(c["toxic"]), str(c["non-toxic"]), str(c["from_benign"]), str(c["toxic_dropped"]))
    print_table(table, console)
    console.print(f"{summary['counts']['toxic']} toxic + {summary['counts']['non-toxic']} non-toxic rows from "
                  f"{summary['found']['replies']} replies ({summary['replies_per_s']} replies/s); wrote {out / 'concepts.jsonl'}")
