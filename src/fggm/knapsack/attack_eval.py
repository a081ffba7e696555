"""Evaluate crafted knapsack forgeries: the victim solver on many unseen instances, forgery fixed.

Every condition runs the victim's SB3 policy (:class:`~fggm.knapsack.solvers.PolicySolver`) on
the same true instances; the forged items report their forgery, the outcome uses the true
weights and values.  Paired bootstrap CIs resample instances.

* ``victim_cut_pct`` -- ``100 (1 - victims' selection rate under attack / without)``;
* ``value_cut_pct`` -- the same for the solver's realised (true) value;
* ``coverage`` -- share of evaluation instances whose uncontrolled entries all lie in the box at
  ``k``; ``certified_coverage`` the same at the certified ``k``.

Example:
    >>> victim = KnapsackVictim.load("data/knapsack/solver10")                    # doctest: +SKIP
    >>> out = run_demo(victim, KnapsackThreat(victims=(2,)), out_dir="runs/kd")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fggm.core.stats import bootstrap_drop, bootstrap_mean_drop
from fggm.knapsack.attack import METHODS, KnapsackAttack, KnapsackSetup, KnapsackThreat, KnapsackVictim, coverages, craft
from fggm.knapsack.env import sample_instances
from fggm.knapsack.evaluate import run_solver
from fggm.plots import plt, save_figure

__all__ = ["ATTACKS", "evaluate_attacks", "craft_all", "victim_sweep", "run_demo", "evaluate_attack_file",
           "plot_knapsack_attacks", "default_solver", "attack_table"]

ATTACKS = ("none",) + METHODS[::-1]  # none, random, eot-pgd, mean-pgd, fggm-ibp, fggm


def default_solver() -> Path:
    """The shipped solver: ``data/knapsack/solver10`` (current directory first, then the repository).

    Example:
        >>> default_solver().name
        'solver10'
    """
    here = Path("data/knapsack/solver10")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "data" / "knapsack" / "solver10"


def _instances(n_items: int, instances: int, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    parts = [sample_instances(instances, n_items, s) for s in seeds]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _certified(res: KnapsackAttack | None) -> bool | float:
    if res is None:
        return False
    c = res.certificate
    if c.get("proved"):
        return True
    return float(c.get("candidate_goal_share", c.get("rows_proved_share", 0.0)))


def evaluate_attacks(victim: KnapsackVictim, threat: KnapsackThreat, attacks: Mapping[str, KnapsackAttack | None], *,
                     instances: int = 2000, seeds: Sequence[int] = (101,)) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Run the victim solver under every forgery (``None`` = no forgery) on the same instances.

    Returns one row per attack (``none`` first; the keys of ``results.json``) and each
    condition's selection masks ``[B, n]``.

    Example:
        >>> # rows, masks = evaluate_attacks(victim, threat, {"none": None, "fggm": res}, instances=1000)
    """
    cfg = victim.config.env
    w, v = _instances(cfg.n_items, instances, seeds)
    solver = victim.solver()
    setup = KnapsackSetup.build(victim, threat)
    obs = np.concatenate([w, v], 1)
    names = ["none"] + [n for n in attacks if n != "none"]
    out = {n: run_solver(cfg, solver, w, v, attacks[n].forged if attacks.get(n) is not None else None) for n in names}
    base = out["none"]
    vic, att = list(threat.victims), list(threat.attackers)
    honest = [i for i in range(cfg.n_items) if i not in att]
    rows = []
    for name in names:
        r, res = out[name], attacks.get(name)
        sel = r["selected"].astype(float)
        if vic:
            vcut = (0.0, 0.0, 0.0) if name == "none" else bootstrap_drop(base["selected"][:, vic].mean(1), sel[:, vic].mean(1))
        vcut_row = {"victim_selection_rate": float(sel[:, vic].mean()) if vic else None,
                    "victim_cut_pct": vcut[0] if vic else None, "victim_cut_ci95": [vcut[1], vcut[2]] if vic else None}
        val = (0.0, 0.0, 0.0) if name == "none" else bootstrap_drop(base["value"], r["value"])
        ck = float(res.certificate.get("certified_k", 0.0)) if res is not None else None
        cov, ccov = coverages(setup, obs, ck or 0.0) if res is not None else (None, None)
        rows.append({
            "attack": name, "goal": threat.goal, "attackers": att, "victims": vic, **vcut_row,
            "honest_selection_rate": float(sel[:, honest].mean()),
            "attacker_selection_rate": float(sel[:, att].all(1).mean()),
            "value": float(r["value"].mean()), "value_cut_pct": val[0], "value_cut_ci95": [val[1], val[2]],
            "feasible_rate": float(r["feasible"].mean()),
            "certified": _certified(res) if res is not None else False, "certified_k": ck, "k": threat.k,
            "coverage": cov, "certified_coverage": ccov,
            "instances": int(len(w)), "seeds": list(seeds),
            "forged": {str(i): list(f) for i, f in res.forged.items()} if res is not None else {},
            "craft_wall_s": round(res.wall_s, 2) if res is not None else None,
        })
    return rows, {n: out[n]["selected"] for n in names}


def craft_all(victim: KnapsackVictim, threat: KnapsackThreat, which: Sequence[str] = METHODS,
              on_stage: Callable[[str], None] | None = None) -> dict[str, KnapsackAttack]:
    """Craft the fixed forgeries of the comparison (``which`` of :data:`fggm.knapsack.attack.METHODS`).

    Example:
        >>> # craft_all(victim, KnapsackThreat(), which=("random", "fggm"))["fggm"].certificate
    """
    out = {}
    for name in which:
        if on_stage is not None:
            on_stage(name)
        out[name] = craft(victim, threat, name)
    return out


def victim_sweep(victim: KnapsackVictim, base: KnapsackThreat, *, victims: Sequence[int] | None = None,
                 methods: Sequence[str] = METHODS, instances: int = 2000, seeds: Sequence[int] = (101,),
                 progress: bool = False) -> dict[str, Any]:
    """``exclude`` with each honest item as the victim in turn: per-victim rows, and per method the
    selection-rate cut averaged over EVERY victim with a joint paired-bootstrap CI.

    Example:
        >>> # victim_sweep(victim, KnapsackThreat(attackers=(0, 1)), methods=("random", "fggm"))["summary"]
    """
    n = victim.config.env.n_items
    pool = list(victims) if victims is not None else [i for i in range(n) if i not in base.attackers]
    rows: list[dict[str, Any]] = []
    sel: dict[str, list[np.ndarray]] = {m: [] for m in ("none", *methods)}
    it: Any = pool
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(pool, desc="victim sweep", unit="victim")
    for j in it:
        tm = replace(base, goal="exclude", victims=(j,))
        res, masks = evaluate_attacks(victim, tm, {"none": None, **craft_all(victim, tm, methods)},
                                      instances=instances, seeds=seeds)
        rows.extend(dict(r, axis="victim") for r in res)
        for m in sel:
            sel[m].append(masks[m][:, j].astype(float))
    summary = {}
    for m in methods:
        point, lo, hi = bootstrap_mean_drop(np.stack(sel["none"]), np.stack(sel[m]))
        summary[m] = {"mean_victim_cut_pct": point, "ci95": [lo, hi], "victims": pool}
    return {"rows": rows, "summary": summary}


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {n: i for i, n in enumerate(ATTACKS)}
    return sorted(rows, key=lambda r: rank.get(r["attack"], 99))


def run_demo(victim: KnapsackVictim, threat: KnapsackThreat, *, goals: Sequence[str] = ("exclude", "infeasible"),
             methods: Sequence[str] = METHODS, instances: int = 2000, seeds: Sequence[int] = (101,),
             out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Craft every method for each goal, evaluate all against no forgery; write results/JSON/PNG.

    Returns ``{"rows": [...], "attacks": {goal/method: attack JSON}, "wall_s": ...}``.

    Example:
        >>> # run_demo(victim, KnapsackThreat(victims=(2,)), out_dir="runs/fggm-demo/knapsack")
    """
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    crafted: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(goals) * len(methods), desc="knapsack attacks", unit="attack")
    for goal in goals:
        tm = replace(threat, goal=goal)
        atts = craft_all(victim, tm, methods, on_stage=(lambda n: (bar.set_postfix_str(f"{goal}: {n}"), bar.update()))
                         if bar is not None else None)
        res, _ = evaluate_attacks(victim, tm, {"none": None, **atts}, instances=instances, seeds=seeds)
        rows.extend(_order(res))
        crafted.update({f"{goal}-{n}": a.to_dict() for n, a in atts.items()})
    if bar is not None:
        bar.close()
    result = {"rows": rows, "attacks": crafted, "solver": victim.source, "threat_model": threat.to_dict(),
              "wall_s": round(time.perf_counter() - t0, 1)}
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def evaluate_attack_file(path: str | Path, solver: str | Path | None = None, *, instances: int = 2000,
                         seeds: Sequence[int] = (101,), out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a saved knapsack attack JSON against no forgery and a random forgery.

    Example:
        >>> # evaluate_attack_file("runs/knapsack-attack.json", out_dir="runs/knapsack-attack-eval")
    """
    res = KnapsackAttack.load(path)
    src = solver or res.solver
    if not src:
        raise FileNotFoundError(f"{path} names no solver; pass --solver")
    victim = KnapsackVictim.load(src)
    if victim.config.env.n_items != res.n_items:
        raise ValueError(f"attack was crafted for {res.n_items} items but solver {src} has {victim.config.env.n_items}")
    rnd = craft(victim, res.threat, "random")
    rows, _ = evaluate_attacks(victim, res.threat, {"none": None, "random": rnd, res.attack: res},
                               instances=instances, seeds=seeds)
    result = {"rows": rows, "attack_file": str(path), "solver": str(src), "threat_model": res.threat.to_dict()}
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def _write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, d in result.get("attacks", {}).items():
        (out / f"attack-{name}.json").write_text(json.dumps(d, indent=2))
    result["pngs"] = [str(plot_knapsack_attacks(result["rows"], out / "knapsack_attacks.png"))]
    (out / "results.json").write_text(json.dumps(result, indent=2))


def plot_knapsack_attacks(rows: Sequence[dict[str, Any]], png: str | Path) -> Path:
    """Per goal and attack: the victims' selection-rate cut and the realised-value cut (95% CIs).

    Example:
        >>> plot_knapsack_attacks([{"attack": "fggm", "goal": "exclude", "victim_cut_pct": 40.0,
        ...                         "victim_cut_ci95": [30, 50], "value_cut_pct": 5.0, "value_cut_ci95": [3, 7]}],
        ...                       "/tmp/ka.png").name
        'ka.png'
    """
    rows = [r for r in rows if r["attack"] != "none"]
    labels = [f"{r['goal']}: {r['attack']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 0.75 * len(rows) + 3), 4.4), squeeze=False)
    for ax, key, title, target in ((axes[0][0], "victim_cut", "victims' selection-rate cut [%]", 70.0),
                                   (axes[0][1], "value_cut", "realised value cut [%]", 30.0)):
        vals = np.array([r[f"{key}_pct"] if r.get(f"{key}_pct") is not None else np.nan for r in rows])
        ci = [r.get(f"{key}_ci95") or [np.nan, np.nan] for r in rows]
        err = np.array([[v - c[0], c[1] - v] for v, c in zip(vals, ci)]).T.reshape(2, -1)
        colors = ["#c0392b" if r["attack"] == "fggm" else "#7f8c8d" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x, np.nan_to_num(vals), yerr=np.nan_to_num(err), color=colors, capsize=3)
        ax.axhline(target, ls="--", lw=1, color="k")
        ax.set_xticks(x, labels, fontsize=7, rotation=35, ha="right")
        ax.set_ylabel(title)
    fig.suptitle("knapsack: FGGM vs baselines (95% paired bootstrap CI)", fontsize=10)
    return save_figure(fig, png)


def attack_table(rows: Sequence[dict[str, Any]], title: str = "knapsack attacks") -> Any:
    """Rich table of knapsack attack rows.

    Example:
        >>> attack_table([{"attack": "none", "goal": "exclude", "victim_selection_rate": 0.6, "victim_cut_pct": 0.0,
        ...                "victim_cut_ci95": [0, 0], "value": 3.7, "value_cut_pct": 0.0, "value_cut_ci95": [0, 0],
        ...                "feasible_rate": 1.0, "attacker_selection_rate": 0.5, "certified": False,
        ...                "certified_k": None, "coverage": None, "certified_coverage": None}]).row_count
        1
    """
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("goal", "attack", "victim\nsel", "victim cut %\n[95% CI]", "value", "value cut %\n[95% CI]", "feas.",
                "att.\nin", "cert", "k\ncert", "cov", "cert\ncov"):
        table.add_column(col, justify="left" if col in ("goal", "attack") else "right", no_wrap=True)

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    def cut(x: Any, ci: Any) -> str:
        return "-" if x is None else f"{x:.1f} [{ci[0]:.0f}, {ci[1]:.0f}]"

    for r in rows:
        cert = r.get("certified")
        cert_s = "proved" if cert is True else ("-" if cert is False else f"{cert:.2f}")
        table.add_row(r["goal"], r["attack"], f(r.get("victim_selection_rate"), ".3f"),
                      cut(r.get("victim_cut_pct"), r.get("victim_cut_ci95")), f"{r['value']:.3f}",
                      cut(r["value_cut_pct"], r["value_cut_ci95"]), f"{100 * r['feasible_rate']:.1f}%",
                      f"{100 * r['attacker_selection_rate']:.1f}%", cert_s, f(r.get("certified_k"), ".3g"),
                      f(r.get("coverage"), ".2f"), f(r.get("certified_coverage"), ".2f"))
    return table
