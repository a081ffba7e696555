"""Baseline schedulers: valid subsets, the exhaustive optimum, fairness behaviour."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fggm.config import EnvConfig
from fggm.env import MuMimoEnv
from fggm.schedulers import BASELINES, make_scheduler

CFG = EnvConfig(num_antennas=4, num_users=5, max_scheduled=2, episode_length=40)


@pytest.mark.parametrize("name", BASELINES)
def test_every_scheduler_returns_valid_subsets(name: str) -> None:
    env = MuMimoEnv(CFG)
    obs, _ = env.reset(seed=0)
    sched = make_scheduler(name, seed=1)
    sched.reset(env)
    trunc = False
    while not trunc:
        idx = sched.select(obs, env)
        assert isinstance(idx, int) and 0 <= idx < env.codec.n
        assert 1 <= len(env.codec.index_to_subset(idx)) <= CFG.max_scheduled
        obs, _, _, trunc, info = env.step_index(idx)
        sched.observe(info)


def test_exhaustive_is_the_myopic_optimum() -> None:
    env = MuMimoEnv(CFG)
    obs, _ = env.reset(seed=2)
    sched = make_scheduler("exhaustive")
    for _ in range(5):
        choice = sched.select(obs, env)
        rewards = []
        for i in range(env.codec.n):
            trial = copy.deepcopy(env)
            rewards.append(trial.step_index(i)[1])
        assert rewards[choice] == pytest.approx(max(rewards))
        obs, *_ = env.step_index(choice)


def test_round_robin_cycles_through_users() -> None:
    env = MuMimoEnv(CFG)
    obs, _ = env.reset(seed=0)
    rr = make_scheduler("round-robin")
    rr.reset(env)
    seen = [env.codec.index_to_subset(rr.select(obs, env)) for _ in range(5)]
    assert seen[:3] == [(0, 1), (2, 3), (0, 4)]
    assert {u for s in seen for u in s} == set(range(5))


def test_greedy_beats_best_single_user_and_pf_serves_everyone() -> None:
    env = MuMimoEnv(EnvConfig(num_antennas=8, num_users=8, max_scheduled=3, episode_length=200))
    obs, _ = env.reset(seed=4)
    greedy = make_scheduler("greedy")
    table = env.predicted_se_table().sum(axis=1)
    assert table[greedy.select(obs, env)] >= table[:8].max()
    pf = make_scheduler("pf")
    pf.reset(env)
    counts = np.zeros(8)
    trunc = False
    while not trunc:
        idx = pf.select(obs, env)
        obs, _, _, trunc, info = env.step_index(idx)
        pf.observe(info)
        counts[list(info["scheduled"])] += 1
    assert counts.min() > 0.1 * counts.max()


def test_unknown_scheduler() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("best")
