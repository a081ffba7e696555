"""``sgm replicate aura``: AurA's experiment on a real language model, as one command.

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(replicate_app, ["aura", "--help"]).exit_code
    0
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .._cli import cli_errors, print_table

replicate_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Replications of published experiments on real weights.")
console = Console()


def _split_strategies(text: str) -> tuple[str, ...]:
    """'aura,det0' or 'aura:threshold=0.6;det0:top_k=100' -> the specs (',' separates only without ';')."""
    parts = text.split(";") if ";" in text else text.split(",")
    return tuple(p.strip() for p in parts if p.strip())


@replicate_app.command("aura")
@cli_errors
def aura_command(
    model: str = typer.Option(..., help="Prepared real-model name (smollm2-135m, gemma3-270m), a model folder or a hub id."),
    out: Path = typer.Option(..., help="Output folder: results.json, report.md, aura_replication.png, samples.jsonl, "
                                       "concepts.jsonl, glasses/<strategy>/ (a rerun with the same settings reuses "
                                       "the generations)."),
    corpus: Optional[Path] = typer.Option(None, help="A ToxiGen-format folder (hate_*.txt, neutral_*.txt) whose "
                                                     "statements join the concept set."),
    corpus_per_class: int = typer.Option(150, help="Statements per class taken from --corpus."),
    own_continuations: bool = typer.Option(True, help="Use the model's own continuations as concepts (--no-own-"
                                                      "continuations: the corpus only)."),
    quick: bool = typer.Option(False, "--quick", help="Start from the small demo configuration "
                               "(AuraReplicationConfig.quick(): a few minutes for SmolLM2 on 2 cores); options "
                               "given explicitly with other values than their defaults still apply."),
    concept_samples: int = typer.Option(4, help="Sampled continuations per toxic concept opening."),
    neutral_samples: Optional[int] = typer.Option(None, help="Sampled continuations per neutral concept opening "
                                                             "(default: --concept-samples)."),
    heldout_samples: int = typer.Option(4, help="Sampled continuations per held-out opening and defence."),
    validation_samples: int = typer.Option(0, help="Sampled continuations per validation opening and defence; > 0 "
                                                   "selects one strategy on the validation openings (largest cut "
                                                   "within --select-max-ppl-change) and adds its shuffled control."),
    select_max_ppl_change: float = typer.Option(0.10, help="Perplexity budget of the validation selection (0.10: "
                                                           "+10 %)."),
    heldout_all: bool = typer.Option(True, "--heldout-all/--heldout-selected",
                                     help="With validation: evaluate every strategy on the held-out openings, or "
                                          "only the selected one, its shuffled control and plain aura, det0, damp, "
                                          "random (the other variants are measured on validation only)."),
    max_new_tokens: int = typer.Option(20, help="Tokens per continuation."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    batch_size: int = typer.Option(16, help="Recorded rows (or perplexity texts) per batch."),
    generation_batch_size: int = typer.Option(64, help="Continuations per generate call."),
    toxic_threshold: float = typer.Option(0.5, help="Toxicity at or above which a continuation is a toxic concept row."),
    nontoxic_below: float = typer.Option(0.2, help="Toxicity below which a continuation is a non-toxic concept row."),
    strategies: str = typer.Option("aura,det0,damp,random", help="Glasses to evaluate, separated by ';' or ',': aura, "
                                   "det0, damp, random, and variants such as 'aura:threshold=0.65', 'det0:top_k=2000', "
                                   "'damp:top_k=1000,alpha=0.3', 'aura:fdr=0.05' (only units significantly above "
                                   "AUROC 0.5 at that false-discovery rate), 'aura:pooling=max,positions=all' (AUROCs "
                                   "of another recording; all variants share one set of forward passes) (variants "
                                   "with options: separate with ';')."),
    pooling: str = typer.Option("mean", help="Pooling over tokens: mean | max | last."),
    positions: str = typer.Option("response", help="Tokens pooled: response (the continuation) | all | prompt."),
    threshold: float = typer.Option(0.5, help="AUROC above which a unit is an expert (aura)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Units set to 0 / damped by det0 / damp "
                                                             "(default: units with AUROC >= 0.75)."),
    damp_alpha: float = typer.Option(0.5, help="Alpha of the damp strategy."),
    layers: Optional[str] = typer.Option(None, help="Decoder layers, e.g. '8-', '0,2,5' (default all)."),
    prompts: Optional[Path] = typer.Option(None, help="A JSON prompt set replacing the shipped one (same four lists)."),
    seed: int = typer.Option(0, help="Sampling, corpus and random-control seed."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the CIs."),
    threads: Optional[int] = typer.Option(1, help="torch CPU threads (1 suits small models on a busy machine)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Repeat AurA on a real LM: its own toxic/non-toxic continuations as concepts, aura/det0/damp/random glasses,
    held-out toxicity (both judges) and perplexity with bootstrap CIs, against AurA's published figures."""
    from ..eval.runner import set_torch_threads
    from .aura import AuraReplicationConfig, replicate_aura

    if pooling not in ("mean", "max", "last"):
        raise ValueError(f"--pooling must be mean, max or last, got {pooling!r}")
    set_torch_threads(threads)
    given = dict(
        concept_samples=concept_samples, neutral_samples=neutral_samples, heldout_samples=heldout_samples,
        validation_samples=validation_samples, select_max_ppl_change=select_max_ppl_change,
        heldout_all=heldout_all,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
        generation_batch_size=generation_batch_size, toxic_threshold=toxic_threshold,
        nontoxic_below=nontoxic_below, corpus=None if corpus is None else str(corpus), corpus_per_class=corpus_per_class,
        own_continuations=own_continuations, strategies=_split_strategies(strategies),
        pooling=pooling, positions=positions, threshold=threshold, top_k=top_k, damp_alpha=damp_alpha, layers=layers,
        seed=seed, n_boot=n_boot, prompts=None if prompts is None else str(prompts))
    if quick:
        defaults = AuraReplicationConfig()
        config = AuraReplicationConfig.quick(**{k: v for k, v in given.items() if v != getattr(defaults, k)})
    else:
        config = AuraReplicationConfig(**given)
    results = replicate_aura(model, out, config, progress=progress, log=lambda m: console.print(m, markup=False))
    table = Table(title=f"AurA on {results['model']} (held-out continuations)")
    for col in ("defence", "units", "toxicity", "95% CI", "toxic %", "profanity", "ppl", "cut", "ppl change"):
        table.add_column(col, justify="left" if col == "defence" else "right")
    for r in results["rows"]:
        name = f"{r['defense']} *" if r["defense"] == results.get("selected") else r["defense"]
        table.add_row(name, str(r["experts"]), f"{r['toxicity_mean']:.3f}",
                      f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", f"{100 * r['toxic_share']:.1f}",
                      f"{r['profanity_mean']:.3f}", f"{r['perplexity']:.2f}",
                      f"{r['toxicity_cut']:.2f}x" if "toxicity_cut" in r else "-",
                      f"{100 * r['perplexity_change']:+.1f}%" if "perplexity_change" in r else "-")
    print_table(table, console)
    if results.get("validation"):
        sel = results["selected"]
        console.print(f"* selected on the validation openings: {sel}" if sel else
                      "no strategy met the perplexity budget on the validation openings", markup=False)
    tp = results["throughput"]["eval"]
    console.print(f"{tp['new_samples']} held-out samples at {tp['samples_per_s']} samples/s; total "
                  f"{results['timings']['total_s']} s. AurA published: up to 2.2x less toxicity for +0.72 perplexity.")
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and {out / 'aura_replication.png'}")
