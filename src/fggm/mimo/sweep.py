"""Sweep every victim: each single victim and random victim pairs, for each number of attackers,
threat model (forgery), box size and channel model, against every baseline with the same step
budget; the headline is the mean over victims with its spread, never the best one.

For each victim set and attacker count the attackers are drawn at random (seeded) from the other
users.  Every search method is crafted with ``craft_seeds`` crafting seeds; every condition
(no attack, each crafted forgery, silent attackers, the white-box oracle) is evaluated on the same
``eval_seeds`` channel seeds, TTI by TTI (:mod:`fggm.mimo.runner`), so everything is paired.
CIs come from :func:`fggm.core.stats.nested_drop`: bootstrap over crafting seeds and 50-TTI blocks of
every evaluation seed (and over the victim sets, for the random pairs, which are a sample).

Outputs in ``out_dir``: ``settings.json``, ``configs.jsonl`` (one line per finished
configuration with its per-block numbers: the sweep resumes from it), ``results.json``
(``rows``: one per (method, attackers, victims, forgery, k, channel) with ``method, attackers,
victims, forgery, k, victim_drop, ci95, attacker_drop, coverage, certified_coverage`` and more;
``summary``: the mean over victim sets with ``min / median / max / std`` and its CI; ``margins``:
FGGM minus mean-point PGD and minus EOT-PGD, paired, with CIs) and two PNGs.

Example:
    >>> settings = SweepSettings(victims="all", attacker_counts=(1, 2), forgeries=("fixed",))   # doctest: +SKIP
    >>> result = run_sweep(Victim.load("data/schedulers/smart16"), settings, out_dir="runs/sweep")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fggm.core.files import write_json
from fggm.core.stats import block_means, nested_drop, spread
from fggm.mimo.attack import METHODS, AttackResult, AttackSetup, ThreatModel, Victim, craft
from fggm.mimo.attack_eval import BLOCK, _progress, coverages
from fggm.mimo.config import ChannelConfig
from fggm.mimo.runner import Condition, OracleAttacker, run_conditions
from fggm.mimo.threat import FORGERIES, ThreatModelError
from fggm.plots import plt, save_figure

__all__ = ["SweepSettings", "SWEEP_METHODS", "victim_sets", "attackers_for", "run_sweep", "summarise", "plot_sweep"]

SWEEP_METHODS = ("random", "silent", "mean-pgd", "eot-pgd", "oracle-pgd", "fggm-ibp", "fggm")
SEARCHES = ("fggm", "fggm-ibp", "mean-pgd", "eot-pgd", "random")


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep covers (saved as ``settings.json``; a resumed sweep must match it).

    Attributes:
        victims: ``all`` (every single victim and ``pairs`` random pairs) or comma-separated ids
            (one victim set).
        attacker_counts: numbers of attackers.
        pairs: random victim pairs with ``victims=all``.
        forgeries: threat models (:data:`fggm.mimo.threat.FORGERIES` except ``silent``, which is a method).
        ks: box half-widths.
        channels: channel models evaluated on (attacks are crafted once, on the normaliser's statistics).
        methods: subset of :data:`SWEEP_METHODS`.
        craft_seeds: crafting seeds per search method.
        eval_seeds: channel seeds (never used in training).
        ttis: TTIs per evaluation seed.
        steps / restarts: the search budget of every method.
        oracle_steps: PGD steps per TTI of the white-box oracle.
        box: ``sigma`` or ``tight`` (:class:`~fggm.mimo.threat.ThreatModel`).
        seed: seed of the attacker and pair draws.

    Example:
        >>> SweepSettings(victims="2", attacker_counts=(2,)).methods[-1]
        'fggm'
    """

    victims: str = "all"
    attacker_counts: tuple[int, ...] = (1, 2)
    pairs: int = 4
    forgeries: tuple[str, ...] = ("fixed",)
    ks: tuple[float, ...] = (3.0,)
    channels: tuple[str, ...] = ("rayleigh",)
    methods: tuple[str, ...] = SWEEP_METHODS
    craft_seeds: int = 2
    eval_seeds: tuple[int, ...] = (101, 102)
    ttis: int = 200
    steps: int = 40
    restarts: int = 4
    oracle_steps: int = 10
    box: str = "sigma"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("attacker_counts", "forgeries", "ks", "channels", "methods", "eval_seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.attacker_counts or min(self.attacker_counts) < 1:
            raise ThreatModelError("attacker counts must be >= 1")
        bad = [f for f in self.forgeries if f not in FORGERIES or f == "silent"]
        if bad or not self.forgeries:
            raise ThreatModelError(f"sweep forgeries must be among fixed, stealthy, pilot (silent is a method), got {list(self.forgeries)}")
        bad = [m for m in self.methods if m not in SWEEP_METHODS]
        if bad or not self.methods:
            raise ThreatModelError(f"unknown method(s) {bad}: choose from {', '.join(SWEEP_METHODS)}")
        if self.craft_seeds < 1 or self.ttis < BLOCK or not self.eval_seeds or self.pairs < 0:
            raise ThreatModelError(f"need craft_seeds >= 1, ttis >= {BLOCK} (one bootstrap block), at least one "
                                   "evaluation seed and pairs >= 0")
        if not self.ks or min(self.ks) <= 0:
            raise ThreatModelError("k values must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return json.loads(json.dumps(asdict(self)))


def victim_sets(num_users: int, victims: str, pairs: int = 4, seed: int = 0) -> list[tuple[tuple[int, ...], str]]:
    """``[(victims, kind)]``: ``all`` gives every single victim (kind ``single``) and ``pairs``
    distinct random pairs (kind ``pair``); otherwise the one set of comma-separated ids.

    Example:
        >>> [v for v, _ in victim_sets(4, "all", pairs=1)]
        [(0,), (1,), (2,), (3,), (0, 3)]
    """
    if victims.strip().lower() == "all":
        out = [((v,), "single") for v in range(num_users)]
        rng = np.random.default_rng([seed, 7])
        all_pairs = [(a, b) for a in range(num_users) for b in range(a + 1, num_users)]
        pick = rng.choice(len(all_pairs), size=min(pairs, len(all_pairs)), replace=False) if pairs else []
        out += [(all_pairs[int(i)], "pair") for i in sorted(pick)]
        return out
    try:
        ids = tuple(sorted({int(x) for x in victims.split(",") if x.strip()}))
    except ValueError:
        raise ThreatModelError(f"--victims must be 'all' or comma-separated user ids, got {victims!r}") from None
    if not ids:
        raise ThreatModelError("give at least one victim")
    bad = [u for u in ids if not 0 <= u < num_users]
    if bad:
        raise ThreatModelError(f"unknown user(s) {bad}: the environment has users 0..{num_users - 1}")
    return [(ids, "single" if len(ids) == 1 else ("pair" if len(ids) == 2 else "set"))]


def attackers_for(num_users: int, victims: Sequence[int], n: int, seed: int = 0) -> tuple[int, ...]:
    """``n`` attackers drawn at random (seeded by the victims and ``n``) from the other users.

    Example:
        >>> attackers_for(16, (2,), 2) == attackers_for(16, (2,), 2)
        True
    """
    pool = [u for u in range(num_users) if u not in set(victims)]
    if n > len(pool):
        raise ThreatModelError(f"{n} attackers do not fit among the {len(pool)} non-victims")
    rng = np.random.default_rng([seed, n, *victims])
    return tuple(sorted(int(u) for u in rng.choice(pool, size=n, replace=False)))


def _key(victims: Sequence[int], n: int, forgery: str, k: float, channel: str) -> str:
    return f"{'-'.join(map(str, victims))}|{n}|{forgery}|{k:g}|{channel}"


def _craft_config(victim: Victim, settings: SweepSettings, tm: ThreatModel, bar: Any) -> dict[str, AttackResult]:
    crafted: dict[str, AttackResult] = {}
    for s in range(settings.craft_seeds):
        tms = replace(tm, seed=s)
        for m in SEARCHES:
            if m not in settings.methods:
                continue
            if bar is not None:
                bar.set_postfix_str(f"crafting {m} #{s}: victims {list(tm.victims)}, {len(tm.attackers)} att., {tm.forgery}")
            power = None
            if m == "random" and tm.forgery == "fixed" and f"fggm#{s}" in crafted:
                power = {u: float(np.sum(np.abs(h) ** 2)) for u, h in crafted[f"fggm#{s}"].forged.items()}
            crafted[f"{m}#{s}"] = craft(victim, tms, m, power=power)
    if "silent" in settings.methods:
        crafted["silent#0"] = craft(victim, replace(tm, forgery="silent"), "silent")
    return crafted


def _run_config(victim: Victim, settings: SweepSettings, victims: tuple[int, ...], kind: str, n: int, forgery: str,
                k: float, bar: Any) -> list[dict[str, Any]]:
    K = victim.env.num_users
    attackers = attackers_for(K, victims, n, settings.seed)
    tm = ThreatModel(attackers=attackers, victims=victims, k=k, forgery=forgery, steps=settings.steps,
                     restarts=settings.restarts, box=settings.box)
    crafted = _craft_config(victim, settings, tm, bar)
    conds = [Condition("none")] + [Condition(name, r.reports) for name, r in crafted.items()]
    if "oracle-pgd" in settings.methods:
        inits = [crafted[f"{m}#0"].x()[0] for m in ("fggm", "mean-pgd", "eot-pgd") if f"{m}#0" in crafted]
        conds.append(Condition("oracle-pgd#0", oracle=OracleAttacker(AttackSetup.build(victim, tm), inits,
                                                                     steps=settings.oracle_steps)))
    records = []
    for channel in settings.channels:
        env = replace(victim.env, channel=ChannelConfig(**{**victim.env.channel.__dict__, "model": channel}))
        if bar is not None:
            bar.set_postfix_str(f"evaluating victims {list(victims)}, {n} att., {forgery}, {channel}")
        traces = [run_conditions(victim, conds, settings.ttis, seed, env=env, record_obs=True,
                                 on_step=bar.update if bar is not None else None) for seed in settings.eval_seeds]
        blocks, info = {}, {}
        for c in conds:
            v = np.concatenate([tr[c.name].per_tti(victims) for tr in traces])
            a = np.concatenate([tr[c.name].per_tti(attackers) for tr in traces])
            nb = len(settings.eval_seeds)
            blocks[c.name] = {"victim": block_means(v, settings.ttis, nb, BLOCK).tolist(),
                              "attacker": block_means(a, settings.ttis, nb, BLOCK).tolist(),
                              "scheduled": float(np.concatenate([tr[c.name].scheduled[:, list(victims)] for tr in traces]).mean())}
            res = crafted.get(c.name)
            if res is not None:
                obs = np.concatenate([tr[c.name].obs for tr in traces])
                cov, ccov = coverages(victim, res, obs)
                cert = res.certificate
                info[c.name] = {"coverage": cov, "certified_coverage": ccov, "certified_k": cert.get("certified_k"),
                                "proved": bool(cert.get("proved")), "certified_share": cert.get("certified_share"),
                                "wall_s": round(res.wall_s, 2), "steps": res.steps_done}
        records.append({"key": _key(victims, n, forgery, k, channel), "victims": list(victims), "kind": kind,
                        "attackers": list(attackers), "num_attackers": n, "forgery": forgery, "k": k,
                        "channel": channel, "blocks": blocks, "crafted": info})
    return records


def _method_of(cond: str) -> tuple[str, int]:
    name, _, s = cond.partition("#")
    return name, int(s or 0)


def _rows_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = record["blocks"]
    base_v = np.asarray(blocks["none"]["victim"])[None]
    base_a = np.asarray(blocks["none"]["attacker"])[None]
    by_method: dict[str, list[str]] = defaultdict(list)
    for cond in blocks:
        if cond != "none":
            by_method[_method_of(cond)[0]].append(cond)
    rows = []
    for method, conds in by_method.items():
        att_v = np.stack([blocks[c]["victim"] for c in conds])[None]
        att_a = np.stack([blocks[c]["attacker"] for c in conds])[None]
        d, lo, hi = nested_drop(base_v, att_v)
        ad, alo, ahi = nested_drop(base_a, att_a)
        infos = [record["crafted"][c] for c in conds if c in record["crafted"]]

        def mean_of(key: str) -> float | None:
            vals = [i[key] for i in infos if i.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        rows.append({
            "method": method, "attackers": record["attackers"], "victims": record["victims"],
            "forgery": "silent" if method == "silent" else record["forgery"], "threat_model": record["forgery"],
            "k": record["k"], "channel_model": record["channel"], "kind": record["kind"],
            "num_attackers": record["num_attackers"], "victim_drop": d, "ci95": [lo, hi],
            "attacker_drop": ad, "attacker_ci95": [alo, ahi],
            "victim_throughput": float(att_v.mean()), "victim_throughput_no_attack": float(base_v.mean()),
            "attacker_throughput": float(att_a.mean()), "attacker_throughput_no_attack": float(base_a.mean()),
            "victim_scheduled_rate": float(np.mean([blocks[c]["scheduled"] for c in conds])),
            "coverage": mean_of("coverage"), "certified_coverage": mean_of("certified_coverage"),
            "certified_k": mean_of("certified_k"), "proved": mean_of("proved"),
            "craft_wall_s": mean_of("wall_s"), "craft_seeds": len(conds),
        })
    return rows


def summarise(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(summary, margins)`` over configuration records (the lines of ``configs.jsonl``).

    ``summary``: per (method, number of attackers, threat model, k, channel, victim kind) the mean
    victim drop over the victim sets with ``min / median / max / std`` of the per-set drops and a
    95% CI (crafting seeds x evaluation blocks, plus the sets themselves for random pairs);
    ``margins``: FGGM's mean drop minus mean-point PGD's and EOT-PGD's, paired, with CIs.

    Example:
        >>> summarise([])
        ([], [])
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["num_attackers"], r["forgery"], r["k"], r["channel"], r["kind"])].append(r)
    summary, margins = [], []
    for (n, forgery, k, channel, kind), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        methods = sorted({_method_of(c)[0] for r in recs for c in r["blocks"] if c != "none"})
        base = np.stack([np.asarray(r["blocks"]["none"]["victim"]) for r in recs])
        resample = kind != "single"

        def stacked(method: str, part: str = "victim") -> np.ndarray | None:
            per = []
            for r in recs:
                conds = sorted(c for c in r["blocks"] if _method_of(c)[0] == method)
                if not conds:
                    return None
                per.append(np.stack([r["blocks"][c][part] for c in conds]))
            if len({p.shape for p in per}) != 1:
                return None
            return np.stack(per)

        for method in methods:
            att = stacked(method)
            if att is None:
                continue
            d, lo, hi = nested_drop(base, att, resample_groups=resample)
            per_set = [float(np.mean(100 * (1 - att[g].mean(-1) / max(base[g].mean(), 1e-12)))) for g in range(len(recs))]
            rows = [row for r in recs for row in _rows_of(r) if row["method"] == method]
            abase = np.stack([np.asarray(r["blocks"]["none"]["attacker"]) for r in recs])
            aatt = stacked(method, "attacker")
            ad = nested_drop(abase, aatt)[0] if aatt is not None else None

            def m(key: str) -> float | None:
                vals = [row[key] for row in rows if row.get(key) is not None]
                return float(np.mean(vals)) if vals else None

            summary.append({"method": method, "num_attackers": n, "forgery": forgery, "k": k, "channel_model": channel,
                            "victims": kind, "victim_sets": len(recs), "victim_drop": d, "ci95": [lo, hi],
                            **{f"victim_drop_{s}": v for s, v in spread(per_set).items() if s != "mean"},
                            "attacker_drop": ad, "coverage": m("coverage"), "certified_coverage": m("certified_coverage"),
                            "certified_coverage_max": max((row["certified_coverage"] or 0.0) for row in rows),
                            "certified_k": m("certified_k"), "proved": m("proved")})
        fg = stacked("fggm")
        for other in ("mean-pgd", "eot-pgd", "fggm-ibp"):
            ob = stacked(other)
            if fg is None or ob is None or fg.shape != ob.shape:
                continue
            d, lo, hi = nested_drop(base, fg, ob, resample_groups=resample)
            margins.append({"method": "fggm", "versus": other, "num_attackers": n, "forgery": forgery, "k": k,
                            "channel_model": channel, "victims": kind, "victim_sets": len(recs), "margin": d,
                            "ci95": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0)})
    return summary, margins


def _load_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by an interrupted run: everything after it is redone
    return out


def run_sweep(victim: Victim, settings: SweepSettings, *, out_dir: str | Path | None = None, fresh: bool = False,
              progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep; returns ``{"rows", "summary", "margins", "settings", ...}`` and,
    with ``out_dir``, writes it as ``results.json`` plus PNGs.

    Example:
        >>> run_sweep(victim, SweepSettings(victims="2", attacker_counts=(2,)), out_dir="runs/sweep")   # doctest: +SKIP
    """
    K = victim.env.num_users
    sets = victim_sets(K, settings.victims, settings.pairs, settings.seed)
    for vs, _ in sets:
        for n in settings.attacker_counts:
            attackers_for(K, vs, n, settings.seed)  # validate before any work
    out = Path(out_dir) if out_dir is not None else None
    log = out / "configs.jsonl" if out is not None else None
    sdict = {**settings.to_dict(), "scheduler": victim.source}
    records: list[dict[str, Any]] = []
    if out is not None and log is not None:
        out.mkdir(parents=True, exist_ok=True)
        sfile = out / "settings.json"
        if fresh and log.exists():
            log.unlink()
        if log.exists() and sfile.is_file() and json.loads(sfile.read_text()) != sdict:
            raise ThreatModelError(f"{out} holds a sweep with other settings: pass --fresh or another --out")
        write_json(sfile, sdict)
        records = _load_records(log)
    done = {r["key"] for r in records}
    todo = [(vs, kind, n, f, k) for f in settings.forgeries for n in settings.attacker_counts for k in settings.ks
            for vs, kind in sets if any(_key(vs, n, f, k, c) not in done for c in settings.channels)]
    n_conds = 1 + settings.craft_seeds * sum(m in settings.methods for m in SEARCHES) + \
        sum(m in settings.methods for m in ("silent", "oracle-pgd"))
    total = len(todo) * len(settings.channels) * len(settings.eval_seeds) * settings.ttis * n_conds
    bar = _progress(progress, total=total, desc="fggm sweep")
    try:
        for vs, kind, n, f, k in todo:
            new = _run_config(victim, settings, vs, kind, n, f, k, bar)
            new = [r for r in new if r["key"] not in done]
            records.extend(new)
            if log is not None:
                with log.open("a") as fh:
                    for r in new:
                        fh.write(json.dumps(r) + "\n")
                    fh.flush()
    finally:
        if bar is not None:
            bar.close()
    wanted = {_key(vs, n, f, k, c) for vs, _ in sets for n in settings.attacker_counts for f in settings.forgeries
              for k in settings.ks for c in settings.channels}
    records = [r for r in records if r["key"] in wanted]
    rows = [row for r in records for row in _rows_of(r)]
    summary, margins = summarise(records)
    result = {"format": "fggm-sweep/2", "rows": rows, "summary": summary, "margins": margins, "settings": sdict,
              "scheduler": victim.source, "head": victim.head}
    if out is not None:
        result["pngs"] = [str(p) for p in plot_sweep(summary, rows, out)]
        write_json(out / "results.json", result)
    return result


# ------------------------------------------------------------------------------ plots


def plot_sweep(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """``drop_by_method.png`` (mean victim drop over single victims per method, whiskers min..max,
    one panel per threat model and attacker count) and ``drop_per_victim.png`` (each single
    victim's drop under FGGM and the baselines).

    Example:
        >>> plot_sweep([], [], Path("/tmp"))
        []
    """
    pngs: list[Path] = []
    singles = [s for s in summary if s["victims"] == "single"]
    panels = sorted({(s["forgery"], s["num_attackers"]) for s in singles})
    order = {m: i for i, m in enumerate(SWEEP_METHODS)}
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False, sharey=True)
        for ax, (f, n) in zip(axes[0], panels):
            sel = sorted([s for s in singles if s["forgery"] in (f, "silent") and s["num_attackers"] == n],
                         key=lambda s: order.get(s["method"], 99))
            xs = np.arange(len(sel))
            means = np.array([s["victim_drop"] for s in sel])
            lo = means - np.array([s["victim_drop_min"] for s in sel])
            hi = np.array([s["victim_drop_max"] for s in sel]) - means
            ax.bar(xs, means, yerr=[lo, hi], capsize=3, color="#4c72b0")
            ax.set_xticks(xs)
            ax.set_xticklabels([s["method"] for s in sel], rotation=60, fontsize=7)
            ax.axhline(70, ls="--", lw=1, color="k")
            ax.set_title(f"{f}, {n} attacker(s)", fontsize=9)
        axes[0][0].set_ylabel("victim throughput drop [%]\n(mean over victims, min..max)")
        pngs.append(save_figure(fig, out / "drop_by_method.png"))
    srows = [r for r in rows if r["kind"] == "single"]
    combos = sorted({(r["threat_model"], r["num_attackers"]) for r in srows})
    if combos:
        fig, axes = plt.subplots(len(combos), 1, figsize=(7.0, 2.6 * len(combos)), squeeze=False)
        for ax, (f, n) in zip(axes[:, 0], combos):
            for method in sorted({r["method"] for r in srows}, key=lambda m: order.get(m, 99)):
                pts = sorted((r["victims"][0], r["victim_drop"]) for r in srows
                             if r["method"] == method and r["threat_model"] == f and r["num_attackers"] == n)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=0.8, label=method)
            ax.set_title(f"{f}, {n} attacker(s)", fontsize=9)
            ax.set_xlabel("victim user")
            ax.set_ylabel("drop [%]")
        axes[0][0].legend(fontsize=7, ncol=4)
        pngs.append(save_figure(fig, out / "drop_per_victim.png"))
    return pngs
