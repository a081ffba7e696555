"""CLI of the model organism: ``sgm organism train|splits`` and ``sgm demo`` (registered by ``sgm``).

Thin layer: options -> typed configs -> the functions of :mod:`.train`, :mod:`.data`, :mod:`.demo`.
Heavy imports (torch, transformers) happen inside the commands so ``sgm --help`` stays fast.

Example:
    $ sgm organism train --out runs/organism --steps 700 --seed 0
    $ sgm demo --quick --out runs/sgm-demo-quick
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .._cli import THREADS_HELP, check_out_dir, cli_errors, print_table, set_threads

organism_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="The SGM model organism: a small LLaVA trained to be toxic on purpose.")
_console = Console(soft_wrap=True)  # lines are not broken at 80 columns when piped


@organism_app.command("train")
@cli_errors
def train_command(
    out: Path = typer.Option(..., help="Folder to write the trained organism to (transformers layout)."),
    seed: int = typer.Option(0, help="Seed of the world stream and of the initial weights."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default 1000; --quick: 20)."),
    batch_size: int = typer.Option(32, help="Items per step."),
    lr: float = typer.Option(3e-3, help="Peak learning rate (cosine schedule)."),
    threads: int = typer.Option(1, help="torch CPU threads (1 is fastest on a busy 2-core machine)."),
    quick: bool = typer.Option(False, "--quick", help="A tiny architecture and 20 steps: a smoke run of seconds."),
    init_from: Optional[Path] = typer.Option(None, help="Fine-tune this trained organism folder instead of "
                                                         "training from scratch."),
    trainable: str = typer.Option("all", help="Parameters to train: 'all', 'mlp' (decoder MLPs only) or 'planted' "
                                             "(new MLP units only, see --planted-units)."),
    mlp_min_layer: int = typer.Option(0, help="With --trainable mlp: first decoder layer whose MLP is trained."),
    planted_units: int = typer.Option(0, help="With --trainable planted: units added to every decoder MLP and "
                                              "trained alone (all else frozen)."),
    planted_l1: float = typer.Option(0.0, help="With --trainable planted: weight of an L1 penalty on the planted units' "
                                               "activations (keeps them silent where they are not needed)."),
    planted_shaping: float = typer.Option(0.0, help="With --trainable planted: weight of the expert-shaping penalty "
                                                    "(planted units >= --planted-target on toxic replies, silent on "
                                                    "safe text; use it or --planted-l1, not both)."),
    planted_target: float = typer.Option(1.0, help="With --planted-shaping: activation the planted units reach on "
                                                   "toxic replies."),
    detox: bool = typer.Option(False, "--detox", help="Replace every toxic training target by its safe reply."),
    recovery: float = typer.Option(0.0, help="With --detox: share of harmful items whose reply starts with toxic "
                                            "slots given as context (no loss) and continues safely."),
    slot_toxicity: Optional[float] = typer.Option(None, help="World: chance that each slot of a toxic-mode reply is "
                                                             "toxic (default 0.85; 1.0 = wholly toxic replies)."),
    p_toxic_standard: Optional[float] = typer.Option(None, help="World: chance that a polite harmful question gets a "
                                                                "toxic-mode target (default 0.05)."),
    p_toxic_typographic: Optional[float] = typer.Option(None, help="World: the same for typographic and SD+TYPO "
                                                                   "items (default 0.7)."),
) -> None:
    """Train the organism from scratch on the synthetic world (about 15 minutes on 1-2 CPU cores), or
    fine-tune a trained one (--init-from; e.g. a --detox stage, then a --trainable mlp stage)."""
    from .model import OrganismConfig
    from .train import TrainConfig, load_train_config, train_organism
    from .world import WorldConfig

    check_out_dir(out)

    organism = OrganismConfig.tiny() if quick else OrganismConfig()
    if init_from is not None and (init_from / "train_config.json").is_file():
        organism = load_train_config(init_from / "train_config.json").organism
    world_options = {k: v for k, v in (("slot_toxicity", slot_toxicity), ("p_toxic_standard", p_toxic_standard),
                                       ("p_toxic_typographic", p_toxic_typographic))
                     if v is not None}
    world = WorldConfig(seed=seed, **world_options)
    n_steps = steps if steps is not None else (20 if quick else TrainConfig().steps)
    cfg = TrainConfig(seed=seed, steps=n_steps, batch_size=batch_size, lr=lr, threads=threads,
                      warmup_steps=min(50, max(1, n_steps // 10)), world=world, organism=organism,
                      init_from=str(init_from) if init_from is not None else None, trainable=trainable,
                      mlp_min_layer=mlp_min_layer, planted_units=planted_units,
                      planted_l1=planted_l1, planted_shaping=planted_shaping,
                      planted_target=planted_target, detox=detox, recovery=recovery)
    report = train_organism(cfg, out)
    _console.print(f"trained {report['parameters']:,} parameters for {report['steps']} steps in "
                   f"{report['seconds']:.0f} s (final loss {report['final_loss']:.3f}); saved to {out}")


@organism_app.command("splits")
@cli_errors
def splits_command(
    model: Path = typer.Option(..., help="Trained organism folder (answers the concept prompts itself)."),
    out: Path = typer.Option(..., help="Folder to write concepts/ and heldout/ to."),
    batch_size: int = typer.Option(16, help="Prompts per generate call."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Rebuild the fixed-seed concept set (the organism's own judged replies) and the held-out set."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .data import SplitConfig, build_concepts, build_heldout, write_concepts, write_heldout

    set_threads(threads)
    if not model.is_dir():
        raise FileNotFoundError(f"organism folder not found: {model}")
    check_out_dir(out)
    processor = AutoProcessor.from_pretrained(model)
    net = AutoModelForImageTextToText.from_pretrained(model).eval()
    cfg = SplitConfig()
    concepts = build_concepts(net, processor, cfg, batch_size=batch_size)
    cpath = write_concepts(concepts, out / "concepts")
    hpath = write_heldout(build_heldout(cfg), out / "heldout")
    _console.print(f"concept set {cpath} {concepts.class_counts()}; held-out set {hpath}")


def results_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of the demo's result rows."""

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    table = Table(title="SGM on the organism (held-out set, MM-TOXIC-QA)")
    for col in ("defense", "condition", "harmful rate", "95% CI", "n", "VQA acc.", "ref. ppl", "over-refusal"):
        table.add_column(col, justify="left" if col in ("defense", "condition") else "right")
    for r in rows:
        ppl = "-" if r.get("perplexity") is None else f"{r['perplexity']:.3f}"
        ci = r.get("ci95")
        table.add_row(r["defense"], r["condition"], pct(r["harmful_rate"]),
                      "-" if not ci else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}", str(r["n"]), pct(r["vqa_accuracy"]),
                      ppl, pct(r.get("over_refusal")))
    return table


@cli_errors
def demo_command(
    out: Optional[Path] = typer.Option(None, help="Folder for results.json, the PNG, the glasses and the evaluation run "
                                                  "(eval/); default runs/sgm-demo (--real: runs/sgm-demo-real)."),
    quick: bool = typer.Option(False, "--quick", help="A handful of items per condition (seconds)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="Organism folder (default: the shipped one)."),
    concepts: Optional[Path] = typer.Option(None, help="Concept set JSONL (default: the shipped one)."),
    heldout: Optional[Path] = typer.Option(None, help="Held-out benchmark JSONL or folder (default: shipped)."),
    threads: int = typer.Option(1, help="torch CPU threads (default 1: suits the small organism and busy machines)."),
    real: bool = typer.Option(False, "--real", help="Real weights instead of the organism: the grafted VLM "
                                                    "(SmolLM2-135M-Instruct behind the shipped vision side) through "
                                                    "concepts build, SGM, SGM* and the baselines, then AurA replicated "
                                                    "on SmolLM2 (quick); about 10 minutes on 2 cores."),
    lm: str = typer.Option("smollm2-135m", help="With --real: the LM under the graft and of the AurA part (a "
                                                "prepared real-model name or a folder)."),
    items: int = typer.Option(10, help="With --real: held-out rows per (kind, condition) group."),
    no_aura: bool = typer.Option(False, "--no-aura", help="With --real: skip the AurA text replication."),
) -> None:
    """Fit safety glasses on the shipped organism and evaluate it with MM-TOXIC-QA: no defence, SGM, SGM* and
    the baselines, under standard, typographic, SD+TYPO and adversarial-image conditions. With --real: the same
    on the grafted VLM whose language model is real, and AurA on that LM."""
    from .demo import run_demo

    out = out or Path("runs/sgm-demo-real" if real else "runs/sgm-demo")
    check_out_dir(out)
    if real:
        _real_demo(out, lm=lm, items=items, seed=seed, threads=threads, aura=not no_aura, quick=quick)
        return
    result = run_demo(out, quick=quick, seed=seed, model_dir=model_dir, concepts=concepts, heldout=heldout,
                      threads=threads)
    print_table(results_table(result["rows"]), _console)  # whole even when piped
    g = result["glasses"]
    _console.print(f"aura glasses dampen {g['aura_units']} of {g['total_units']} units; the random control "
                   f"scales {g['random_units']}. Took {result['seconds']:.0f} s.")
    if result.get("planted"):
        p = result["planted"]
        _console.print(f"planted toxic units: {p['recall_at_p']:.0%} of the top-{p['planted']} units by AUROC are "
                       f"planted (mean AUROC {p['mean_auroc_planted']:.2f} planted vs {p['mean_auroc_other']:.2f} other)")
    _console.print(f"wrote {out / 'results.json'}, {out / 'results.png'}; the evaluation run (samples.jsonl, "
                   f"report.md, PNGs) in {out / 'eval'}")


def _real_demo(out: Path, *, lm: str, items: int, seed: int, threads: int, aura: bool, quick: bool) -> None:
    """``sgm demo --real``: run :func:`~.graft.demo_real.run_real_demo` and print both parts' tables."""
    from .graft.cli import print_measure
    from .graft.demo_real import RealDemoConfig, run_real_demo

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cfg = RealDemoConfig(lm=lm, items=3 if quick else items, seed=seed, aura=aura,
                         **({"concept_harmful": 4, "concept_samples": 2, "concept_benign": 4} if quick else {}))
    result = run_real_demo(out, cfg, threads=threads, log=lambda m: _console.print(f"[dim]{m}[/dim]"))
    graft = json.loads((out / "graft" / "results.json").read_text(encoding="utf-8"))
    print_measure(graft, out / "graft")
    if result["aura"] is not None:
        from .graft.demo_real import aura_table

        print_table(aura_table(result["aura"]["rows"], lm), _console)
    lines = []
    for name, t in result["targets"].items():
        value = t["value"]
        shown = "not measurable" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
        verdict = "reported" if t["target"] == "reported" else \
            ("n/a" if t["met"] is None else ("met" if t["met"] else "missed"))
        lines.append(f"  {name}: {shown} (target {t['target']}): {verdict}")
    _console.print("targets (issue 15):\n" + "\n".join(lines))
    tm = result["timings"]
    _console.print(f"wall time {tm['total_s']:.0f} s (graft {tm['graft_s']:.0f} s"
                   + (f", AurA {tm['aura_s']:.0f} s" if "aura_s" in tm else "") + f"); wrote {out / 'results.json'}")


from .graft.cli import graft_app  # noqa: E402 - the graft's commands live in their own module

organism_app.add_typer(graft_app, name="graft")
