"""The FGGM victim v2 against every baseline, measured in one run (issue 11's targets).

For each channel model and seed (unseen: the script refuses seeds the checkpoint trained or was
selected on) it evaluates the v2 scheduler, the classical baselines (random, round robin, greedy,
proportional fair, the myopic exhaustive optimum) and, as references, the SMART-faithful v1
scheduler and the marginal-reward rule v2 was warm-started from (teacher weight from the manifest),
all on identical channels; then prints the ratios v2 / baseline of mean reward, sum SE and Jain,
and the index-fairness check (every user's scheduled share within +-25 % of the mean share, per
seed and pooled over seeds).

Targets: mean reward >= 1.02 x PF and above round robin, greedy and random; shares within +-25 %;
the same on a second channel model without retraining.

Run: ``.venv/bin/python benchmarks/bench_victim.py`` (add ``--channel rayleigh,correlated,umi`` for UMi
traces, which needs quadriga-lib; ``--out FILE`` writes every row as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fggm.config import ChannelConfig
from fggm.evaluate import evaluate_schedulers
from fggm.mimo.teacher import RuleScheduler
from fggm.schedulers import BASELINES, PolicyScheduler, make_scheduler
from fggm.train import check_unseen, load_config_for_dir, load_scheduler

ROOT = Path(__file__).resolve().parents[1]


def _channel(name: str, base: ChannelConfig, umi_file: Path) -> ChannelConfig:
    if name == "umi":
        if not umi_file.is_file():
            from fggm.channels import make_umi_traces

            umi_file.parent.mkdir(parents=True, exist_ok=True)
            make_umi_traces(str(umi_file), num_antennas=16, num_users=16, num_snapshots=2000, seed=0)
        return replace(base, model="umi", trace_file=str(umi_file))
    return replace(base, model=name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", default=str(ROOT / "data/schedulers/smart16-scores"), help="v2 checkpoint directory")
    ap.add_argument("--reference", default=str(ROOT / "data/schedulers/smart16"), help="v1 checkpoint ('' to skip)")
    ap.add_argument("--ttis", type=int, default=2000, help="TTIs per scheduler and seed")
    ap.add_argument("--seeds", default="7,2024", help="comma-separated unseen channel seeds")
    ap.add_argument("--channel", default="rayleigh,correlated", help="channel models (rayleigh, correlated, one-ring, umi)")
    ap.add_argument("--umi-file", default=str(ROOT / "runs/umi16.npz"), help="UMi trace (made if missing)")
    ap.add_argument("--out", default="", help="write all rows and ratios as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ckpts = [args.scheduler] + ([args.reference] if args.reference else [])
    for ck in ckpts:
        bad = check_unseen(ck, seeds)
        if bad:
            print(f"error: seeds {bad} were used to train or select {ck}", file=sys.stderr)
            return 2
    base_cfg = load_config_for_dir(args.scheduler)
    manifest = json.loads((Path(args.scheduler) / "manifest.json").read_text())
    teacher_w = float(((manifest.get("warm_start") or {}).get("teacher") or {}).get("w", 120.0))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU cores: {os.cpu_count()}, 1-min load average at start: {load:.2f}")
    print(f"v2: {args.scheduler}  ({args.ttis} TTIs x seeds {seeds}; reward normaliser {base_cfg.normaliser})")
    report: dict[str, list] = {"rows": [], "ratios": []}
    ok_all = True
    t0 = time.time()
    for ch in [c.strip() for c in args.channel.split(",") if c.strip()]:
        cfg = replace(base_cfg, channel=_channel(ch, base_cfg.channel, Path(args.umi_file)))
        per: dict[str, list[dict]] = {}
        for seed in seeds:
            model, vecnorm, _ = load_scheduler(args.scheduler, cfg)
            scheds = [PolicyScheduler(model, vecnorm, name="v2")]
            if args.reference:
                m1, v1, _ = load_scheduler(args.reference, cfg)
                scheds.append(PolicyScheduler(m1, v1, name="v1-smart16"))
            rule = RuleScheduler(w=teacher_w)
            rule.name = f"rule w={teacher_w:g}"
            scheds += [rule] + [make_scheduler(b, seed) for b in BASELINES]
            for row in evaluate_schedulers(cfg, scheds, args.ttis, seed):
                row["channel"] = ch
                per.setdefault(row["scheduler"], []).append(row)
                report["rows"].append({k: row[k] for k in ("scheduler", "channel", "seed", "ttis", "mean_reward", "sum_se",
                                                           "jain", "scheduled_share", "share_max_rel_dev")})
        mean = {n: {k: float(np.mean([r[k] for r in rows])) for k in ("mean_reward", "sum_se", "jain")} for n, rows in per.items()}
        share = np.mean([r["scheduled_share"] for r in per["v2"]], axis=0)
        dev = float(np.max(np.abs(share / share.mean() - 1)))
        per_seed = [round(100 * r["share_max_rel_dev"], 1) for r in per["v2"]]
        worst = max(r["share_max_rel_dev"] for r in per["v2"])
        print(f"\n[{ch}] mean over seeds {seeds}")
        print(f"{'scheduler':<12} {'reward':>8} {'sum SE':>7} {'Jain':>6}   {'v2/this: reward':>15} {'sum SE':>7} {'Jain':>6}")
        for n, v in mean.items():
            ratio = {k: mean["v2"][k] / v[k] if v[k] else float("nan") for k in v}
            report["ratios"].append({"channel": ch, "baseline": n, **{f"{k}_ratio": ratio[k] for k in ratio}})
            print(f"{n:<12} {v['mean_reward']:8.4f} {v['sum_se']:7.2f} {v['jain']:6.3f}   {ratio['mean_reward']:15.4f} "
                  f"{ratio['sum_se']:7.3f} {ratio['jain']:6.3f}")
        r = {n: mean["v2"]["mean_reward"] / mean[n]["mean_reward"] for n in mean}
        checks = [("reward >= 1.02 x pf", r["pf"] >= 1.02), ("reward > round-robin", r["round-robin"] > 1),
                  ("reward > greedy", r["greedy"] > 1), ("reward > random", r["random"] > 1),
                  (f"every share within +-25 % of the mean, each seed (max dev {per_seed} %)", worst <= 0.25),
                  (f"every share within +-25 % of the mean, seeds pooled (max dev {100 * dev:.1f} %)", dev <= 0.25)]
        for text, ok in checks:
            print(f"  target {text}: {'met' if ok else 'MISSED'}")
            ok_all &= ok
    print(f"\nwall {time.time() - t0:.0f} s; all targets {'met' if ok_all else 'NOT all met'}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
