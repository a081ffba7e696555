"""``sgm``: the command line of the safety glasses (a thin layer over the Python API)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ._cli import THREADS_HELP, check_out_dir, cli_errors, print_table, set_threads
from .eval.cli import compare_command, eval_command
from .eval.concepts_cli import concepts_app
from .organism.cli import demo_command, organism_app
from .real.cli import models_app
from .replicate.cli import replicate_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="SGM safety glasses: find toxic expert neurons in a VLM's language tower and dampen them.")
console = Console(soft_wrap=True)  # lines are not broken at 80 columns when piped


def _load(model: str, dtype: Optional[str], device_map: Optional[str]):
    from .models import load_vlm

    with console.status(f"loading {model}"):
        return load_vlm(model, dtype=dtype, device_map=device_map)


@app.command()
@cli_errors
def fit(model: str = typer.Option(..., help="Model folder, hub id or prepared real-model name (smollm2-135m, gemma3-270m)."),
        concepts: Path = typer.Option(..., help="Concept rows: .jsonl, .json, .csv or .xlsx (columns id, image, "
                                                "prompt, response, label, category; the SGM authors' "
                                                "name, prompt, output, label spreadsheets are read as they are)."),
        out: Path = typer.Option(..., help="Folder to write the glasses to."),
        units: str = typer.Option("act", help="Unit kind: act | gate | up | down."),
        pooling: str = typer.Option("mean", help="Pooling over tokens: mean | max | last."),
        positions: str = typer.Option("all", help="Token mask: all | text | image | response | prompt."),
        strategy: str = typer.Option("aura", help="aura | damp | det0 | random."),
        threshold: Optional[float] = typer.Option(
            None, help="AUROC above which a unit is an expert (aura, random; det0 and damp with --selection "
                       "ml-aura). Default 0.5; below 0.5 it only matters with --no-clamp."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="Global top-k units (damp, det0; caps aura)."),
        damp_alpha: float = typer.Option(0.5, help="Constant alpha of the damp strategy."),
        clamp: bool = typer.Option(True, "--clamp/--no-clamp",
                                   help="Keep aura alphas in [0, 1]. --no-clamp is the SGM authors' variant: with "
                                        "a threshold below 0.5, units with AUROC in (threshold, 0.5) are amplified "
                                        "(alpha up to 2(1 - threshold))."),
        selection: str = typer.Option("top-k", help="det0/damp unit selection: top-k (exactly k units, default k = "
                                                    "units with AUROC >= 0.75) | ml-aura (apple/ml-aura's rule: "
                                                    "AUROC > threshold, or above the (k+1)-th largest with --top-k)."),
        column_map: Optional[str] = typer.Option(
            None, help="Concept file columns for the fields, as field=column pairs, e.g. "
                       "'prompt=question,response=answer,label=is_toxic,image=file'."),
        layers: Optional[str] = typer.Option(None, help="Decoder layers, e.g. '8-31', '16:', '0,2,5' (default all)."),
        batch_size: int = typer.Option(8, help="Concept rows per forward pass."),
        layout: str = typer.Option("auto", help="How rows become text: auto (chat template if any, else "
                                                "USER:/ASSISTANT:) | chat | plain | raw (prompt + response as one "
                                                "text, base LMs). Rows with an empty prompt are raw text."),
        dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 | auto."),
        device_map: Optional[str] = typer.Option(None, help="e.g. auto (needs accelerate)."),
        record_dir: Optional[Path] = typer.Option(None, help="Keep the recording here (a killed run resumes)."),
        seed: int = typer.Option(0, help="Seed of the random control."),
        threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
        ) -> None:
    """Fit glasses: record the language tower's MLP units on concept rows, score them by AUROC, save."""
    from .concepts import ConceptSet
    from .fitting import fit_glasses
    from .strategies import check_strategy

    set_threads(threads)
    _check_layout(layout)
    check_out_dir(out)
    if record_dir is not None:
        check_out_dir(record_dir, "--record-dir")
    if threshold is not None and strategy in ("det0", "damp") and selection == "top-k":
        warnings.warn(f"--threshold has no effect on {strategy} with --selection top-k (it takes the top-k units; "
                      "use --top-k, or --selection ml-aura)", UserWarning, stacklevel=1)
    thr = 0.5 if threshold is None else threshold
    check_strategy(strategy, threshold=thr, top_k=top_k, damp_alpha=damp_alpha, clamp=clamp, selection=selection)
    cs = ConceptSet.load(concepts, column_map)  # validated before the model is loaded
    m, proc = _load(model, dtype, device_map)
    glasses = fit_glasses(m, proc, cs, units=units, pooling=pooling, positions=positions, strategy=strategy,
                          threshold=thr, top_k=top_k, layers=layers, batch_size=batch_size,
                          damp_alpha=damp_alpha, seed=seed, clamp=clamp, selection=selection, record_dir=record_dir,
                          layout=layout)
    glasses.save_pretrained(out)
    _print_summary(glasses, title=f"glasses saved to {out}")


def _check_layout(layout: str) -> None:
    from .inputs import LAYOUTS

    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _common_prefix(rows: list[dict[str, Any]]) -> str:
    """The module path before the layer index, e.g. 'model.language_model.layers'."""
    if not rows:
        return ""
    head = rows[0]["module"].split(f".{rows[0]['layer']}.", 1)[0]
    return f"modules: {head}.<layer>.<module>"


def _print_summary(glasses: Any, title: str) -> None:
    rows = glasses.summary()
    t = Table(title=title, caption=_common_prefix(rows))
    for col in ("layer", "module", "units", "experts", "min alpha", "mean alpha", "max AUROC"):
        t.add_column(col, justify="left" if col == "module" else "right")
    for r in rows:
        t.add_row(str(r["layer"]), r["module"].split(f".{r['layer']}.", 1)[-1], str(r["units"]), str(r["experts"]), f"{r['min_alpha']:.3f}",
                  f"{r['mean_alpha']:.3f}", "-" if r["max_auroc"] is None else f"{r['max_auroc']:.3f}")
    print_table(t, console)
    total = sum(r["units"] for r in rows)
    console.print(f"strategy={glasses.config.strategy} experts={glasses.n_experts}/{total} "
                  f"({100.0 * glasses.n_experts / max(total, 1):.2f}%)")


@app.command()
@cli_errors
def inspect(directory: Path = typer.Argument(..., help="A glasses folder."),
            png: Optional[Path] = typer.Option(None, help="Where to write the AUROC plot "
                                                          "(default DIR/auroc_by_layer.png)."),
            threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
            ) -> None:
    """Table of experts per layer and a PNG of the AUROC distribution per layer."""
    from .glasses import Glasses
    from .plots import plot_auroc_by_layer

    set_threads(threads)
    glasses = Glasses.from_pretrained(directory)
    target = png or directory / "auroc_by_layer.png"
    if target.is_dir():
        raise ValueError(f"--png {target} is a folder; give the PNG file to write")
    _print_summary(glasses, title=str(directory))
    if glasses.aurocs:
        path = plot_auroc_by_layer(glasses, target)
        console.print(f"wrote {path}")


@app.command()
@cli_errors
def generate(model: str = typer.Option(..., help="Model folder, hub id or prepared real-model name (smollm2-135m, gemma3-270m)."),
             prompt: str = typer.Option(..., help="The user's text."),
             image: list[Path] = typer.Option([], help="Image file(s); repeat for several."),
             glasses: Optional[Path] = typer.Option(None, help="Glasses folder to wear."),
             compare: bool = typer.Option(False, help="Print the reply with and without glasses side by side."),
             max_new_tokens: int = typer.Option(64, help="Most new tokens per reply."),
             sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
             temperature: float = typer.Option(1.0, help="Sampling temperature (with --sample)."),
             seed: int = typer.Option(0, help="Sampling seed (with --sample)."),
             positions: str = typer.Option("all", help="Where the glasses act: all | prompt | generated."),
             layout: str = typer.Option("auto", help="auto (chat template if any, else USER:/ASSISTANT:) | chat | "
                                                     "plain | raw (continue the prompt text, base LMs)."),
             dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 | auto."),
             device_map: Optional[str] = typer.Option(None, help="e.g. auto (needs accelerate)."),
             threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
             ) -> None:
    """Generate a reply to an image + prompt, optionally wearing glasses."""
    from .concepts import load_rgb
    from .generation import generate_texts
    from .glasses import Glasses

    set_threads(threads)
    _check_layout(layout)
    if compare and glasses is None:
        raise ValueError("--compare needs --glasses")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"--positions must be all, prompt or generated, got {positions!r}")
    imgs = []
    for p in image:
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
        try:
            imgs.extend(load_rgb([p]))
        except Exception as err:  # noqa: BLE001 - PIL raises several types on unreadable files
            raise ValueError(f"cannot read image {p} ({type(err).__name__}: {err})") from None
    g = Glasses.from_pretrained(glasses) if glasses is not None else None
    m, proc = _load(model, dtype, device_map)
    if g is not None:
        g.check_compatible(m)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, seed=seed, layout=layout)
    plain = generate_texts(m, proc, [prompt], [imgs], **kw)[0] if (g is None or compare) else None
    worn = None
    if g is not None:
        with g.apply(m, positions=positions):
            worn = generate_texts(m, proc, [prompt], [imgs], **kw)[0]
    if compare:
        t = Table(show_lines=True)
        t.add_column("without glasses")
        t.add_column("with glasses")
        t.add_row(plain, worn)
        print_table(t, console)
    else:
        console.print(worn if worn is not None else plain, markup=False, highlight=False)


@app.command()
@cli_errors
def export(model: str = typer.Option(..., help="Model folder, hub id or prepared real-model name (smollm2-135m, gemma3-270m)."),
           glasses: Path = typer.Option(..., help="Glasses folder."),
           out: Path = typer.Option(..., help="Output folder."),
           format: str = typer.Option("merged", "--format", help="merged | peft-ia3."),
           dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 | auto."),
           threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
           ) -> None:
    """Export glasses as a merged checkpoint (plain transformers / vLLM) or a PEFT IA3 adapter."""
    from .export import EXPORT_FORMATS, check_export_dir, export_merged, export_peft_ia3
    from .glasses import Glasses

    set_threads(threads)
    if format not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {format!r}")
    check_out_dir(out)
    check_export_dir(out)
    g = Glasses.from_pretrained(glasses)
    m, proc = _load(model, dtype, None)
    g.check_compatible(m)
    path = export_merged(m, proc, g, out) if format == "merged" else export_peft_ia3(m, g, out)
    console.print(f"wrote {format} export to {path} ({g.n_experts} experts)")


app.add_typer(organism_app, name="organism")
app.add_typer(models_app, name="models")
app.add_typer(replicate_app, name="replicate")
app.add_typer(concepts_app, name="concepts")
app.command("demo")(demo_command)
app.command("eval")(eval_command)
app.command("compare")(compare_command)


def main() -> None:
    """Console entry point of ``sgm`` (usage errors are one ``error:`` line, exit 2)."""
    from ._cli import run_app

    run_app(app)


if __name__ == "__main__":
    main()
