"""``fggm`` command line: a thin typer layer over :mod:`fggm.train` and :mod:`fggm.evaluate`.

Example:
    $ fggm train --config configs/smart16.yaml --out runs/smart16
    $ fggm evaluate --scheduler data/schedulers/smart16 --scheduler greedy --ttis 2000 --seed 1 --out runs/eval
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fggm._console import print_table
from fggm.mimo.config import ConfigError, EnvConfig, FggmConfig

app = typer.Typer(
    name="fggm",
    help="FGGM: MU-MIMO uplink scheduling simulator, SAC scheduler training, evaluation and the attack; "
         "`fggm knapsack ...` for the knapsack solver.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

USER_ERRORS = (ConfigError, ValueError, OSError, KeyError)  # OSError: unreadable or unwritable files
#: default evaluation seed: away from the small seeds training configs use (the shipped smart16
#: trained on 0..3), so the default evaluation is on unseen channels
DEFAULT_EVAL_SEED = 101


def fail(message: str) -> None:
    """Print one line ``error: ...`` to stderr and exit with status 2.

    Example:
        >>> # fail("unknown scheduler 'foo'")
    """
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _error_text(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def check_out(path: Path, what: str = "--out", is_file: bool = False) -> None:
    """Refuse an output path that cannot be written, before any expensive work.

    ``is_file`` paths (a JSON) must not be folders; folder paths must not be files.  A probe file
    is written and removed in the folder, or in its nearest existing parent when it does not
    exist yet (nothing is created, so a refused run leaves nothing behind).

    Example:
        >>> import tempfile; d = Path(tempfile.mkdtemp())
        >>> check_out(d / "run" / "sub")   # d is writable; nothing is created
        >>> (d / "run").exists()
        False
        >>> _ = (d / "f").write_text("x")
        >>> try:
        ...     check_out(d / "f")
        ... except ConfigError as e:
        ...     print(e)                # doctest: +ELLIPSIS
        --out .../f is a file, not a folder
    """
    import tempfile

    if is_file and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file")
    if not is_file and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder")
    folder = path.parent if is_file else path
    existing = next((p for p in [folder, *folder.absolute().parents] if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(f"{what} {path} is not writable: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable: {exc.strerror or exc}") from None


@app.command()
def train(
    config: Path = typer.Option(..., "--config", help="YAML/JSON config with 'env' and 'train' sections."),
    out: Path = typer.Option(..., "--out", help="Output directory for the checkpoint, CSV log, curve and manifest."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Environment steps (overrides train.total_steps)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (overrides train.seed)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the final evaluation against the baselines."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (overrides train.torch_threads)."),
) -> None:
    """Train the SAC scheduler (SB3 SAC inside VecNormalize) and write a loadable checkpoint.

    The config's env.action_head picks SMART's scalar subset action (subset) or one score per user
    from a shared per-user network (scores, optionally warm-started by behaviour cloning).
    """
    from dataclasses import replace

    from fggm.mimo.train import train as run_train

    try:
        cfg = FggmConfig.from_file(config)
        if steps is not None and steps < 1:
            raise ConfigError("--steps must be >= 1")
        check_out(out)
        if threads is not None:
            if threads < 1:
                raise ConfigError("--threads must be >= 1")
            cfg = replace(cfg, train=replace(cfg.train, torch_threads=threads))
        manifest = run_train(cfg, out, steps=steps, seed=seed, progress=True, final_eval=not no_eval)
    except USER_ERRORS as exc:
        fail(_error_text(exc))
        return
    console.print(f"checkpoint: {out}  steps: {manifest['steps']}  wall: {manifest['wall_time_s']} s")
    if "final_evaluation" in manifest:
        res = manifest["final_evaluation"]["results"]
        rows = [{"scheduler": k, **v} for k, v in res.items() if isinstance(v, dict)]
        print_table(results_table(rows, title=f"final evaluation ({manifest['final_evaluation']['ttis']} TTIs, unseen channels)"), console)


def results_table(rows: list[dict[str, Any]], title: str = "evaluation") -> Table:
    """Rich table of evaluation rows (reward, sum SE, Jain, share of the optimum, and, where rows
    carry it, the largest relative deviation of a user's scheduled share from the mean share).

    Example:
        >>> results_table([{"scheduler": "pf", "mean_reward": 2.0, "sum_se": 30.0, "jain": 0.9}]).row_count
        1
    """
    table = Table(title=title)
    cols = ["scheduler", "mean reward", "vs exhaustive", "sum SE [b/s/Hz]", "Jain", "min user SE"]
    shares = any("share_max_rel_dev" in r for r in rows)
    if shares:
        cols.append("share dev")
    for col in cols:  # escape: rich would read "[b/s/Hz]" as a markup tag and drop it
        table.add_column(escape(col), justify="left" if col == "scheduler" else "right")
    best = next((r["mean_reward"] for r in rows if r["scheduler"] == "exhaustive"), None)
    for r in rows:
        ratio = f"{100 * r['mean_reward'] / best:.1f}%" if best else "-"
        per_user = r.get("per_user_throughput")
        cells = [str(r["scheduler"]), f"{r['mean_reward']:.4f}", ratio, f"{r['sum_se']:.2f}", f"{r['jain']:.3f}",
                 f"{min(per_user):.3f}" if per_user else "-"]
        if shares:
            dev = r.get("share_max_rel_dev")
            cells.append("-" if dev is None else f"{100 * dev:.0f}%")
        table.add_row(*cells)
    return table


def resolve_schedulers(names: list[str], env_config: EnvConfig | None, seed: int) -> tuple[list[Any], EnvConfig]:
    """Turn ``--scheduler`` values (baseline names or checkpoint directories) into schedulers.

    The environment config is ``env_config`` if given, else the first checkpoint's, else the defaults
    (the SMART 16x16 setting). A checkpoint of another size than the environment is an error.

    Example:
        >>> scheds, cfg = resolve_schedulers(["greedy"], None, 0)
        >>> scheds[0].name, cfg.num_users
        ('greedy', 16)
    """
    from fggm.mimo.schedulers import BASELINES, PolicyScheduler, make_scheduler
    from fggm.mimo.train import load_config_for_dir, load_scheduler

    if not names:
        raise ConfigError("give at least one --scheduler")
    dirs = [n for n in names if n not in BASELINES]
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"unknown scheduler {d!r}: not a baseline ({', '.join(BASELINES)}) nor a checkpoint directory")
    cfg = env_config or (load_config_for_dir(dirs[0]) if dirs else EnvConfig())
    out = []
    for n in names:
        if n in BASELINES:
            out.append(make_scheduler(n, seed))
        else:
            model, vecnorm, _ = load_scheduler(n, cfg)
            out.append(PolicyScheduler(model, vecnorm, name=f"sac:{Path(n).resolve().name}"))
    return out, cfg


@app.command()
def evaluate(
    scheduler: list[str] = typer.Option(
        [], "--scheduler", help="Checkpoint directory or one of random, round-robin, greedy, pf, exhaustive (repeatable)."
    ),
    ttis: int = typer.Option(2000, "--ttis", help="TTIs per scheduler (episodes restart every episode_length)."),
    seed: int = typer.Option(DEFAULT_EVAL_SEED, "--seed",
                             help="Channel seed (every scheduler sees the same channels); must not be one a checkpoint "
                                  "trained or was selected on (its manifest's train_seeds / validation_seeds)."),
    out: Path = typer.Option(Path("runs/fggm-eval"), "--out", help="Output directory (results.json, evaluation.png)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config whose 'env' section sets the environment."),
    attack: Optional[Path] = typer.Option(
        None, "--attack", help="attack.json from `fggm attack`: evaluate it (seeds SEED..SEED+2) vs no attack and random CSI."
    ),
    oracle: bool = typer.Option(False, "--oracle", help="With --attack: add the white-box oracle PGD upper bound."),
    channel: Optional[str] = typer.Option(
        None, "--channel", help="Evaluate on another channel model (rayleigh, correlated, one-ring) than the config's "
                                "or checkpoint's, without retraining."),
    allow_seen_seeds: bool = typer.Option(
        False, "--allow-seen-seeds", help="Evaluate even on a seed a checkpoint trained on (warns; rows marked seen_seeds)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Evaluate schedulers on identical unseen channels: reward, sum SE, Jain, per-user throughput and
    scheduled share (with the fairness check across user indices)."""
    import torch

    from fggm.mimo.evaluate import evaluate_schedulers, write_results
    from fggm.plots import plot_evaluation

    if threads < 1:
        fail("--threads must be >= 1")
    torch.set_num_threads(threads)
    if attack is not None:
        if channel is not None or config is not None:
            fail("--channel and --config do not apply to --attack (the attack file fixes the environment)")
        _evaluate_attack(attack, scheduler, ttis, seed, out, oracle, allow_seen_seeds)
        return
    try:
        if ttis < 1:
            raise ConfigError("--ttis must be >= 1")
        env_cfg = FggmConfig.from_file(config).env if config is not None else None
        check_out(out)
        seen = _check_seeds([n for n in scheduler if Path(n).is_dir()], [seed], allow_seen_seeds)
        if channel is not None:
            from dataclasses import replace

            from fggm.mimo.config import ChannelConfig
            from fggm.mimo.train import load_config_for_dir

            dirs = [n for n in scheduler if Path(n).is_dir()]
            base = env_cfg or (load_config_for_dir(dirs[0]) if dirs else EnvConfig())
            if channel == "umi":
                raise ConfigError("--channel umi needs a trace file: use --config with env.channel.trace_file")
            env_cfg = replace(base, channel=ChannelConfig(**{**FggmConfig(env=base).to_dict()["env"]["channel"], "model": channel}))
        scheds, env_cfg = resolve_schedulers(list(scheduler), env_cfg, seed)
        rows = evaluate_schedulers(env_cfg, scheds, ttis, seed, progress=True)
    except USER_ERRORS as exc:
        fail(_error_text(exc))
        return
    for r in rows:
        r["seen_seeds"] = seen
    path = write_results(rows, out, extra={"env": json.loads(json.dumps(FggmConfig(env=env_cfg).to_dict()["env"]))})
    png = plot_evaluation(rows, Path(out) / "evaluation.png")
    print_table(results_table(rows, title=f"{ttis} TTIs, seed {seed}"), console)
    console.print(f"wrote {path} and {png}")


# ----------------------------------------------------------------- FGGM attack (logic in fggm.attack*)


def _attack_scheduler(attack: Path) -> str:
    """The scheduler an attack file names ('' when the file is missing or names none)."""
    try:
        return str(json.loads(Path(attack).read_text()).get("scheduler") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _users(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated user ids, got {text!r}") from None


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _check_seeds(checkpoints: list[str], seeds: list[int], allow: bool) -> bool:
    """Refuse (ConfigError) evaluation seeds a checkpoint trained or was selected on, unless ``allow``
    (then warn on stderr). Returns whether any seed was seen."""
    from fggm.mimo.train import MANIFEST_FILE, check_unseen

    seen = False
    for ckpt in checkpoints:
        if not (Path(ckpt) / MANIFEST_FILE).is_file():
            continue  # not a checkpoint: resolve_schedulers / the attack loader give the error
        overlap = check_unseen(ckpt, seeds)
        if not overlap:
            continue
        seen = True
        what = f"seed(s) {overlap} were used to train or select {ckpt}: its channels are not unseen"
        if not allow:
            raise ConfigError(f"{what}; pick another --seed (or pass --allow-seen-seeds)")
        typer.echo(f"warning: {what}", err=True)
    return seen


def _evaluate_attack(attack: Path, scheduler: list[str], ttis: int, seed: int, out: Path, oracle: bool,
                     allow_seen_seeds: bool = False) -> None:
    from fggm.mimo.attack_eval import attack_table, evaluate_attack_file

    try:
        if ttis < 1:
            raise ConfigError("--ttis must be >= 1")
        if len(scheduler) > 1:
            raise ConfigError("--attack takes at most one --scheduler (the attacked checkpoint)")
        check_out(out)
        _check_seeds([scheduler[0] if scheduler else _attack_scheduler(attack)], [seed, seed + 1, seed + 2],
                     allow_seen_seeds)
        result = evaluate_attack_file(attack, scheduler[0] if scheduler else None, ttis=ttis,
                                      seeds=(seed, seed + 1, seed + 2), oracle=oracle, out_dir=out, progress=True)
    except USER_ERRORS as exc:
        fail(_error_text(exc))
        return
    print_table(attack_table(result["rows"], title=f"{attack.name}: {ttis} TTIs x 3 seeds"), console)
    console.print(f"wrote {Path(out) / 'results.json'}")


from fggm.mimo.attack_cli import attack as _attack_cmd, sweep as _sweep_cmd  # noqa: E402

# the attack commands live with the attack (fggm.mimo.attack_cli); registered here, in this order
app.command(name="attack")(_attack_cmd)
app.command(name="sweep")(_sweep_cmd)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/fggm-demo"), "--out", help="Output directory (results.json, attack JSONs, PNGs)."),
    scheduler: Optional[Path] = typer.Option(None, "--scheduler", help="Checkpoint directory (default: the shipped smart16)."),
    attackers: str = typer.Option("0,1", "--attackers", help="Comma-separated attacker user ids."),
    victims: str = typer.Option("2", "--victims", help="Comma-separated victim user ids."),
    k: float = typer.Option(3.0, "--k", help="Box half-width in normaliser standard deviations."),
    forgery: str = typer.Option("fixed", "--forgery", help="Threat model: fixed, stealthy or pilot."),
    ttis: int = typer.Option(800, "--ttis", help="TTIs per seed and condition."),
    seeds: int = typer.Option(2, "--seeds", help="Number of channel seeds (unseen in training and crafting)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
    knapsack: bool = typer.Option(True, "--knapsack/--no-knapsack",
                                  help="Also run the knapsack part (shipped solver, 2 attacker items; into OUT/knapsack)."),
) -> None:
    """On the shipped scheduler and knapsack solver: craft FGGM and the baselines, evaluate all, print tables, write PNGs."""
    import torch

    from fggm.mimo.attack import ThreatModel, Victim
    from fggm.mimo.attack_eval import attack_table, default_scheduler, run_demo

    torch.set_num_threads(max(1, threads))
    try:
        if ttis < 1 or seeds < 1:
            raise ConfigError("--ttis and --seeds must be >= 1")
        tm = ThreatModel(attackers=_users(attackers, "--attackers"), victims=_users(victims, "--victims"), k=k,
                         forgery=forgery)
        check_out(out)
        victim = Victim.load(scheduler or default_scheduler())
        result = run_demo(victim, tm, ttis=ttis, seeds=tuple(range(101, 101 + seeds)), out_dir=out, progress=True)
    except USER_ERRORS as exc:
        fail(_error_text(exc))
        return
    print_table(attack_table(result["rows"], title=f"FGGM demo ({forgery}): attackers {list(tm.attackers)}, victims "
                                                   f"{list(tm.victims)}, k={k:g} ({ttis} TTIs x {seeds} seeds)"), console)
    console.print(f"wrote {Path(out) / 'results.json'} and {', '.join(result.get('pngs', []))} "
                  f"in {result['wall_s']} s (one victim; `fggm sweep --victims all` gives the mean over all)")
    if knapsack:
        from fggm.knapsack.cli import demo_part

        try:
            demo_part(Path(out) / "knapsack")
        except USER_ERRORS as exc:
            fail(_error_text(exc))

from fggm.knapsack.cli import app as knapsack_app  # noqa: E402  (the knapsack problem's commands)

app.add_typer(knapsack_app, name="knapsack")


def main(args: Optional[list[str]] = None) -> None:
    """Console-script entry point (``fggm``): usage errors (an unknown option, ``--ttis abc``) are one
    ``error: ...`` line and exit code 2, as every other bad input; a bare ``fggm`` prints the help.

    Example:
        >>> main(["evaluate", "--help"])  # doctest: +SKIP
    """
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = typer.main.get_command(app).main(args=args, standalone_mode=False)
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            app(args)
            return
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except (KeyboardInterrupt, EOFError):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
