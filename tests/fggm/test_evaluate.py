"""Evaluation loop: identical channels across schedulers, forged CSI, results file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fggm.config import EnvConfig
from fggm.evaluate import evaluate_schedulers, run_scheduler, write_results
from fggm.schedulers import RoundRobinScheduler, make_scheduler

CFG = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2, episode_length=25)


def test_rows_have_the_contract_keys_and_consistent_numbers() -> None:
    rows = evaluate_schedulers(CFG, [make_scheduler(n) for n in ("round-robin", "greedy", "exhaustive")], ttis=60, seed=2)
    for r in rows:
        assert {"scheduler", "mean_reward", "sum_se", "jain", "per_user_throughput", "ttis", "seed"} <= set(r)
        assert r["ttis"] == 60 and r["seed"] == 2 and len(r["per_user_throughput"]) == 4
        assert r["sum_se"] == pytest.approx(sum(r["per_user_throughput"]))
        assert 0.25 <= r["jain"] <= 1.0
        assert r["mean_reward"] == pytest.approx(r["mean_reward_se"] + r["mean_reward_jain"])
        assert len(r["episode_user_throughput"]) == 3  # 25 + 25 + 10 TTIs
    rr, greedy, exh = rows
    assert sum(rr["scheduled_rate"]) == pytest.approx(2.0) and rr["scheduled_rate"] == pytest.approx([0.5] * 4, abs=0.05)
    assert greedy["sum_se"] > rr["sum_se"] and exh["mean_reward"] >= rr["mean_reward"] - 0.05


def test_same_seed_same_channels_for_every_scheduler() -> None:
    a = run_scheduler(CFG, RoundRobinScheduler(), ttis=30, seed=5)
    b = run_scheduler(CFG, RoundRobinScheduler(), ttis=30, seed=5)
    c = run_scheduler(CFG, RoundRobinScheduler(), ttis=30, seed=6)
    assert a["per_user_throughput"] == b["per_user_throughput"] != c["per_user_throughput"]


def test_forged_reports_change_physical_rates() -> None:
    honest = run_scheduler(CFG, RoundRobinScheduler(), ttis=50, seed=1)
    forged = {0: np.full(4, 3.0 + 0j)}
    attacked = run_scheduler(CFG, RoundRobinScheduler(), ttis=50, seed=1, forged=forged)
    assert attacked["forged_users"] == [0]
    # round robin schedules the same users, so only the ZF filters differ: users sharing TTIs with
    # the forger lose rate through the interference its wrong report leaves
    assert attacked["scheduled_rate"] == honest["scheduled_rate"]
    assert attacked["per_user_throughput"][1] < honest["per_user_throughput"][1]


def test_write_results(tmp_path) -> None:
    path = write_results([{"scheduler": "pf", "mean_reward": 1.0}], tmp_path / "x", extra={"note": 1})
    data = json.loads(path.read_text())
    assert data["rows"][0]["scheduler"] == "pf" and data["note"] == 1
