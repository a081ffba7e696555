"""How much real traffic FGGM's boxes and certificates cover (target: certified coverage >= 50 %).

Crafts one FGGM forgery (default: attackers 0, 1, victim 2, k = 3, 40 steps), runs the victim
policy for 400 TTIs of an unseen channel seed with and without it, and prints

* the coverage of those real TTIs by the box at several k, for the ``sigma`` box and the ``tight``
  box (single-user SE tied to the channel norm, cumulative SE <= horizon x the largest SE), with
  the union-bound k for 50 % coverage under the normaliser's Gaussian;
* the largest k the forgery is proved at with CROWN and with full alpha-CROWN, on both boxes, and
  the coverage of that certified box (the certified coverage);
* whether input splitting (``fggm.core.attack.prove_split``) proves a slightly larger box.

    .venv/bin/python benchmarks/bench_coverage.py [--scheduler DIR] [--victims 2] [--attackers 0,1]
"""

from __future__ import annotations

import argparse
import time

import torch

from fggm.core import bounds
from fggm.core.attack import double, prove_split
from fggm.mimo.attack import AttackSetup, ThreatModel, Victim, craft, union_bound_k
from fggm.mimo.attack_eval import default_scheduler
from fggm.mimo.runner import Condition, run_conditions

TARGET = 0.5


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--attackers", default="0,1")
    ap.add_argument("--victims", default="2")
    ap.add_argument("--ttis", type=int, default=400)
    ap.add_argument("--seed", type=int, default=301, help="evaluation channel seed")
    ap.add_argument("--split-leaves", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    victim = Victim.load(args.scheduler or default_scheduler())
    A, V = _ids(args.attackers), _ids(args.victims)
    tm = ThreatModel(attackers=A, victims=V, steps=40)
    res = craft(victim, tm, "fggm")
    x = res.x()
    traces = run_conditions(victim, [Condition("none"), Condition("fggm", res.reports)], args.ttis, args.seed,
                            record_obs=True)
    n = victim.env.obs_dim - len(AttackSetup.build(victim, tm).controlled.indices)
    k_ub = union_bound_k(n, TARGET)
    print(f"{victim.source} ({victim.head} head): attackers {list(A)}, victims {list(V)}; {args.ttis} TTIs, seed {args.seed}")
    print(f"union-bound k for {TARGET:.0%} coverage over {n} Gaussian entries: {k_ub:.2f}")
    print("k       sigma box: no attack / FGGM     tight box: no attack / FGGM")
    for k in (1.0, 3.0, k_ub, 4.0, 5.0, 5.5, 6.0, 7.0, 10.0):
        cells = []
        for box in ("sigma", "tight"):
            s = AttackSetup.build(victim, ThreatModel(attackers=A, victims=V, k=k, box=box))
            cells.append(f"{s.coverage(traces['none'].obs, x[0]):.3f} / {s.coverage(traces['fggm'].obs, x[0]):.3f}")
        print(f"{k:5.2f}   {cells[0]:>25s}       {cells[1]:>25s}")
    best = 0.0
    for box in ("sigma", "tight"):
        s = AttackSetup.build(victim, ThreatModel(attackers=A, victims=V, k=3.0, box=box))
        net64 = double(s.problem.net)
        for alpha in (False, True):
            def proved(k: float) -> bool:
                lo, up = s.problem.at_k(k).box(x, torch.float64)
                lb, ub = bounds.crown(net64, lo, up, alpha=alpha, alpha_steps=20) if alpha else bounds.crown(net64, lo, up)
                return s.spec.which(lb[0], ub[0]) is not None

            lo_k, hi_k = 0.0, 3.0
            for _ in range(10):
                mid = (lo_k + hi_k) / 2
                lo_k, hi_k = (mid, hi_k) if proved(mid) else (lo_k, mid)
            cc = s.coverage(traces["fggm"].obs, x[0], k=lo_k) if lo_k > 0 else 0.0
            best = max(best, cc)
            print(f"{box:5s} box, {'alpha-CROWN' if alpha else 'CROWN      '}: proved up to k = {lo_k:.4f}, "
                  f"certified coverage {cc:.3f}")
        if box == "sigma":
            t0 = time.perf_counter()
            ok, leaves = prove_split(s.problem.at_k(1.05 * lo_k), x, max_leaves=args.split_leaves, net64=net64)
            print(f"      input splitting at 1.05 x that k: {'proved' if ok else 'not proved'} with {leaves} leaves "
                  f"({time.perf_counter() - t0:.0f} s)")
    print(f"best certified coverage {best:.3f} (target >= {TARGET}: {'met' if best >= TARGET else 'MISSED'})")


if __name__ == "__main__":
    main()
