"""The attacker's view reproduces SB3's deterministic SAC actions exactly."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from fggm import bounds
from fggm.policy import extract_policy, load_attacker_view, view_to_action


class _ToyEnv(gym.Env):
    """Box observations on very different scales; reward prefers actions near a target."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._rng = np.random.default_rng(0)
        self._t = 0

    def _obs(self) -> np.ndarray:
        scales = np.array([1.0, 10.0, 0.1, 5.0, 100.0, 2.0])
        return (self._rng.normal(size=6) * scales + np.arange(6)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._o = self._obs()
        return self._o, {}

    def step(self, action):
        reward = -float((action[0] - np.tanh(self._o[0])) ** 2)
        self._t += 1
        self._o = self._obs()
        return self._o, reward, False, self._t >= 20, {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    venv = VecNormalize(DummyVecEnv([_ToyEnv]), norm_obs=True, norm_reward=False, clip_obs=3.0)
    model = SAC("MlpPolicy", venv, learning_starts=20, batch_size=16, buffer_size=500,
                policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu")
    model.learn(total_timesteps=60)
    d = tmp_path_factory.mktemp("sched")
    model.save(d / "model.zip")
    venv.save(str(d / "vecnormalize.pkl"))
    return model, venv, d


def _raw_obs(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    scales = np.array([1.0, 10.0, 0.1, 5.0, 100.0, 2.0])
    obs = rng.normal(size=(n, 6)) * scales * 2 + np.arange(6)
    obs[:5] *= 50  # far outside the statistics: the clip must engage
    return obs.astype(np.float32)


def test_view_matches_sb3_predict(trained) -> None:
    model, venv, _ = trained
    view = extract_policy(model, venv)
    obs = _raw_obs(200)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    with torch.no_grad():
        got = view_to_action(view(torch.as_tensor(obs))).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the clip is part of the view: huge inputs are clipped, not extrapolated
    assert isinstance(view[1], torch.nn.Hardtanh) and view[1].max_val == 3.0


def test_load_from_directory_and_bounds_apply(trained) -> None:
    model, venv, d = trained
    view = load_attacker_view(d)
    obs = _raw_obs(50)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    with torch.no_grad():
        got = torch.tanh(view(torch.as_tensor(obs))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # every layer of the view is supported by the bounds, and the bounds hold on the actions
    x = torch.as_tensor(obs[:4])
    lb, ub = bounds.crown(view, x - 0.5, x + 0.5)
    with torch.no_grad():
        pts = x.unsqueeze(1) + (torch.rand(4, 500, 6) - 0.5)
        out = view(pts)
    assert bool((out >= lb.unsqueeze(1) - 1e-5).all() and (out <= ub.unsqueeze(1) + 1e-5).all())


def test_rejects_non_sac_and_mismatched_normaliser(trained) -> None:
    model, venv, _ = trained
    with pytest.raises(TypeError):
        extract_policy(object(), venv)

    class _Stats:
        obs_rms = type("R", (), {"mean": np.zeros(4), "var": np.ones(4)})()
        epsilon, clip_obs, norm_obs = 1e-8, 10.0, True

    with pytest.raises(ValueError, match="normaliser has 4 features"):
        extract_policy(model, _Stats())
    with pytest.raises(FileNotFoundError):
        load_attacker_view("/nonexistent/scheduler")
