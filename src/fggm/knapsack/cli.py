"""``fggm knapsack train | evaluate | attack``: a thin typer layer over :mod:`fggm.knapsack`.

Registered on the main ``fggm`` app as the ``knapsack`` sub-command; :func:`demo_part` is the
knapsack part of ``fggm demo``.

Example:
    $ fggm knapsack train --config configs/knapsack10.yaml --out runs/knapsack10
    $ fggm knapsack evaluate --instances 5000 --seed 7 --out runs/knapsack-eval
    $ fggm knapsack attack --attackers 0,1 --victims 2 --goal exclude --out runs/knapsack-attack.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from fggm._console import print_table

app = typer.Typer(name="knapsack", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="FGGM on a DRL knapsack solver: train the SAC solver, evaluate it, craft forged item reports.")
console = Console()  # tables go through print_table: whole when piped, wrapped in a terminal

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _fail(exc: BaseException) -> None:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    typer.echo(f"error: {(text.strip().splitlines() or [type(exc).__name__])[0]}", err=True)
    raise typer.Exit(code=2)


def _ids(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated item ids, got {text!r}") from None


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be two comma-separated numbers LOW,HIGH, got {text!r}") from None
    return lo, hi


def solver_table(rows: list[dict[str, Any]], title: str) -> Any:
    """Rich table of solver rows: mean value (95% CI), share of the exact optimum, feasibility.

    Example:
        >>> solver_table([{"solver": "greedy", "mean_value": 3.7, "value_ci95": [3.6, 3.8], "vs_optimum": 0.98,
        ...                "feasible_rate": 1.0, "mean_items": 4.2}], "t").row_count
        1
    """
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("solver", "mean value", "CI95", "vs optimum", "feasible", "items"):
        table.add_column(col, justify="left" if col == "solver" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["solver"], f"{r['mean_value']:.4f}", f"{r['value_ci95'][0]:.3f}-{r['value_ci95'][1]:.3f}",
                      f"{100 * r['vs_optimum']:.2f}%", f"{100 * r['feasible_rate']:.1f}%", f"{r['mean_items']:.2f}")
    return table


@app.command()
def train(
    config: Path = typer.Option(Path("configs/knapsack10.yaml"), "--config", help="YAML/JSON config with 'env' and 'train' sections."),
    out: Path = typer.Option(..., "--out", help="Output directory for the checkpoint, CSV log, curve and manifest."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Environment steps (overrides train.total_steps)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (overrides train.seed)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the final evaluation against the baselines."),
) -> None:
    """Train the SAC knapsack solver (SB3 SAC inside VecNormalize) and write a loadable checkpoint."""
    from fggm.knapsack.config import KnapsackConfig
    from fggm.knapsack.train import train as run_train

    try:
        cfg = KnapsackConfig.from_file(config)
        if steps is not None and steps < 1:
            raise ValueError("--steps must be >= 1")
        m = run_train(cfg, out, steps=steps, seed=seed, progress=True, final_eval=not no_eval)
    except USER_ERRORS as exc:
        _fail(exc)
        return
    console.print(f"checkpoint: {out}  head: {m['head']}  steps: {m['steps']}  wall: {m['wall_time_s']} s  "
                  f"(best validation {m['checkpoint_val_vs_optimum']} of the optimum at step {m['checkpoint_step']})")
    if "final_evaluation" in m:
        fe = m["final_evaluation"]
        for name, r in fe["results"].items():
            console.print(f"  {name:8s} mean value {r['mean_value']:.4f}  {100 * r['vs_optimum']:.2f}% of the optimum  "
                          f"feasible {100 * r['feasible_rate']:.1f}%")


@app.command()
def evaluate(
    solver: list[str] = typer.Option([], "--solver", help="Checkpoint directory or random | greedy | exact (repeatable; "
                                                          "default: the shipped solver and every baseline)."),
    instances: int = typer.Option(2000, "--instances", help="Unseen instances (every solver sees the same)."),
    seed: int = typer.Option(7, "--seed", help="Instance seed."),
    out: Path = typer.Option(Path("runs/knapsack-eval"), "--out", help="Output directory (results.json, evaluation.png)."),
    attack: Optional[Path] = typer.Option(None, "--attack", help="Attack JSON from `fggm knapsack attack`: evaluate it "
                                                                 "vs no forgery and a random forgery."),
) -> None:
    """Evaluate solvers on identical unseen instances: value, share of the exact optimum, feasibility."""
    from fggm.knapsack.attack_eval import attack_table, default_solver, evaluate_attack_file
    from fggm.knapsack.evaluate import evaluate_solvers, plot_solvers, write_results
    from fggm.knapsack.solvers import BASELINES, PolicySolver, make_solver
    from fggm.knapsack.train import load_solver

    try:
        if instances < 1:
            raise ValueError("--instances must be >= 1")
        if attack is not None:
            if len(solver) > 1:
                raise ValueError("--attack takes at most one --solver (the attacked checkpoint)")
            result = evaluate_attack_file(attack, solver[0] if solver else None, instances=instances, seeds=(seed,),
                                          out_dir=out)
            print_table(attack_table(result["rows"], title=f"{attack.name}: {instances} instances, seed {seed}"), console)
            console.print(f"wrote {out / 'results.json'} and {', '.join(result['pngs'])}")
            return
        names = list(solver) or [str(default_solver()), *BASELINES]
        solvers, env_cfg = [], None
        for n in names:
            if n in BASELINES:
                solvers.append(make_solver(n, seed))
                continue
            if not Path(n).is_dir():
                raise ValueError(f"unknown solver {n!r}: not a baseline ({', '.join(BASELINES)}) nor a checkpoint directory")
            model, vecnorm, cfg = load_solver(n)
            if env_cfg is not None and cfg.env.n_items != env_cfg.n_items:
                raise ValueError(f"checkpoint {n} has {cfg.env.n_items} items, another has {env_cfg.n_items}")
            env_cfg = env_cfg or cfg.env
            solvers.append(PolicySolver(model, vecnorm, cfg.env, name=f"sac:{Path(n).resolve().name}"))
        if env_cfg is None:
            from fggm.knapsack.config import KnapsackEnvConfig

            env_cfg = KnapsackEnvConfig()
        rows = evaluate_solvers(env_cfg, solvers, instances, seed, progress=True)
    except USER_ERRORS as exc:
        _fail(exc)
        return
    path = write_results(rows, out, extra={"env": {k: getattr(env_cfg, k) for k in env_cfg.__dataclass_fields__}})
    png = plot_solvers(rows, Path(out) / "evaluation.png")
    print_table(solver_table(rows, title=f"{instances} instances, seed {seed}"), console)
    console.print(f"wrote {path} and {png}")


@app.command()
def attack(
    solver: Optional[Path] = typer.Option(None, "--solver", help="Checkpoint directory (default: the shipped solver10)."),
    attackers: str = typer.Option("0,1", "--attackers", help="Comma-separated attacker item ids."),
    victims: str = typer.Option("2", "--victims", help="Comma-separated victim item ids (goal exclude)."),
    goal: str = typer.Option("exclude", "--goal", help="exclude (victims out) | include (attackers in) | infeasible."),
    k: float = typer.Option(3.0, "--k", help="Box half-width in normaliser standard deviations."),
    method: str = typer.Option("fggm", "--method", help="fggm | fggm-ibp | mean-pgd | eot-pgd | random."),
    out: Path = typer.Option(Path("knapsack-attack.json"), "--out", help="Output attack JSON."),
    weight_bounds: str = typer.Option("0,1", "--weight-bounds", help="Allowed forged weights LOW,HIGH."),
    value_bounds: str = typer.Option("0,1", "--value-bounds", help="Allowed forged values LOW,HIGH."),
    margin: float = typer.Option(0.05, "--margin", help="Pre-tanh margin every spec row must clear."),
    domain: str = typer.Option("crown", "--domain", help="Abstract domain: crown or ibp."),
    step_rule: str = typer.Option("sign", "--step-rule", help="sign (projected FGSM steps) or adam."),
    steps: int = typer.Option(60, "--steps", help="Gradient steps."),
    step_size: float = typer.Option(0.1, "--step-size", help="Step as a fraction of the forged range."),
    restarts: int = typer.Option(8, "--restarts", help="Random restarts (one batch)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the restarts."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Craft one fixed forgery of the attackers' (weight, value) reports for every instance in the box."""
    import torch

    from fggm.knapsack.attack import KnapsackSetup, KnapsackThreat, KnapsackVictim, craft
    from fggm.knapsack.attack_eval import default_solver

    torch.set_num_threads(max(1, threads))
    try:
        tm = KnapsackThreat(attackers=_ids(attackers, "--attackers"), victims=_ids(victims, "--victims"), goal=goal,
                            k=k, weight_bounds=_pair(weight_bounds, "--weight-bounds"),
                            value_bounds=_pair(value_bounds, "--value-bounds"), margin=margin, domain=domain,
                            step_rule=step_rule, steps=steps, step_size=step_size, restarts=restarts, seed=seed)
        victim = KnapsackVictim.load(solver or default_solver())
        KnapsackSetup.build(victim, tm)  # validate items and sizes before the progress bar starts
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc=f"{method} ({goal})", unit="step") as bar:
            def on_step(i: int, loss: float) -> None:
                bar.n = min(i, steps)
                bar.set_postfix_str(f"distance to certificate {loss:.4f}")
                bar.refresh()

            res = craft(victim, tm, method, on_step=on_step)
    except USER_ERRORS as exc:
        _fail(exc)
        return
    path = res.save(out)
    c = res.certificate
    forged = ", ".join(f"item {i}: w={w:.3f} v={v:.3f}" for i, (w, v) in res.forged.items())
    extra = (f"reachable candidates {c['reachable_candidates']}, goal share {c['candidate_goal_share']:.2f}"
             if c.get("head") == "proto" else f"spec rows proved {c['rows_proved_share']:.2f}")
    console.print(f"{method} ({goal}, k={k:g}): {'PROVED' if c['proved'] else 'not proved'}; {extra}; "
                  f"proved up to k={c['certified_k']:.3g}; forged {forged}; {res.steps_done} steps, {res.wall_s:.1f} s")
    console.print(f"wrote {path}")


def demo_part(out: Path, *, solver: Path | None = None, instances: int = 2000, steps: int = 40,
              progress: bool = True) -> dict[str, Any]:
    """The knapsack part of ``fggm demo``: attackers 0 and 1, victim 2, k = 3; goals ``exclude``
    and ``infeasible``; every method; ``instances`` unseen instances; writes into ``out``.

    Example:
        >>> # demo_part(Path("runs/fggm-demo/knapsack"))
    """
    from fggm.knapsack.attack import KnapsackThreat, KnapsackVictim
    from fggm.knapsack.attack_eval import attack_table, default_solver, run_demo

    victim = KnapsackVictim.load(solver or default_solver())
    tm = KnapsackThreat(attackers=(0, 1), victims=(2,), k=3.0, steps=steps, restarts=4)
    result = run_demo(victim, tm, instances=instances, seeds=(101,), out_dir=out, progress=progress)
    print_table(attack_table(result["rows"], title=f"FGGM knapsack demo: attackers [0, 1], victim [2], k=3 "
                                                     f"({instances} unseen instances)"), console)
    console.print(f"wrote {out / 'results.json'} and {', '.join(result['pngs'])} in {result['wall_s']} s")
    return result
