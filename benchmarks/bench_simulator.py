"""Simulator throughput on the 16x16 SMART setting (ZF receiver), measured in one run.

* env step: one scheduled subset (4 users) per TTI through ``MuMimoEnv.step`` (target >= 2,000 TTIs/s);
* the batched physical layer alone (``subset_se`` over a batch of TTIs);
* the exhaustive scheduler: all N = 2,516 subsets evaluated per TTI, plus the env step
  (target >= 100 TTIs/s).

Run: ``.venv/bin/python benchmarks/bench_simulator.py``
"""

from __future__ import annotations

import os
import time

import numpy as np

from fggm.config import EnvConfig
from fggm.env import MuMimoEnv
from fggm.mimo import subset_se
from fggm.schedulers import ExhaustiveScheduler


def _rate(fn, n: int, repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    cfg = EnvConfig()  # 16 antennas, 16 users, S = 4, SNR 0..20 dB, Rayleigh
    env = MuMimoEnv(cfg)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [np.array([a], dtype=np.float32) for a in rng.uniform(-0.44, 1.0, size=5000)]  # 4-user subsets

    def env_steps(n: int) -> None:
        for i in range(n):
            _, _, _, trunc, _ = env.step(actions[i % len(actions)])
            if trunc:
                env.reset()

    H = env.H_true
    sub = [1, 5, 9, 12]

    def batched(n: int) -> None:
        done = 0
        while done < n:
            subset_se(H, H, sub)
            done += H.shape[0]

    ex_env = MuMimoEnv(cfg)
    obs, _ = ex_env.reset(seed=1)
    sched = ExhaustiveScheduler()

    def exhaustive(n: int) -> None:
        nonlocal obs
        for _ in range(n):
            obs, _, _, trunc, _ = ex_env.step_index(sched.select(obs, ex_env))
            if trunc:
                obs, _ = ex_env.reset()

    load = os.getloadavg()[0]
    r_env = _rate(env_steps, 4000)
    r_batch = _rate(batched, 40000)
    r_ex = _rate(exhaustive, 300)
    print(f"CPU cores: {os.cpu_count()}, 1-min load average at start: {load:.2f}")
    print(f"{'measure':44s} {'TTIs/s':>10s} {'target':>8s}  ratio")
    for name, rate, target in [
        ("env.step, 16x16 ZF, one 4-user subset", r_env, 2000),
        ("batched physical layer (subset_se, 400 TTIs)", r_batch, 2000),
        ("exhaustive scheduler (N=2516 subsets) + step", r_ex, 100),
    ]:
        print(f"{name:44s} {rate:10.0f} {target:8d}  {rate / target:5.2f}x {'met' if rate >= target else 'MISSED'}")


if __name__ == "__main__":
    main()
