"""The attack commands of the ``fggm`` CLI (``fggm attack``, ``fggm sweep``): thin
typer layers over :mod:`fggm.mimo.attack`, :mod:`fggm.mimo.attack_eval` and :mod:`fggm.mimo.sweep`,
registered on the main app by :mod:`fggm.cli`.

Example:
    $ fggm attack --attackers 0,1 --victims 2 --forgery pilot --out runs/attack.json
    $ fggm sweep --victims all --max-attackers 2 --forgery fixed,stealthy,pilot --out runs/fggm-sweep
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["attack", "sweep", "summary_table", "margins_table"]


def _cli() -> Any:
    import fggm.cli as cli

    return cli


def _pair(text: str, what: str) -> tuple[float, float]:
    from fggm.mimo.config import ConfigError

    vals = _cli()._floats(text, what)
    if len(vals) != 2:
        raise ConfigError(f"{what} must be two comma-separated numbers (min,max), got {text!r}")
    return vals[0], vals[1]


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def attack(
    scheduler: Optional[Path] = typer.Option(None, "--scheduler", help="Checkpoint directory (default: the shipped smart16)."),
    attackers: str = typer.Option("0,1", "--attackers", help="Comma-separated attacker user ids."),
    victims: str = typer.Option("2", "--victims", help="Comma-separated victim user ids."),
    k: float = typer.Option(3.0, "--k", help="Box half-width in normaliser standard deviations."),
    coverage: Optional[float] = typer.Option(
        None, "--coverage", help="Pick k instead by the union bound: the box holds all unknown entries at once with "
                                 "this probability under the normaliser's Gaussian (e.g. 0.5); overrides --k."),
    forgery: str = typer.Option("fixed", "--forgery", help="Threat model: fixed, stealthy, pilot or silent."),
    method: str = typer.Option("fggm", "--method", help="fggm, fggm-ibp, mean-pgd, eot-pgd, random or silent."),
    box: str = typer.Option("sigma", "--box", help="sigma (mean +- k sigma) or tight (+ SE tied to the channel norm, "
                                                   "cumulative SE <= horizon x largest SE)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Tight box: TTIs the cumulative SE can span "
                                                                  "(default: the episode length)."),
    stealth_k: float = typer.Option(2.0, "--stealth-k", help="Stealthy: every forged entry within mean +- this many sigma."),
    pilot_gain: str = typer.Option("0.1,4", "--pilot-gain", help="Pilot: range min,max of the pilot's power gain c^2."),
    out: Path = typer.Option(Path("attack.json"), "--out", help="Output attack JSON."),
    domain: str = typer.Option("crown", "--domain", help="Abstract domain: crown or ibp."),
    step_rule: str = typer.Option("sign", "--step-rule", help="sign (projected FGSM steps) or adam."),
    steps: int = typer.Option(60, "--steps", help="Gradient steps per restart."),
    step_size: float = typer.Option(0.2, "--step-size", help="Step as a fraction of the forgery's scale."),
    restarts: int = typer.Option(4, "--restarts", help="Random restarts (one batch)."),
    power_budget: Optional[float] = typer.Option(None, "--power-budget", help="Max ||h||^2 per forged channel."),
    seed: int = typer.Option(0, "--seed", help="Seed of the restarts (the crafting seed)."),
    eval_ttis: int = typer.Option(400, "--eval-ttis", help="TTIs of the check after crafting that measures coverage, "
                                                           "certified coverage and both sides' throughput (0: skip)."),
    eval_seed: int = typer.Option(201, "--eval-seed", help="Channel seed of that check."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Craft an attack (FGGM or a baseline) under a threat model: forged reports whose certified bound keeps the victims unscheduled."""
    import torch

    from fggm.mimo.attack import AttackSetup, ThreatModel, Victim, check_method, craft, union_bound_k
    from fggm.mimo.attack_eval import default_scheduler, evaluate_result
    from fggm.mimo.config import ConfigError

    cli = _cli()
    torch.set_num_threads(max(1, threads))
    try:
        if eval_ttis < 0:
            raise ConfigError("--eval-ttis must be >= 0")
        check_method(method)
        tm = ThreatModel(attackers=cli._users(attackers, "--attackers"), victims=cli._users(victims, "--victims"), k=k,
                         forgery=forgery, domain=domain, step_rule=step_rule, steps=steps, step_size=step_size,
                         restarts=restarts, power_budget=power_budget, stealth_k=stealth_k,
                         pilot_gain=_pair(pilot_gain, "--pilot-gain"), box=box, horizon=horizon, seed=seed)
        cli.check_out(out, is_file=True)
        victim = Victim.load(scheduler or default_scheduler())
        setup = AttackSetup.build(victim, tm)  # validate users and sizes before the progress bar starts
        if coverage is not None:
            n = victim.env.obs_dim - (0 if forgery == "pilot" else len(setup.controlled.indices))
            from dataclasses import replace

            tm = replace(tm, k=round(union_bound_k(n, coverage), 4))
            cli.console.print(f"--coverage {coverage}: k = {tm.k} by the union bound over {n} unknown entries")
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc=f"{method} ({forgery})", unit="step") as bar:
            def on_step(i: int, loss: float) -> None:
                bar.n = min(i, steps)
                bar.set_postfix_str(f"distance to certificate {loss:.4f}")
                bar.refresh()

            result = craft(victim, tm, method, on_step=on_step)
        if eval_ttis > 0:
            with tqdm(total=eval_ttis * 2, desc="checking on real TTIs", unit="TTI") as bar:
                evaluate_result(victim, result, ttis=eval_ttis, seeds=(eval_seed,), on_step=bar.update)
    except cli.USER_ERRORS as exc:
        cli.fail(cli._error_text(exc))
        return
    path = result.save(out)
    c = result.certificate
    status = "PROVED" if c["proved"] else f"not proved; certified share {c['certified_share']:.3f}"
    cli.console.print(f"certificate ({result.threat.domain}, {forgery}, k={result.threat.k:g}): {status}; bound "
                      f"[{c['bound'][0]:.4f}, {c['bound'][1]:.4f}]; proved up to k={c['certified_k']:.3g}; "
                      f"{result.steps_done} steps, {result.wall_s:.1f} s")
    ev = result.evaluation
    if ev:
        cli.console.print(f"on {ev['ttis']} real TTIs (seed {eval_seed}): victims' throughput {ev['victim_drop']:.1f}% lower, "
                          f"attackers' own {ev['attacker_drop']:.1f}% lower; coverage {ev['coverage']:.3f}, "
                          f"certified coverage {ev['certified_coverage']:.3f}")
    cli.console.print(f"wrote {path}")


def summary_table(summary: list[dict[str, Any]], title: str = "mean over victims") -> Any:
    """Rich table of sweep summary rows: the mean victim drop over victim sets with its CI, min,
    median and max, the attackers' own drop, coverage and certified coverage.

    Example:
        >>> summary_table([{"method": "fggm", "num_attackers": 2, "forgery": "fixed", "victims": "single",
        ...                 "victim_sets": 16, "victim_drop": 50.0, "ci95": [40, 60], "victim_drop_min": 0.0,
        ...                 "victim_drop_median": 55.0, "victim_drop_max": 100.0}]).row_count
        1
    """
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("method", "A", "threat", "victims", "n", "mean drop %", "CI95", "min", "median", "max", "att. drop %",
                "cov", "cert cov", "k cert"):
        table.add_column(col, justify="left" if col in ("method", "threat", "victims") else "right", no_wrap=True)

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for s in summary:
        table.add_row(s["method"], str(s["num_attackers"]), s["forgery"], s["victims"], str(s["victim_sets"]),
                      f"{s['victim_drop']:.1f}", f"{s['ci95'][0]:.0f}..{s['ci95'][1]:.0f}", f"{s['victim_drop_min']:.0f}",
                      f"{s['victim_drop_median']:.0f}", f"{s['victim_drop_max']:.0f}", f(s.get("attacker_drop"), ".1f"),
                      f(s.get("coverage"), ".2f"), f(s.get("certified_coverage"), ".2f"), f(s.get("certified_k"), ".3g"))
    return table


def margins_table(margins: list[dict[str, Any]]) -> Any:
    """Rich table of FGGM's paired margins over the point baselines (percentage points, 95% CI).

    Example:
        >>> margins_table([{"versus": "mean-pgd", "num_attackers": 1, "forgery": "fixed", "victims": "single",
        ...                 "margin": 1.0, "ci95": [-2.0, 3.0], "excludes_zero": False}]).row_count
        1
    """
    from rich import box
    from rich.table import Table

    table = Table(title="FGGM minus baseline (victim drop, points)", box=box.SIMPLE_HEAD)
    for col in ("versus", "A", "threat", "victims", "margin", "CI95", "CI excludes 0"):
        table.add_column(col, justify="left" if col in ("versus", "threat", "victims") else "right", no_wrap=True)
    for m in margins:
        table.add_row(m["versus"], str(m["num_attackers"]), m["forgery"], m["victims"], f"{m['margin']:+.1f}",
                      f"{m['ci95'][0]:+.1f}..{m['ci95'][1]:+.1f}", "yes" if m["excludes_zero"] else "no")
    return table


def sweep(
    scheduler: Optional[Path] = typer.Option(None, "--scheduler", help="Checkpoint directory (default: the shipped smart16)."),
    out: Path = typer.Option(Path("runs/fggm-sweep"), "--out", help="Output directory (settings.json, configs.jsonl, "
                                                                     "results.json, PNGs); an unfinished sweep resumes."),
    victims: str = typer.Option("all", "--victims", help="'all' (every single victim and --pairs random pairs) or "
                                                         "comma-separated victim ids (one victim set)."),
    max_attackers: int = typer.Option(2, "--max-attackers", help="Sweep 1..N attackers (drawn at random from the others)."),
    num_attackers: Optional[str] = typer.Option(None, "--num-attackers", help="Comma-separated attacker counts "
                                                                              "(overrides --max-attackers)."),
    pairs: int = typer.Option(4, "--pairs", help="Random victim pairs with --victims all."),
    forgery: str = typer.Option("fixed", "--forgery", help="Comma-separated threat models: fixed, stealthy, pilot."),
    ks: str = typer.Option("3", "--k", help="Comma-separated box half-widths k."),
    channels: str = typer.Option("rayleigh", "--channel", help="Comma-separated channel models to evaluate on."),
    methods: str = typer.Option(",".join(("random", "silent", "mean-pgd", "eot-pgd", "oracle-pgd", "fggm-ibp", "fggm")),
                                "--methods", help="Comma-separated methods."),
    craft_seeds: int = typer.Option(2, "--craft-seeds", help="Crafting seeds per search method."),
    seeds: int = typer.Option(2, "--seeds", help="Number of evaluation channel seeds (101, 102, ...)."),
    ttis: int = typer.Option(200, "--ttis", help="TTIs per evaluation seed and condition (>= 50)."),
    steps: int = typer.Option(40, "--steps", help="Search steps of every method (the same budget)."),
    restarts: int = typer.Option(4, "--restarts", help="Restarts of every search method."),
    oracle_steps: int = typer.Option(10, "--oracle-steps", help="PGD steps per TTI of the white-box oracle."),
    box_kind: str = typer.Option("sigma", "--box", help="sigma or tight (see fggm attack --help)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming OUT/configs.jsonl."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Sweep every victim (singles and random pairs) x attacker count x threat model against every baseline; the mean over victims with its spread."""
    import torch

    from fggm.mimo.attack import Victim
    from fggm.mimo.attack_eval import default_scheduler
    from fggm.mimo.config import ConfigError
    from fggm.mimo.sweep import SweepSettings, run_sweep

    cli = _cli()
    torch.set_num_threads(max(1, threads))
    try:
        if seeds < 1 or max_attackers < 1 or steps < 1 or restarts < 1 or oracle_steps < 0:
            raise ConfigError("--seeds, --max-attackers, --steps and --restarts must be >= 1, --oracle-steps >= 0")
        counts = tuple(int(x) for x in cli._floats(num_attackers, "--num-attackers")) if num_attackers \
            else tuple(range(1, max_attackers + 1))
        settings = SweepSettings(victims=victims, attacker_counts=counts, pairs=pairs, forgeries=_words(forgery),
                                 ks=cli._floats(ks, "--k"), channels=_words(channels), methods=_words(methods),
                                 craft_seeds=craft_seeds, eval_seeds=tuple(range(101, 101 + seeds)), ttis=ttis,
                                 steps=steps, restarts=restarts, oracle_steps=oracle_steps, box=box_kind)
        cli.check_out(out)
        victim = Victim.load(scheduler or default_scheduler())
        result = run_sweep(victim, settings, out_dir=out, fresh=fresh, progress=True)
    except cli.USER_ERRORS as exc:
        cli.fail(cli._error_text(exc))
        return
    from fggm._console import print_table

    print_table(summary_table(result["summary"], title=f"victim throughput drop, mean over victim sets ({victim.head} head)"),
                cli.console)
    if result["margins"]:
        print_table(margins_table(result["margins"]), cli.console)
    cli.console.print(f"wrote {Path(out) / 'results.json'} and {', '.join(result.get('pngs', []))}")
