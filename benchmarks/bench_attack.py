"""FGGM attack targets, measured in one run: wall time of one attack, and a small every-victim sweep.

Prints, for each shipped victim found (data/schedulers/smart16 = SMART's subset head, and
data/schedulers/smart16-scores = the v2 scores head when present) and each threat model:

* the mean victim-throughput cut over ALL single victims with <= 2 of 16 attackers, with min and
  median beside it (target: mean >= 70 %), for FGGM and every baseline;
* FGGM's paired margin over mean-point PGD and EOT-PGD with its 95 % CI (target: a CI that
  excludes 0 in at least one regime);
* coverage and certified coverage of the real TTIs (target: certified coverage >= 50 % somewhere);
* one FGGM attack's wall time (target <= 60 s on 2 cores).

Small by default (every single victim, 2 attackers, 1 crafting seed, 1 x 100 TTIs, 20 steps); the
README's tables come from the full sweeps (`fggm sweep`), which ``--from DIR`` reads instead of
running (several DIRs allowed).

    .venv/bin/python benchmarks/bench_attack.py [--victims all] [--ttis 100] [--from runs/sweep-...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fggm.mimo.attack import ThreatModel, Victim, run_fggm
from fggm.mimo.attack_eval import default_scheduler
from fggm.mimo.sweep import SweepSettings, _load_records, run_sweep, summarise

TARGET_S = 60.0
TARGET_DROP = 70.0
TARGET_CERT_COV = 0.5


def _victims(explicit: list[str] | None) -> list[Path]:
    if explicit:
        return [Path(p) for p in explicit]
    root = default_scheduler().parent
    return [p for p in (root / "smart16", root / "smart16-scores") if (p / "manifest.json").is_file()]


def _read_sweep(folder: Path) -> dict[str, Any]:
    """A sweep's ``results.json``, or, for a sweep still running (or stopped), the summary of the
    configurations finished so far in its ``configs.jsonl``."""
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text())
    settings = json.loads((folder / "settings.json").read_text())
    records = _load_records(folder / "configs.jsonl")
    if not records:
        raise SystemExit(f"{folder}: no results.json and no finished configuration in configs.jsonl")
    summary, margins = summarise(records)
    manifest = Path(str(settings.get("scheduler", ""))) / "manifest.json"
    head = "?"
    if manifest.is_file():
        head = json.loads(manifest.read_text()).get("config", {}).get("env", {}).get("action_head", "subset")
    print(f"{folder}: unfinished sweep, {len(records)} configurations done")
    return {"summary": summary, "margins": margins, "scheduler": settings.get("scheduler"), "head": head}


def report(results: list[dict[str, Any]]) -> None:
    """Print the target tables from sweep results (``results.json`` dicts)."""
    best_cov = 0.0
    beat = []
    for res in results:
        head = res.get("head", "?")
        print(f"\n== {res.get('scheduler')} ({head} head)")
        print(f"{'threat':9s} {'A':>2s} {'method':10s} {'mean':>6s} {'CI95':>13s} {'min':>6s} {'median':>6s} "
              f"{'att.drop':>8s} {'cov':>5s} {'certcov':>7s}  target mean >= {TARGET_DROP:.0f}%")
        for s in sorted(res["summary"], key=lambda s: (s["forgery"], s["num_attackers"], s["method"])):
            if s["victims"] != "single":
                continue
            cov = "-" if s["coverage"] is None else f"{s['coverage']:.2f}"
            ccov = "-" if s["certified_coverage"] is None else f"{s['certified_coverage']:.2f}"
            best_cov = max(best_cov, s.get("certified_coverage_max") or 0.0)
            mark = ""
            if s["method"] == "fggm" and s["num_attackers"] <= 2:
                mark = "met" if s["victim_drop"] >= TARGET_DROP else "MISSED"
            att = "-" if s.get("attacker_drop") is None else f"{s['attacker_drop']:.1f}"
            print(f"{s['forgery']:9s} {s['num_attackers']:2d} {s['method']:10s} {s['victim_drop']:6.1f} "
                  f"{s['ci95'][0]:6.1f}..{s['ci95'][1]:5.1f} {s['victim_drop_min']:6.1f} {s['victim_drop_median']:6.1f} "
                  f"{att:>8s} {cov:>5s} {ccov:>7s}  {mark}")
        for m in res["margins"]:
            if m["versus"] in ("mean-pgd", "eot-pgd"):
                tag = "CI excludes 0" if m["excludes_zero"] else "CI includes 0"
                print(f"  FGGM - {m['versus']:8s} ({m['forgery']}, {m['num_attackers']} att., {m['victims']}): "
                      f"{m['margin']:+6.1f} points, CI {m['ci95'][0]:+.1f}..{m['ci95'][1]:+.1f}  {tag}")
                if m["excludes_zero"] and m["margin"] > 0:
                    beat.append(f"{head}/{m['forgery']}/{m['num_attackers']} att./{m['victims']} vs {m['versus']}")
    print(f"\nFGGM beats a point baseline with a CI excluding 0 in: {', '.join(beat) if beat else 'no regime (MISSED)'}")
    verdict = "met" if best_cov >= TARGET_CERT_COV else "MISSED"
    print(f"best certified coverage of real TTIs: {best_cov:.3f} (target >= {TARGET_CERT_COV}: {verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", action="append", help="checkpoint directory (repeatable; default: the shipped ones)")
    ap.add_argument("--from", dest="from_dirs", action="append", help="read a finished sweep's results.json instead")
    ap.add_argument("--victims", default="all")
    ap.add_argument("--forgery", default="fixed,stealthy,pilot")
    ap.add_argument("--attackers", type=int, default=2)
    ap.add_argument("--ttis", type=int, default=100)
    ap.add_argument("--craft-seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-attack", help="sweep output folder (one subfolder per victim)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_dirs:
        report([_read_sweep(Path(d)) for d in args.from_dirs])
        return
    results = []
    for src in _victims(args.scheduler):
        victim = Victim.load(src)
        tm = ThreatModel(attackers=(0, 1), victims=(2,), k=3.0)
        t0 = time.perf_counter()
        res = run_fggm(victim, tm)
        wall = time.perf_counter() - t0
        print(f"{src}: one FGGM (CROWN) attack, {res.steps_done} steps x {tm.restarts} restarts: {wall:.1f} s "
              f"(target <= {TARGET_S:.0f} s: {'met' if wall <= TARGET_S else 'MISSED'}); certified_k "
              f"{res.certificate['certified_k']:.3g}")
        settings = SweepSettings(victims=args.victims, attacker_counts=(args.attackers,), pairs=0,
                                 forgeries=tuple(f for f in args.forgery.split(",") if f),
                                 methods=("silent", "mean-pgd", "eot-pgd", "fggm"), craft_seeds=args.craft_seeds,
                                 eval_seeds=(101,), ttis=args.ttis, steps=args.steps, oracle_steps=0)
        t0 = time.perf_counter()
        results.append(run_sweep(victim, settings, out_dir=Path(args.out) / Path(src).name, fresh=True))
        print(f"  sweep: {time.perf_counter() - t0:.0f} s")
    report(results)


if __name__ == "__main__":
    main()
