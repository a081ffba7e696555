"""``sgm eval`` and ``sgm compare``: plain functions that ``safety_glasses.cli`` registers with
``app.command("eval")(eval_command)`` and ``app.command("compare")(compare_command)``.

Example:
    >>> import typer
    >>> app = typer.Typer()
    >>> _ = app.command("eval")(eval_command)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .._cli import THREADS_HELP, check_out_dir, cli_errors, print_table, set_threads

console = Console(soft_wrap=True)  # lines are not broken at 80 columns when piped


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _print_results(results: dict[str, Any]) -> None:
    bd = results["by_defense"]
    conds = sorted({c for m in bd.values() for c in m["harmful_rate"]["by_condition"]})
    table = Table(title=f"harmful rate % ({results['judges']['primary']})")
    for col in ["defence", "overall", "95% CI", *conds, "over-refusal %", "VQA acc %", "ppl"]:
        table.add_column(col, justify="left" if col == "defence" else "right")
    for name, m in bd.items():
        hr = m["harmful_rate"]
        ci = "-" if not hr["ci95"] else f"[{_pct(hr['ci95'][0])}, {_pct(hr['ci95'][1])}]"
        ppl = "-" if m["perplexity"] is None else f"{m['perplexity']:.2f}"
        table.add_row(name, _pct(hr["overall"]), ci,
                      *[_pct((hr["by_condition"].get(c) or {}).get("rate")) for c in conds],
                      _pct(m["over_refusal"]["rate"]), _pct(m["vqa_accuracy"]["rate"]), ppl)
    scopes = results["judges"].get("scopes") or {}
    if scopes:
        table.caption = "judges: " + "; ".join(f"{j} = {v['scope']}" for j, v in scopes.items())
    print_table(table, console)
    for a in results.get("judge_agreement") or []:
        if a["n"]:
            console.print(f"agreement {' vs '.join(a['judges'])} ({a['rows']} rows, n={a['n']}): "
                          f"{_pct(a['percent_agreement'])} %, kappa "
                          + ("-" if a["cohen_kappa"] is None else f"{a['cohen_kappa']:.2f}"), markup=False)


def eval_command(
    model: str = typer.Option(..., help="Model folder, prepared real-model name (smollm2-135m, gemma3-270m) or hub id where the hub is reachable."),
    bench: Path = typer.Option(..., help="Benchmark, a local path in one of the formats of --bench-format: the "
                                         "native JSONL; an MM-SafetyBench folder (processed_questions/*.json + "
                                         "imgs/<scenario>/{SD,TYPO,SD_TYPO}/); FigStep SafeBench (safebench.csv + "
                                         "images/SafeBench/, or the FigStep repository); an MM-Vet folder "
                                         "(mm-vet.json + images/); a BeaverTails-V-style JSONL/Parquet export."),
    out: Path = typer.Option(..., help="Output folder (samples.jsonl, results.json, report.md, PNGs); "
                                       "rerunning with the same folder resumes."),
    glasses: Optional[Path] = typer.Option(None, help="SGM glasses folder (the 'sgm' defence)."),
    defense: Optional[list[str]] = typer.Option(
        None, help="Defence configuration, repeatable; '+' composes (SGM*): sgm, sgm+adashield-s, "
                   "self-reminder, ecso, output-filter, aura-text, det0, damp, random. Default: sgm when "
                   "--glasses is given."),
    baseline: bool = typer.Option(True, help="Also evaluate the undefended model ('none')."),
    conditions: Optional[list[str]] = typer.Option(
        None, help="Conditions to keep or derive, comma-separated or repeated: standard, typographic, "
                   "sd_typo, adversarial_image, text_only (default: the rows as given)."),
    judge: Optional[list[str]] = typer.Option(
        None, help="Judge spec, repeatable (first = primary): profanity, toxicity[:label=toxic,threshold=0.5], refusal, hf-classifier:PATH, "
                   "llama-guard:PATH, llm-judge:PATH or llm-judge:url=URL,model=NAME,key_env=VAR."),
    concepts: Optional[Path] = typer.Option(None, help="Concept set (.jsonl, .json, .csv or .xlsx) for the neuron "
                                                       "baselines and as adversarial targets (its toxic responses)."),
    column_map: Optional[str] = typer.Option(None, help="Columns of the --concepts file for the fields, as "
                                                        "field=column pairs (e.g. 'prompt=question,response=answer')."),
    bench_format: str = typer.Option("auto", help="auto (detected from the path) | bench (native JSONL) | mmsb "
                                                  "(MM-SafetyBench) | figstep (FigStep SafeBench, FigStep's own "
                                                  "prompt) | mmvet (MM-Vet) | beavertails-v."),
    categories: Optional[list[str]] = typer.Option(
        None, help="Keep only these categories, comma-separated or repeated (MM-SafetyBench scenarios by name, "
                   "e.g. Illegal_Activitiy or 01-Illegal_Activitiy; FigStep topics, e.g. 'Hate Speech')."),
    limit: Optional[int] = typer.Option(None, help="Use only N benchmark items (smoke runs), chosen round-robin "
                                                   "over the categories; each keeps its rows under every condition."),
    batch_size: int = typer.Option(8, help="Generations per batch."),
    max_new_tokens: int = typer.Option(64, help="Most new tokens per reply."),
    sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with --sample)."),
    num_samples: int = typer.Option(1, help="Generations per row and defence (needs --sample)."),
    greedy_vqa: bool = typer.Option(False, help="With --sample: answer vqa rows greedily, once (accuracy of the "
                                               "model's best answer rather than of a sampled one)."),
    seed: int = typer.Option(0, help="Sampling and bootstrap seed."),
    perplexity: bool = typer.Option(True, help="Score replies' perplexity under the undefended model."),
    typo_style: str = typer.Option("mmsb", help="Derived typographic images: mmsb | figstep."),
    adv_image: Optional[Path] = typer.Option(None, help="A saved adversarial image (PNG or folder)."),
    adv_targets: Optional[Path] = typer.Option(None, help="Target replies for the PGD attack, one per line."),
    adv_steps: int = typer.Option(500, help="PGD steps."),
    adv_eps: float = typer.Option(16.0, help="L-inf budget in 8-bit levels (16 = 16/255)."),
    adv_step_size: float = typer.Option(1.0, help="PGD step in 8-bit levels."),
    adv_batches_per_step: int = typer.Option(1, help="Target minibatches whose gradients make one PGD step."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the CIs."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 | auto."),
    device_map: Optional[str] = typer.Option(None, help="e.g. auto (needs accelerate)."),
    judge_device: str = typer.Option("cpu", help="Device of model judges: cpu | cuda | auto."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Evaluate a model on MM-TOXIC-QA: harmful rate (with CIs) per condition and category, over-refusal,
    VQA accuracy and fluency, under each defence configuration."""
    _run_eval(**locals())


@cli_errors
def _run_eval(**kw: Any) -> None:
    from .adversarial import AdversarialConfig
    from .loaders import load_benchmark
    from .pipeline import evaluate
    from .runner import RunConfig, SamplingConfig, set_torch_threads
    from .selection import filter_categories, limit_items

    set_torch_threads(kw["threads"])
    conds = _split(kw["conditions"])
    from .conditions import CONDITIONS

    bad = [c for c in conds if c not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown condition {bad[0]!r} (expected one of {', '.join(CONDITIONS)})")
    defenses = list(dict.fromkeys(kw["defense"] or (["sgm"] if kw["glasses"] else [])))
    if kw["baseline"] and "none" not in defenses:
        defenses.insert(0, "none")
    if not defenses:
        raise ValueError("nothing to evaluate: give --defense or keep --baseline")
    from .defenses import check_defense_config

    for d in defenses:
        check_defense_config(d)  # syntax and names before the model loads
    if any("sgm" in d.split("+") for d in defenses) and kw["glasses"] is None:
        raise ValueError("defence 'sgm' needs --glasses DIR")
    check_out_dir(kw["out"])
    if kw["glasses"] is not None:
        if not (kw["glasses"] / "glasses_config.json").is_file():
            raise FileNotFoundError(f"not a glasses folder: {kw['glasses']}")
        from ..glasses import Glasses

        Glasses.from_pretrained(kw["glasses"])  # unreadable files or invalid alphas fail before the model loads
    concept_set = None
    if kw["concepts"] is not None:
        if not kw["concepts"].is_file():
            raise FileNotFoundError(f"concept file not found: {kw['concepts']}")
        from ..concepts import ConceptSet

        concept_set = ConceptSet.load(kw["concepts"], kw["column_map"])
    if kw["typo_style"] not in ("mmsb", "figstep"):
        raise ValueError(f"--typo-style must be mmsb or figstep, got {kw['typo_style']!r}")
    # the benchmark is read and validated before the model loads; a folder benchmark loads its own
    # version of each requested condition (MM-SafetyBench's original question for text_only)
    rows = load_benchmark(kw["bench"], fmt=kw["bench_format"], conditions=conds or None)
    rows = limit_items(filter_categories(rows, _split(kw["categories"])), kw["limit"])
    targets = None
    if kw["adv_targets"] is not None:
        if not kw["adv_targets"].is_file():
            raise FileNotFoundError(f"target file not found: {kw['adv_targets']}")
        targets = [t.strip() for t in kw["adv_targets"].read_text(encoding="utf-8").splitlines() if t.strip()]
    run_config = RunConfig(
        batch_size=kw["batch_size"], perplexity=kw["perplexity"], greedy_kinds=("vqa",) if kw["greedy_vqa"] else (),
        sampling=SamplingConfig(max_new_tokens=kw["max_new_tokens"], do_sample=kw["sample"],
                                temperature=kw["temperature"], top_p=kw["top_p"], num_samples=kw["num_samples"],
                                seed=kw["seed"]))
    adv_config = AdversarialConfig(eps=kw["adv_eps"] / 255, steps=kw["adv_steps"], step_size=kw["adv_step_size"] / 255,
                                   batches_per_step=kw["adv_batches_per_step"], seed=kw["seed"])
    judges = list(kw["judge"] or ["profanity"])  # specs hold commas: repeat --judge instead of joining
    from .judges import make_judge

    built = [make_judge(j, device=kw["judge_device"]) for j in judges]  # fail before loading the model
    from ..models import load_vlm

    with console.status(f"loading {kw['model']}"):
        model, processor = load_vlm(kw["model"], dtype=kw["dtype"], device_map=kw["device_map"])
    results = evaluate(
        model, processor, rows, kw["out"], defenses=defenses, judges=built, conditions=conds or None,
        glasses_dir=kw["glasses"], concepts=kw["concepts"] if not kw["column_map"] else concept_set,
        run_config=run_config,
        adversarial_image=kw["adv_image"], adversarial_targets=targets, adversarial_config=adv_config,
        typo_style=kw["typo_style"], judge_device=kw["judge_device"], n_boot=kw["n_boot"],
        extra_config={"model_path": kw["model"], "bench": str(kw["bench"]), "limit": kw["limit"],
                      "categories": _split(kw["categories"]) or None},
        progress=kw["progress"])
    _print_results(results)
    tp = results["throughput"]
    if tp.get("samples_per_s"):
        console.print(f"{tp['new_samples']} new samples at {tp['samples_per_s']:.2f} samples/s")
    console.print(f"wrote {kw['out'] / 'results.json'}, {kw['out'] / 'report.md'} and PNGs")


def compare_command(
    runs: list[Path] = typer.Argument(..., help="Run folders (or results.json files) to compare."),
    out: Path = typer.Option(Path("compare.png"), help="Where to write the comparison PNG."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Side-by-side table (and a PNG) of the harmful rate and side metrics of several runs."""
    _run_compare(runs, out, threads)


@cli_errors
def _run_compare(runs: list[Path], out: Path, threads: int | None = None) -> None:
    from .report import compare_rows, plot_compare

    set_threads(threads)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the PNG file to write")
    check_out_dir(out.parent if str(out.parent) else Path("."), "--out's folder")

    rows = compare_rows(runs)
    if not rows:
        raise ValueError("the runs hold no results to compare")
    conds = sorted({c for r in rows for c in r["by_condition"]})
    table = Table(title="harmful rate % by run and defence")
    for col in ["run", "defence", "overall", "95% CI", *conds, "over-refusal %", "VQA acc %", "ppl"]:
        table.add_column(col, justify="left" if col in ("run", "defence") else "right")
    for r in rows:
        ci = "-" if not r["ci95"] else f"[{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"
        ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        table.add_row(r["run"], r["defense"], _pct(r["harmful_rate"]), ci,
                      *[_pct(r["by_condition"].get(c)) for c in conds], _pct(r["over_refusal"]),
                      _pct(r["vqa_accuracy"]), ppl)
    print_table(table, console)
    console.print(f"wrote {plot_compare(rows, out)}")
