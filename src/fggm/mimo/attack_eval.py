"""Evaluate crafted attacks on the victim: many TTIs and seeds with the forgery fixed.

Every condition runs the victim's SB3 policy on the same channel seeds (:mod:`fggm.mimo.runner`),
so conditions are paired TTI by TTI.  Per attack the rows report the victims' and the attackers'
throughput against no attack (paired bootstrap CIs over 50-TTI blocks of every seed), and how
well the box the attack assumed describes the real observations the policy saw under it:
``coverage`` (share of those TTIs whose unknown entries all lie in the box at ``k``, after the
normaliser's clip) and ``certified_coverage`` (the same for the box on which the certificate is
proved, at ``certified_k``; 0 when nothing is proved).

Example:
    >>> victim = Victim.load("data/schedulers/smart16")                      # doctest: +SKIP
    >>> out = run_demo(victim, ThreatModel(attackers=(0, 1), victims=(2,)))    # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fggm.core.files import write_json
from fggm.core.stats import block_means, bootstrap_drop
from fggm.mimo.attack import METHODS, AttackResult, AttackSetup, ThreatModel, Victim, craft
from fggm.mimo.config import EnvConfig
from fggm.mimo.physics import jain
from fggm.mimo.runner import Condition, OracleAttacker, Trace, run_conditions
from fggm.plots import plot_drop_bars, plt, save_figure

__all__ = ["ATTACKS", "BLOCK", "evaluate_attacks", "evaluate_result", "craft_all", "run_demo", "run_sweep", "bootstrap_drop",
           "plot_attack_drop", "plot_attack_cdf", "attack_table", "default_scheduler", "evaluate_attack_file",
           "coverages"]

ATTACKS = ("none", "random", "silent", "mean-pgd", "eot-pgd", "oracle-pgd", "fggm-ibp", "fggm")
BLOCK = 50  # TTIs per bootstrap block (paired across conditions)


def coverages(victim: Victim, res: AttackResult, obs: np.ndarray) -> tuple[float, float]:
    """``(coverage, certified_coverage)`` of real observations ``obs [B, obs]`` by the box the
    attack assumed (its threat model's ``k``) and by the box it is proved on (``certified_k``).

    Example:
        >>> coverages(victim, result, obs)   # doctest: +SKIP
        (0.0, 0.0)
    """
    setup = AttackSetup.build(victim, res.threat)
    x = res.x()[0]
    ck = float(res.certificate.get("certified_k") or 0.0)
    return setup.coverage(obs, x), (setup.coverage(obs, x, k=ck) if ck > 0 else 0.0)


def _drop(base: np.ndarray, att: np.ndarray) -> float:
    b = float(np.mean(base))
    return 100.0 * (1.0 - float(np.mean(att)) / b) if b > 0 else 0.0


def _rows(victim: Victim, threat: ThreatModel, attacks: Mapping[str, AttackResult | None],
          traces: Sequence[dict[str, Trace]], ttis: int, seeds: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    names = list(traces[0])
    vic, att = list(threat.victims), list(threat.attackers)
    per_tti = {n: np.concatenate([tr[n].per_tti(vic) for tr in traces]).tolist() for n in names}
    base_v = block_means(per_tti["none"], ttis, len(seeds), BLOCK)
    base_a = np.concatenate([tr["none"].per_tti(att) for tr in traces])
    rows = []
    for name in names:
        se = np.concatenate([tr[name].se for tr in traces])
        sched = np.concatenate([tr[name].scheduled for tr in traces])
        vic_t = np.asarray(per_tti[name])
        att_t = se[:, att].mean(1)
        drop, lo, hi = (0.0, 0.0, 0.0) if name == "none" else bootstrap_drop(base_v, block_means(vic_t, ttis, len(seeds), BLOCK))
        res = attacks.get(name)
        cov = ccov = None
        if res is not None and traces[0][name].obs is not None:
            cov, ccov = coverages(victim, res, np.concatenate([tr[name].obs for tr in traces]))
        cert = res.certificate if res is not None else {}
        rows.append({
            "attack": name,
            "method": name,
            "forgery": res.forgery if res is not None else (threat.forgery if name == "oracle-pgd" else "none"),
            "attackers": att,
            "victims": vic,
            "victim_throughput": float(vic_t.mean()),
            "victim_drop_pct": drop,
            "victim_drop": drop,
            "ci95": [lo, hi],
            "attacker_throughput": float(att_t.mean()),
            "attacker_throughput_no_attack": float(base_a.mean()),
            "attacker_drop": 0.0 if name == "none" else _drop(base_a, att_t),
            "sum_se": float(se.sum(1).mean()),
            "jain": float(jain(se.mean(0))),
            "victim_scheduled_rate": float(sched[:, vic].mean()),
            "certified": (True if cert.get("proved") else float(cert.get("certified_share", 0.0))) if res else False,
            "certified_k": float(cert.get("certified_k", 0.0)) if res is not None else None,
            "coverage": cov,
            "certified_coverage": ccov,
            "k": threat.k,
            "ttis": ttis * len(seeds),
            "seeds": list(seeds),
            "forged_power": {str(u): float(np.sum(np.abs(h) ** 2)) for u, h in (res.forged.items() if res else [])},
            "craft_wall_s": round(res.wall_s, 2) if res is not None else None,
        })
    return rows, per_tti


def evaluate_attacks(victim: Victim, threat: ThreatModel, attacks: Mapping[str, AttackResult | None], *,
                     ttis: int = 800, seeds: Sequence[int] = (101, 102), env: EnvConfig | None = None,
                     oracle: bool = False, oracle_inits: Sequence[AttackResult] = (),
                     on_step: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Run the victim policy under every attack (``None`` = no attack) on the same channels.

    Returns summary rows (``none`` first; the keys of ``results.json``) and each condition's
    per-TTI victim SE (for CDFs).  ``oracle=True`` adds ``oracle-pgd`` (started from the
    parameters of ``oracle_inits``).  ``victim_drop_pct`` (also ``victim_drop``) is
    ``100 (1 - attacked / none)`` of the victims' mean SE per TTI with a paired block-bootstrap
    ``ci95``; ``attacker_drop`` the same for the attackers' own throughput.

    Example:
        >>> rows, _ = evaluate_attacks(victim, threat, {"none": None, "fggm": res}, ttis=400)  # doctest: +SKIP
    """
    setup = AttackSetup.build(victim, threat)
    conds = [Condition("none")] + [Condition(n, r.reports) for n, r in attacks.items() if n != "none" and r is not None]
    if oracle and threat.forgery != "silent":
        inits = [r.x()[0] for r in oracle_inits if r.forgery == threat.forgery]
        conds.append(Condition("oracle-pgd", oracle=OracleAttacker(setup, inits)))
    traces = [run_conditions(victim, conds, ttis, seed, env=env, record_obs=True, on_step=on_step) for seed in seeds]
    return _rows(victim, threat, attacks, traces, ttis, seeds)


def evaluate_result(victim: Victim, res: AttackResult, *, ttis: int = 400, seeds: Sequence[int] = (201,),
                    on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Evaluate one crafted attack against no attack and store the summary in ``res.evaluation``
    (``coverage``, ``certified_coverage``, victims' and attackers' throughput with and without it).

    Example:
        >>> evaluate_result(victim, res, ttis=400)["coverage"]   # doctest: +SKIP
        0.0
    """
    rows, _ = evaluate_attacks(victim, res.threat, {"none": None, res.attack: res}, ttis=ttis, seeds=seeds,
                               on_step=on_step)
    r = rows[-1]
    res.evaluation = {"ttis": r["ttis"], "seeds": list(seeds), "coverage": r["coverage"],
                      "certified_coverage": r["certified_coverage"], "victim_throughput": r["victim_throughput"],
                      "victim_throughput_no_attack": rows[0]["victim_throughput"], "victim_drop": r["victim_drop"],
                      "ci95": r["ci95"], "attacker_throughput": r["attacker_throughput"],
                      "attacker_throughput_no_attack": r["attacker_throughput_no_attack"],
                      "attacker_drop": r["attacker_drop"]}
    return res.evaluation


def craft_all(victim: Victim, threat: ThreatModel, which: Sequence[str] = METHODS,
              on_stage: Callable[[str], None] | None = None) -> dict[str, AttackResult]:
    """Craft every method of the comparison (random at FGGM's power when FGGM is crafted first).

    Example:
        >>> craft_all(victim, ThreatModel())["fggm"].certificate   # doctest: +SKIP
    """
    out: dict[str, AttackResult] = {}
    for name in ("fggm", "fggm-ibp", "mean-pgd", "eot-pgd", "random", "silent"):
        if name not in which:
            continue
        if on_stage is not None:
            on_stage(name)
        power = None
        if name == "random" and "fggm" in out and threat.forgery == "fixed":
            power = {u: float(np.sum(np.abs(h) ** 2)) for u, h in out["fggm"].forged.items()}
        out[name] = craft(victim, threat, name, power=power)
    return {n: out[n] for n in which if n in out}


def run_demo(victim: Victim, threat: ThreatModel, *, ttis: int = 800, seeds: Sequence[int] = (101, 102),
             out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Craft every method, evaluate all against no attack and the oracle; write results/PNGs.

    Returns ``{"rows": [...], "attacks": {name: attack.json dict}, "wall_s": ...}``.

    Example:
        >>> out = run_demo(victim, ThreatModel(), out_dir="runs/fggm-demo")   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    n_cond = len(ATTACKS) - (1 if threat.forgery == "silent" else 0)
    bar = _progress(progress, total=len(seeds) * ttis * n_cond, desc="fggm demo")
    crafted = craft_all(victim, threat, on_stage=(lambda n: bar.set_postfix_str(f"crafting {n}")) if bar else None)
    if bar is not None:
        bar.set_postfix_str("evaluating")
    inits = [crafted[n] for n in ("fggm", "mean-pgd", "eot-pgd") if n in crafted]
    rows, per_tti = evaluate_attacks(victim, threat, {"none": None, **crafted}, ttis=ttis, seeds=seeds, oracle=True,
                                     oracle_inits=inits, on_step=bar.update if bar else None)
    if bar is not None:
        bar.close()
    order = {n: i for i, n in enumerate(ATTACKS)}
    rows.sort(key=lambda r: order.get(r["attack"], 99))
    result = {"rows": rows, "attacks": {n: r.to_dict() for n, r in crafted.items()},
              "wall_s": round(time.perf_counter() - t0, 1), "scheduler": victim.source,
              "threat_model": threat.to_dict()}
    if out_dir is not None:
        _write(result, per_tti, Path(out_dir))
    return result


def _write(result: dict[str, Any], per_tti: dict[str, list[float]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, d in result.get("attacks", {}).items():
        write_json(out / f"attack-{name}.json", d)
    result["pngs"] = [str(plot_attack_drop(result["rows"], out / "attack_drop.png")),
                      str(plot_attack_cdf(per_tti, out / "victim_se_cdf.png"))]
    write_json(out / "results.json", result)


def _progress(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="TTI")


# ------------------------------------------------------------------------------ plots


def plot_attack_drop(rows: Sequence[dict[str, Any]], png: str | Path) -> Path:
    """Bar chart: victims' throughput drop (%) per attack with 95% bootstrap CIs
    (:func:`fggm.plots.plot_drop_bars` with the MU-MIMO labels).

    Example:
        >>> plot_attack_drop([{"attack": "fggm", "victim_drop_pct": 70.0, "ci95": [65, 75]}], "/tmp/d.png").name
        'd.png'
    """
    return plot_drop_bars(rows, png, key="victim_drop_pct", ci_key="ci95", ylabel="victims' throughput drop [%]",
                          title="FGGM vs baselines (95% bootstrap CI)", target=70.0, target_label="paper: 70%")


def plot_attack_cdf(per_tti: Mapping[str, Sequence[float]], png: str | Path) -> Path:
    """Empirical CDF of the victims' per-TTI SE under each condition.

    Example:
        >>> plot_attack_cdf({"none": [0.0, 1.0, 2.0]}, "/tmp/c.png").name
        'c.png'
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, v in per_tti.items():
        xs = np.sort(np.asarray(v, float))
        if len(xs):
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=name)
    ax.set_xlabel("victims' SE per TTI [bit/s/Hz]")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=8)
    return save_figure(fig, png)


# ------------------------------------------------------------------------------ CLI helpers


def default_scheduler() -> Path:
    """The shipped scheduler: ``data/schedulers/smart16`` (current directory first, then the repository).

    Example:
        >>> default_scheduler().name
        'smart16'
    """
    here = Path("data/schedulers/smart16")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "data" / "schedulers" / "smart16"


def attack_table(rows: Sequence[dict[str, Any]], title: str = "attacks") -> Any:
    """Rich table of attack rows: victims' mean SE per TTI, its drop in % with the 95% CI, the
    attackers' own throughput drop, sum SE, how often a victim was scheduled, the certified share
    (or "proved"), the largest k proved, and the coverage of real TTIs by the box and the
    certified box.

    Example:
        >>> attack_table([{"attack": "none", "victim_throughput": 1.0, "victim_drop_pct": 0.0, "ci95": [0, 0],
        ...                "sum_se": 9.0, "victim_scheduled_rate": 0.3, "certified": False}]).row_count
        1
    """
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("attack", "victim SE", "drop %", "CI95", "att. drop %", "sum SE", "sched", "share", "k cert", "cov",
                "cert cov"):
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        cert = r.get("certified")
        cert_s = "proved" if cert is True else ("-" if cert is False or cert is None else f"{cert:.2f}")
        table.add_row(r["attack"], f"{r['victim_throughput']:.3f}", f"{r['victim_drop_pct']:.1f}",
                      f"{r['ci95'][0]:.0f}-{r['ci95'][1]:.0f}", f(r.get("attacker_drop"), ".1f"), f"{r['sum_se']:.2f}",
                      f"{100 * r['victim_scheduled_rate']:.1f}%", cert_s, f(r.get("certified_k"), ".3g"),
                      f(r.get("coverage"), ".2f"), f(r.get("certified_coverage"), ".2f"))
    return table


def evaluate_attack_file(attack_path: str | Path, scheduler: str | Path | None = None, *, ttis: int = 2000,
                         seeds: Sequence[int] = (0, 1, 2), oracle: bool = False, out_dir: str | Path | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved ``attack.json`` against no attack and a random forgery (at the same power
    for a fixed forgery).

    The scheduler is ``scheduler`` or the one recorded in the file; its size must match the file's.

    Example:
        >>> evaluate_attack_file("runs/attack.json", ttis=800, out_dir="runs/attack-eval")   # doctest: +SKIP
    """
    from fggm.mimo.safe_load import resolve_scheduler_ref

    res = AttackResult.load(attack_path)
    if not scheduler and not res.scheduler:
        raise FileNotFoundError(f"{attack_path} names no scheduler; pass --scheduler")
    src = scheduler or resolve_scheduler_ref(res.scheduler, attack_path)
    victim = Victim.load(src)
    for key in ("num_antennas", "num_users", "max_scheduled"):
        if res.env.get(key) != getattr(victim.env, key):
            raise ValueError(f"attack was crafted for {key}={res.env.get(key)} but scheduler {src} has "
                             f"{key}={getattr(victim.env, key)}")
    attacks: dict[str, AttackResult | None] = {"none": None}
    if res.forgery != "silent":
        power = {u: float(np.sum(np.abs(h) ** 2)) for u, h in res.forged.items()} if res.forgery == "fixed" else None
        attacks["random"] = craft(victim, res.threat, "random", power=power)
    attacks[res.attack] = res
    n_cond = len(attacks) + int(oracle and res.forgery != "silent")
    bar = _progress(progress, total=len(seeds) * ttis * n_cond, desc="evaluating attack")
    rows, per_tti = evaluate_attacks(victim, res.threat, attacks, ttis=ttis, seeds=seeds, oracle=oracle,
                                     oracle_inits=[res], on_step=bar.update if bar else None)
    if bar is not None:
        bar.close()
    result = {"rows": rows, "attack_file": str(attack_path), "scheduler": str(src), "threat_model": res.threat.to_dict(),
              "forgery": res.forgery}
    if out_dir is not None:
        _write(result, per_tti, Path(out_dir))
    return result


def run_sweep(victim: Victim, settings: Any = None, *, attacker_counts: Sequence[int] = (1, 2),
              ks: Sequence[float] = (3.0,), channel_models: Sequence[str] = ("rayleigh",),
              victims: str | Sequence[int] = "all", base: ThreatModel | None = None, ttis: int = 200,
              seeds: Sequence[int] = (101, 102), out_dir: str | Path | None = None, progress: bool = False,
              **more: Any) -> dict[str, Any]:
    """Every-victim sweep (:func:`fggm.mimo.sweep.run_sweep`) from a
    :class:`~fggm.mimo.sweep.SweepSettings` or from keywords (``victims`` ``"all"`` or ids,
    ``base`` supplies steps, restarts, box and the forgery; ``more`` any other setting).

    Example:
        >>> run_sweep(victim, victims=(2,), attacker_counts=(2,), ttis=100, out_dir="runs/sweep")   # doctest: +SKIP
    """
    from fggm.mimo.sweep import SweepSettings, run_sweep as _run

    if settings is None:
        vic = victims if isinstance(victims, str) else ",".join(str(int(v)) for v in victims)
        extra = dict(more)
        if base is not None:
            extra.setdefault("steps", base.steps)
            extra.setdefault("restarts", base.restarts)
            extra.setdefault("box", base.box)
            if base.forgery != "silent":
                extra.setdefault("forgeries", (base.forgery,))
        settings = SweepSettings(victims=vic, attacker_counts=tuple(attacker_counts), ks=tuple(ks),
                                 channels=tuple(channel_models), ttis=ttis, eval_seeds=tuple(seeds), **extra)
    return _run(victim, settings, out_dir=out_dir, progress=progress)
