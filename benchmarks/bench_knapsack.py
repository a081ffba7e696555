"""Knapsack targets, measured: solver vs the exact optimum and greedy; FGGM vs baselines (2 of 10 items).

* solver: mean value on unseen instances as a share of the exact optimum (target >= 95%) and
  against greedy by value/weight (target: above it);
* attack, attackers = items 0 and 1, k = 3: ``exclude`` with every other item as the victim in
  turn (target: selection rate cut by >= 70% on average over every victim) and ``infeasible``
  (target, the alternative: realised value cut by >= 30%); FGGM vs mean-point PGD, EOT-PGD and
  random forgeries, 95% paired-bootstrap CIs; coverage and certified coverage;
* ``--ceiling``: the best fixed forgery on a 5^4 grid of (w, v) reports per victim (what any
  fixed forgery of two items can do to this solver, up to the grid's resolution).

    .venv/bin/python benchmarks/bench_knapsack.py [--solver DIR] [--instances 2000] [--ceiling]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from fggm.knapsack.attack import METHODS, KnapsackThreat, KnapsackVictim, craft
from fggm.knapsack.attack_eval import default_solver, evaluate_attacks, victim_sweep
from fggm.knapsack.env import sample_instances
from fggm.knapsack.evaluate import evaluate_solvers, run_solver
from fggm.knapsack.solvers import make_solver


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solver", default=None, help="checkpoint directory (default: the shipped solver10)")
    ap.add_argument("--instances", type=int, default=2000, help="unseen instances per evaluation")
    ap.add_argument("--solver-instances", type=int, default=10000, help="instances for the solver comparison")
    ap.add_argument("--ceiling", action="store_true", help="also search a 5^4 grid of forgeries per victim")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    src = args.solver or default_solver()
    victim = KnapsackVictim.load(src)
    cfg = victim.config.env
    print(f"solver {src}: n={cfg.n_items}, head={cfg.head}, capacity {cfg.capacity} x{cfg.capacity_ratio}; threads 1")

    rows = evaluate_solvers(cfg, [victim.solver()] + [make_solver(b, 7) for b in ("random", "greedy", "exact")],
                            args.solver_instances, seed=7)
    by = {r["solver"]: r for r in rows}
    for r in rows:
        print(f"  {r['solver']:7s} mean value {r['mean_value']:.4f} [{r['value_ci95'][0]:.4f}, {r['value_ci95'][1]:.4f}]"
              f"  {100 * r['vs_optimum']:6.2f}% of the optimum")
    sac, greedy = by["sac"]["vs_optimum"], by["greedy"]["vs_optimum"]
    print(f"solver / exact optimum = {sac:.4f} (target >= 0.95: {verdict(sac >= 0.95)})")
    print(f"solver / greedy        = {by['sac']['mean_value'] / by['greedy']['mean_value']:.4f} "
          f"(target > 1: {verdict(by['sac']['mean_value'] > by['greedy']['mean_value'])})")

    base = KnapsackThreat(attackers=(0, 1), victims=(2,), k=3.0)
    sweep = victim_sweep(victim, base, methods=METHODS, instances=args.instances, seeds=(101,))
    print(f"exclude, each of items 2..{cfg.n_items - 1} as the victim ({args.instances} instances, seed 101):")
    for m, s in sweep["summary"].items():
        print(f"  {m:8s} victims' selection-rate cut, mean over every victim: {s['mean_victim_cut_pct']:6.1f}% "
              f"[{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]")
    fr = [r for r in sweep["rows"] if r["attack"] == "fggm"]
    print(f"  fggm per victim: " + ", ".join(f"{r['victims'][0]}: {r['victim_cut_pct']:.0f}%" for r in fr))
    print(f"  fggm certified (proved) for {sum(r['certified'] is True for r in fr)} of {len(fr)} victims; "
          f"certified k: " + ", ".join(f"{r['certified_k']:.3g}" for r in fr))
    cut = sweep["summary"]["fggm"]["mean_victim_cut_pct"]

    tm = KnapsackThreat(attackers=(0, 1), goal="infeasible", k=3.0)
    atts = {m: craft(victim, tm, m) for m in METHODS}
    rows, _ = evaluate_attacks(victim, tm, {"none": None, **atts}, instances=args.instances, seeds=(101,))
    print("infeasible (attackers report the lowest weight):")
    for r in rows[1:]:
        print(f"  {r['attack']:8s} realised value cut {r['value_cut_pct']:6.1f}% [{r['value_cut_ci95'][0]:.1f}, "
              f"{r['value_cut_ci95'][1]:.1f}]  feasible {100 * r['feasible_rate']:5.1f}%  attackers in "
              f"{100 * r['attacker_selection_rate']:5.1f}%  certified {r['certified']}  k cert {r['certified_k']:.3g}  "
              f"coverage {r['coverage']:.3f}  certified coverage {r['certified_coverage']:.3f}")
    vcut = next(r["value_cut_pct"] for r in rows if r["attack"] == "fggm")
    print(f"FGGM victims' selection-rate cut (mean over every victim) = {cut:.1f}% (target >= 70%: {verdict(cut >= 70)})")
    print(f"FGGM realised value cut (infeasible)                      = {vcut:.1f}% (target >= 30%: {verdict(vcut >= 30)})")
    print(f"attack target (either): {verdict(cut >= 70 or vcut >= 30)}")

    if args.ceiling:
        w, v = sample_instances(args.instances, cfg.n_items, 101)
        solver = victim.solver()
        base_sel = run_solver(cfg, solver, w, v)["selected"].mean(0)
        best = np.zeros(cfg.n_items)
        grid = np.linspace(0, 1, 5)
        for f in itertools.product(grid, repeat=4):
            sel = run_solver(cfg, solver, w, v, {0: (f[0], f[1]), 1: (f[2], f[3])})["selected"].mean(0)
            best = np.maximum(best, 1 - sel / np.maximum(base_sel, 1e-12))
        print(f"ceiling: best fixed forgery on a 5^4 grid, selection-rate cut per victim: "
              + ", ".join(f"{j}: {100 * best[j]:.0f}%" for j in range(2, cfg.n_items))
              + f"; mean {100 * best[2:].mean():.1f}%")
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
