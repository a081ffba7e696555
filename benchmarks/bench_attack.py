"""Wall time of one FGGM attack (CROWN domain, default threat model) vs the 60 s target.

Uses the shipped scheduler data/schedulers/smart16 (or --scheduler DIR): attackers 0,1,
victim 2, k = 3, the default steps/restarts.  Also times the IBP ablation and prints the
certificate of each.

    .venv/bin/python benchmarks/bench_attack.py [--scheduler DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from fggm.attack import ThreatModel, Victim, run_fggm
from fggm.attack_eval import default_scheduler

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", default=None, help="checkpoint directory (default: the shipped smart16)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--k", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = args.scheduler or default_scheduler()
    victim = Victim.load(src)
    tm = ThreatModel(attackers=(0, 1), victims=(2,), k=args.k)
    print(f"scheduler {src}: M={victim.env.num_antennas}, K={victim.env.num_users}, S={victim.env.max_scheduled}; "
          f"threads {torch.get_num_threads()}; steps {tm.steps} x restarts {tm.restarts}")
    for domain in ("crown", "ibp"):
        t0 = time.perf_counter()
        res = run_fggm(victim, replace(tm, domain=domain))
        wall = time.perf_counter() - t0
        c = res.certificate
        print(f"  {domain:5s}: {wall:6.1f} s, {res.steps_done} steps; proved={c['proved']} "
              f"certified_share={c['certified_share']:.3f} certified_k={c['certified_k']:.3g} "
              f"bound=[{c['bound'][0]:.3f}, {c['bound'][1]:.3f}]")
        if domain == "crown":
            verdict = "met" if wall <= TARGET_S else "MISSED"
            print(f"FGGM (CROWN) attack wall time {wall:.1f} s (target <= {TARGET_S:.0f} s: {verdict})")


if __name__ == "__main__":
    main()
