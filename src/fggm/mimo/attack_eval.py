"""Evaluate crafted attacks on the victim: many TTIs and seeds with the forged CSI fixed.

Every condition runs the victim's SB3 policy through :func:`fggm.evaluate.run_scheduler` on
the same channel seeds (channels do not depend on actions), so conditions are paired episode
by episode.  Physical rates use the TRUE channels with a ZF receiver built from the REPORTED
(forged) ones.  The oracle baseline re-optimises the forged channels every TTI knowing the
exact observation (white-box, an upper bound on what a fixed forged CSI can do).

Example:
    >>> victim = Victim.load("data/schedulers/smart16")                      # doctest: +SKIP
    >>> rows = run_demo(victim, ThreatModel(attackers=(0, 1), victims=(2,)))   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fggm.core.stats import block_means, bootstrap_drop
from fggm.mimo.attack import (AttackResult, AttackSetup, ThreatModel, Victim, mean_point_pgd, random_forged,
                         run_fggm)
from fggm.mimo.config import ChannelConfig, EnvConfig
from fggm.mimo.evaluate import run_scheduler
from fggm.mimo.physics import single_user_se
from fggm.plots import plot_drop_bars, plt, save_figure
from fggm.mimo.schedulers import PolicyScheduler, Scheduler

__all__ = ["ATTACKS", "OraclePGDScheduler", "evaluate_attacks", "craft_all", "run_demo", "run_sweep",
           "bootstrap_drop", "plot_attack_drop", "plot_attack_cdf", "plot_sweep"]

ATTACKS = ("none", "random", "mean-pgd", "oracle-pgd", "fggm-ibp", "fggm")
BLOCK = 50  # TTIs per bootstrap block (paired across conditions)


class _Recorder(Scheduler):
    """Wraps a scheduler and records the victims' SE every TTI (from the step's info)."""

    def __init__(self, inner: Scheduler, victims: Sequence[int]) -> None:
        self.inner, self.victims = inner, list(victims)
        self.name = inner.name
        self.victim_se: list[float] = []

    def reset(self, env: Any) -> None:
        self.inner.reset(env)

    def select(self, obs: np.ndarray, env: Any) -> int:
        return self.inner.select(obs, env)

    def observe(self, info: dict[str, Any]) -> None:
        self.inner.observe(info)
        self.victim_se.append(float(np.mean(np.asarray(info["se"])[self.victims])))


class OraclePGDScheduler(Scheduler):
    """White-box oracle: every TTI, sign-PGD on the attackers' forged channels at the EXACT
    current observation, then the victim policy schedules on the forged report.

    It starts from the given forged channels (e.g. FGGM's) and keeps the best point, so at
    every TTI its action is at least as deep inside a victim-free run as theirs.

    Example:
        >>> sched = OraclePGDScheduler(victim, setup, [fggm_x])   # doctest: +SKIP
    """

    name = "oracle-pgd"

    def __init__(self, victim: Victim, setup: AttackSetup, inits: Sequence[torch.Tensor],
                 steps: int = 10, step_size: float = 0.1) -> None:
        self.victim, self.setup = victim, setup
        self.policy = PolicyScheduler(victim.model, victim.vecnormalize, name="oracle-pgd")
        rand = torch.randn(2, *setup.mean_forged.shape, generator=torch.Generator().manual_seed(setup.threat.seed))
        rand = rand / rand.norm(dim=-1, keepdim=True) * math.sqrt(setup.budget)
        self.x0 = torch.cat([torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in inits]), rand]) \
            if inits else rand
        self.steps, self.scale = steps, step_size * math.sqrt(setup.budget / setup.mean_forged.shape[-1])
        self.M = victim.env.num_antennas

    def select(self, obs: np.ndarray, env: Any) -> int:
        s = self.setup
        o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0).expand(self.x0.shape[0], -1)
        x = self.x0.clone().requires_grad_(True)
        best_x, best = self.x0.clone(), torch.full((self.x0.shape[0],), float("inf"))
        for step in range(self.steps + 1):
            loss = s.point_margin(self.victim.view(s.point(x, o)).double())
            with torch.no_grad():
                better = loss < best
                best, best_x[better] = torch.where(better, loss, best), x.detach()[better]
            if step == self.steps:
                break
            g = torch.autograd.grad(loss.sum(), x)[0]
            with torch.no_grad():
                x -= self.scale * g.sign()
                x.copy_(s.project(x))
        xb = best_x[int(torch.argmin(best))].double().numpy()
        obs_mod = np.array(obs, dtype=np.float32, copy=True)
        for a, u in enumerate(s.threat.attackers):
            h = xb[a, : self.M] + 1j * xb[a, self.M :]
            env.report_override(u, h)  # the base station's ZF now uses the forged report
            obs_mod[s.ch_idx[a].numpy()] = np.concatenate([h.real, h.imag]).astype(np.float32)
            obs_mod[int(s.se_idx[a])] = np.float32(single_user_se(h[:, None])[0])
        return self.policy.select(obs_mod, env)


def _certified(res: AttackResult | None) -> bool | float:
    if res is None:
        return False
    return True if res.certificate.get("proved") else float(res.certificate.get("certified_share", 0.0))


def evaluate_attacks(victim: Victim, threat: ThreatModel, attacks: Mapping[str, AttackResult | None], *,
                     ttis: int = 800, seeds: Sequence[int] = (101, 102), env: EnvConfig | None = None,
                     oracle: bool = False, oracle_inits: Sequence[AttackResult] = (),
                     on_step: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Run the victim policy under every attack (``None`` = no forged CSI) on the same channels.

    Returns summary rows (one per attack, ``none`` first, the keys of ``results.json``) and
    each condition's per-TTI victim SE (for CDFs).  ``oracle=True`` adds ``oracle-pgd``.
    ``victim_drop_pct`` is ``100 (1 - attacked / none)`` of the victims' mean SE per TTI; its
    ``ci95`` is a paired bootstrap over blocks of 50 TTIs of every seed.

    Example:
        >>> rows, _ = evaluate_attacks(victim, threat, {"none": None, "fggm": res}, ttis=400)  # doctest: +SKIP
    """
    env_cfg = env or victim.env
    setup = AttackSetup.build(victim, threat)
    names = ["none"] + [n for n in attacks if n != "none"] + (["oracle-pgd"] if oracle else [])
    per_episode: dict[str, list[np.ndarray]] = {n: [] for n in names}
    per_tti: dict[str, list[float]] = {n: [] for n in names}
    raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for name in names:
        res = attacks.get(name)
        for seed in seeds:
            if name == "oracle-pgd":
                inits = [torch.tensor(np.stack([np.concatenate([r.forged[u].real, r.forged[u].imag])
                                                for u in threat.attackers])) for r in oracle_inits]
                inner: Scheduler = OraclePGDScheduler(victim, setup, inits)
                forged: dict[int, np.ndarray] = {}
            else:
                inner = PolicyScheduler(victim.model, victim.vecnormalize, name=name)
                forged = dict(res.forged) if res is not None else {}
            rec = _Recorder(inner, threat.victims)
            row = run_scheduler(env_cfg, rec, ttis, seed, forged=forged, on_step=on_step)
            raw[name].append(row)
            per_tti[name].extend(rec.victim_se)
            per_episode[name].append(np.asarray(row["episode_user_throughput"]))
    base_v = block_means(per_tti["none"], ttis, len(seeds), BLOCK)
    rows = []
    for name in names:
        eps = np.concatenate(per_episode[name])
        vic = np.asarray(per_tti[name])
        att = eps[:, list(threat.attackers)].mean(1)
        drop, lo, hi = (0.0, 0.0, 0.0) if name == "none" else bootstrap_drop(base_v, block_means(vic, ttis, len(seeds), BLOCK))
        r = raw[name]
        res = attacks.get(name)
        rows.append({
            "attack": name,
            "attackers": list(threat.attackers),
            "victims": list(threat.victims),
            "victim_throughput": float(vic.mean()),
            "victim_drop_pct": drop,
            "ci95": [lo, hi],
            "sum_se": float(np.mean([x["sum_se"] for x in r])),
            "jain": float(np.mean([x["jain"] for x in r])),
            "attacker_throughput": float(att.mean()),
            "victim_scheduled_rate": float(np.mean([np.mean(np.asarray(x["scheduled_rate"])[list(threat.victims)])
                                                    for x in r])),
            "certified": _certified(res) if name not in ("none", "oracle-pgd") else False,
            "certified_k": float(res.certificate.get("certified_k", 0.0)) if res is not None else None,
            "k": threat.k,
            "ttis": ttis * len(seeds),
            "seeds": list(seeds),
            "forged_power": {str(u): float(np.sum(np.abs(h) ** 2)) for u, h in (res.forged.items() if res else [])},
            "craft_wall_s": round(res.wall_s, 2) if res is not None else None,
        })
    return rows, per_tti


def craft_all(victim: Victim, threat: ThreatModel, which: Sequence[str] = ("random", "mean-pgd", "fggm-ibp", "fggm"),
              on_stage: Callable[[str], None] | None = None) -> dict[str, AttackResult]:
    """Craft the fixed-CSI attacks of the comparison (random at FGGM's power).

    Example:
        >>> craft_all(victim, ThreatModel())["fggm"].certificate   # doctest: +SKIP
    """
    out: dict[str, AttackResult] = {}
    from dataclasses import replace

    for name in ("fggm", "fggm-ibp", "mean-pgd", "random"):
        if name not in which:
            continue
        if on_stage is not None:
            on_stage(name)
        if name == "fggm":
            out[name] = run_fggm(victim, replace(threat, domain="crown"))
        elif name == "fggm-ibp":
            out[name] = run_fggm(victim, replace(threat, domain="ibp"))
        elif name == "mean-pgd":
            out[name] = mean_point_pgd(victim, threat)
        else:
            ref = out.get("fggm")
            power = {u: float(np.sum(np.abs(h) ** 2)) for u, h in ref.forged.items()} if ref else None
            out[name] = random_forged(victim, threat, power)
    return {n: out[n] for n in which if n in out}


def run_demo(victim: Victim, threat: ThreatModel, *, ttis: int = 800, seeds: Sequence[int] = (101, 102),
             out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Craft every attack, evaluate all against no attack and the oracle; write results/PNGs.

    Returns ``{"rows": [...], "attacks": {name: attack.json dict}, "wall_s": ...}``.

    Example:
        >>> out = run_demo(victim, ThreatModel(), out_dir="runs/fggm-demo")   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    bar = _progress(progress, total=len(seeds) * ttis * 6, desc="fggm demo")
    crafted = craft_all(victim, threat, on_stage=(lambda n: bar.set_postfix_str(f"crafting {n}")) if bar else None)
    if bar is not None:
        bar.set_postfix_str("evaluating")
    rows, per_tti = evaluate_attacks(victim, threat, {"none": None, **crafted}, ttis=ttis, seeds=seeds, oracle=True,
                                     oracle_inits=[crafted["fggm"], crafted["mean-pgd"]],
                                     on_step=bar.update if bar else None)
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


def run_sweep(victim: Victim, *, attacker_counts: Sequence[int] = (1, 2, 3, 4), ks: Sequence[float] = (1.0, 2.0, 3.0),
              channel_models: Sequence[str] = ("rayleigh", "correlated"), victims: Sequence[int] = (2,),
              base: ThreatModel | None = None, ttis: int = 400, seeds: Sequence[int] = (101,),
              out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """FGGM vs random forged CSI over the number of attackers (at ``base.k``), over k (at two
    attackers) and over channel models (the forged CSI crafted once, evaluated on each).

    Example:
        >>> run_sweep(victim, attacker_counts=(1, 2), ks=(3.0,), out_dir="runs/sweep")   # doctest: +SKIP
    """
    from dataclasses import replace

    base = base or ThreatModel(victims=tuple(victims))
    K = victim.env.num_users
    pool = [u for u in range(K) if u not in set(victims)]
    conds: list[tuple[str, ThreatModel, EnvConfig]] = []
    for n in attacker_counts:
        conds.append(("attackers", replace(base, attackers=tuple(pool[:n]), victims=tuple(victims)), victim.env))
    for k in ks:
        conds.append(("k", replace(base, attackers=tuple(pool[:2]), victims=tuple(victims), k=float(k)), victim.env))
    for cm in channel_models:
        ch = ChannelConfig(**{**victim.env.channel.__dict__, "model": cm})
        conds.append(("channel", replace(base, attackers=tuple(pool[:2]), victims=tuple(victims)),
                      replace(victim.env, channel=ch)))
    bar = _progress(progress, total=len(conds) * len(seeds) * ttis * 3, desc="fggm sweep")
    cache: dict[ThreatModel, dict[str, AttackResult]] = {}
    rows: list[dict[str, Any]] = []
    cdfs: dict[str, list[float]] = {}
    for axis, tm, env in conds:
        if tm not in cache:
            if bar is not None:
                bar.set_postfix_str(f"crafting {len(tm.attackers)} attackers, k={tm.k}")
            cache[tm] = craft_all(victim, tm, which=("random", "fggm"))
        res, per_tti = evaluate_attacks(victim, tm, {"none": None, **cache[tm]}, ttis=ttis, seeds=seeds, env=env,
                                        on_step=bar.update if bar else None)
        for r in res:
            r.update({"axis": axis, "channel_model": env.channel.model, "num_attackers": len(tm.attackers)})
            rows.append(r)
        if axis == "channel":
            for name, v in per_tti.items():
                cdfs[f"{env.channel.model}/{name}"] = v
    if bar is not None:
        bar.close()
    result = {"rows": rows, "scheduler": victim.source}
    if out_dir is not None:
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        result["pngs"] = [str(p) for p in plot_sweep(rows, cdfs, out)]
    return result


def _write(result: dict[str, Any], per_tti: dict[str, list[float]], out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    for name, d in result.get("attacks", {}).items():
        (out / f"attack-{name}.json").write_text(json.dumps(d, indent=2))
    result["pngs"] = [str(plot_attack_drop(result["rows"], out / "attack_drop.png")),
                      str(plot_attack_cdf(per_tti, out / "victim_se_cdf.png"))]
    (out / "results.json").write_text(json.dumps(result, indent=2))


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


def plot_sweep(rows: Sequence[dict[str, Any]], cdfs: Mapping[str, Sequence[float]], out: Path) -> list[Path]:
    """Sweep PNGs: drop vs number of attackers, drop vs k, and a CDF per channel model.

    Example:
        >>> # plot_sweep(result["rows"], cdfs, Path("runs/sweep"))
    """
    pngs: list[Path] = []
    for axis, key, label, fname in (("attackers", "num_attackers", "number of attackers", "drop_vs_attackers.png"),
                                    ("k", "k", "k (box half-width in sigmas)", "drop_vs_k.png")):
        sel = [r for r in rows if r.get("axis") == axis and r["attack"] != "none"]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for attack in sorted({r["attack"] for r in sel}):
            pts = sorted((r[key], r["victim_drop_pct"], r["ci95"]) for r in sel if r["attack"] == attack)
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            ax.errorbar(xs, ys, yerr=[[y - p[2][0] for y, p in zip(ys, pts)], [p[2][1] - y for y, p in zip(ys, pts)]],
                        marker="o", capsize=3, label=attack)
        ax.axhline(70, ls="--", lw=1, color="k")
        ax.set_xticks(sorted({r[key] for r in sel}))
        ax.set_xlabel(label)
        ax.set_ylabel("victims' throughput drop [%]")
        ax.legend(fontsize=8)
        pngs.append(save_figure(fig, out / fname))
    models = sorted({k.split("/")[0] for k in cdfs})
    if models:
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
        for ax, m in zip(axes[0], models):
            for key, v in cdfs.items():
                if key.startswith(m + "/"):
                    xs = np.sort(np.asarray(v, float))
                    ax.step(xs, np.arange(1, len(xs) + 1) / max(len(xs), 1), where="post", label=key.split("/")[1])
            ax.set_title(f"channel: {m}")
            ax.set_xlabel("victims' SE per TTI [bit/s/Hz]")
            ax.set_ylabel("CDF")
            ax.legend(fontsize=8)
        pngs.append(save_figure(fig, out / "cdf_per_channel.png"))
    return pngs


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
    """Rich table of attack rows: victims' mean SE per TTI, its drop in % with the 95% CI, sum SE,
    how often a victim was scheduled, the certified share (or "proved") and the largest k proved.

    Example:
        >>> attack_table([{"attack": "none", "victim_throughput": 1.0, "victim_drop_pct": 0.0, "ci95": [0, 0],
        ...                "sum_se": 9.0, "victim_scheduled_rate": 0.3, "certified": False}]).row_count
        1
    """
    from rich.table import Table

    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("attack", "victim SE", "drop %", "CI95", "sum SE", "sched", "share", "k cert"):
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)
    for r in rows:
        cert = r.get("certified")
        cert_s = "proved" if cert is True else ("-" if cert is False else f"{cert:.2f}")
        table.add_row(r["attack"], f"{r['victim_throughput']:.3f}", f"{r['victim_drop_pct']:.1f}",
                      f"{r['ci95'][0]:.0f}-{r['ci95'][1]:.0f}", f"{r['sum_se']:.2f}",
                      f"{100 * r['victim_scheduled_rate']:.1f}%", cert_s,
                      "-" if r.get("certified_k") is None else f"{r['certified_k']:.3g}")
    return table


def evaluate_attack_file(attack_path: str | Path, scheduler: str | Path | None = None, *, ttis: int = 2000,
                         seeds: Sequence[int] = (0, 1, 2), oracle: bool = False, out_dir: str | Path | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved ``attack.json`` against no attack and random forged CSI at the same power.

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
    power = {u: float(np.sum(np.abs(h) ** 2)) for u, h in res.forged.items()}
    rnd = random_forged(victim, res.threat, power)
    bar = _progress(progress, total=len(seeds) * ttis * (3 + int(oracle)), desc="evaluating attack")
    rows, per_tti = evaluate_attacks(victim, res.threat, {"none": None, "random": rnd, res.attack: res}, ttis=ttis,
                                     seeds=seeds, oracle=oracle, oracle_inits=[res], on_step=bar.update if bar else None)
    if bar is not None:
        bar.close()
    result = {"rows": rows, "attack_file": str(attack_path), "scheduler": str(src), "threat_model": res.threat.to_dict()}
    if out_dir is not None:
        _write(result, per_tti, Path(out_dir))
    return result
