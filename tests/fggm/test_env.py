"""Gymnasium environment: API check, observation layout, forged reports, reward, seeding, bad configs."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fggm.config import ChannelConfig, ConfigError, EnvConfig, FggmConfig
from fggm.env import MuMimoEnv, action_to_index, index_to_action, index_to_subset, observation_indices, subset_to_index
from fggm.mimo import jain, single_user_se, subset_se

TINY = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2, episode_length=30)


@pytest.mark.filterwarnings("ignore:.*infinity")
def test_check_env_passes() -> None:
    check_env(MuMimoEnv(TINY), skip_render_check=True)


def test_default_sizes_are_smart() -> None:
    env = MuMimoEnv()
    assert env.observation_space.shape == (544,) and env.codec.n == 2516
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]


def test_observation_layout_user_major() -> None:
    env = MuMimoEnv(EnvConfig(num_antennas=5, num_users=3, max_scheduled=2))
    obs, _ = env.reset(seed=0)
    H = env.reported_channel
    np.testing.assert_allclose(obs[:3], single_user_se(H), rtol=1e-6)
    np.testing.assert_array_equal(obs[3:6], 0.0)
    for k in range(3):
        ix = observation_indices(5, 3, k)
        np.testing.assert_allclose(obs[ix["re"]], H[:, k].real, rtol=1e-6)
        np.testing.assert_allclose(obs[ix["im"]], H[:, k].imag, rtol=1e-6)
        assert ix["su_se"][0] == k and ix["history"][0] == 3 + k


def test_report_override_changes_observation_not_physics() -> None:
    env = MuMimoEnv(TINY)
    env.reset(seed=5)
    forged = np.array([1 + 1j, 0, 2, -1j])
    env.report_override(1, forged)
    obs = env._obs()
    ix = observation_indices(4, 4, 1)
    np.testing.assert_allclose(obs[ix["re"]], forged.real)
    np.testing.assert_allclose(obs[ix["im"]], forged.imag)
    assert obs[1] == pytest.approx(np.log2(1 + np.sum(np.abs(forged) ** 2)), rel=1e-6)  # attacker-controlled SU-SE
    H_true = env.true_channel.copy()
    _, _, _, _, info = env.step_index(env.codec.subset_to_index([0, 1]))
    rep = H_true.copy()
    rep[:, 1] = forged
    np.testing.assert_allclose(info["se"], subset_se(H_true, rep, [0, 1]))
    assert not np.allclose(info["se"], info["predicted_se"])
    # the forged report persists on later TTIs and across resets; clearing restores the truth
    obs2, _ = env.reset(seed=6)
    np.testing.assert_allclose(obs2[ix["re"]], forged.real)
    env.report_override(1, None)
    np.testing.assert_allclose(env._obs()[ix["re"]], env.true_channel[:, 1].real, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        env.report_override(0, np.ones(3))
    with pytest.raises(ValueError):
        env.report_override(9, np.ones(4))


def test_reward_matches_definition_and_info() -> None:
    env = MuMimoEnv(TINY)
    env.reset(seed=1)
    cum = np.zeros(4)
    for idx in [3, 7, 2, 9]:
        H = env.true_channel.copy()
        _, r, term, trunc, info = env.step_index(idx)
        se = subset_se(H, H, env.codec.index_to_subset(idx))
        cum += se
        expected = 5.0 * se.sum() / single_user_se(H).sum() + 1.0 * jain(cum)
        assert r == pytest.approx(expected) == pytest.approx(info["reward_se"] + info["reward_jain"])
        assert info["scheduled"] == env.codec.index_to_subset(idx) and not term and not trunc
        np.testing.assert_allclose(info["cumulative_se"], cum)


def test_action_maps_to_nearest_subset() -> None:
    env = MuMimoEnv(TINY)
    env.reset(seed=0)
    for i in range(env.codec.n):
        _, _, _, _, info = env.step(np.array([env.codec.index_to_action(i)], dtype=np.float32))
        assert info["subset_index"] == i


def test_episode_truncates_and_seeds_reproduce() -> None:
    def rollout(seed: int) -> list[float]:
        env = MuMimoEnv(TINY)
        env.reset(seed=seed)
        rewards, trunc = [], False
        rng = np.random.default_rng(0)
        while not trunc:
            _, r, _, trunc, _ = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
            rewards.append(r)
        with pytest.raises(RuntimeError):
            env.step(np.zeros(1, dtype=np.float32))
        return rewards

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert len(a) == 30 and a == b and a != c


def test_module_level_codec_functions() -> None:
    assert index_to_subset(0) == (0,) and subset_to_index((0, 1)) == 16
    assert action_to_index(index_to_action(700)) == 700


@pytest.mark.parametrize(
    "env, msg",
    [
        ({"num_users": 3, "max_scheduled": 4, "num_antennas": 8}, "exceeds the number of users"),
        ({"num_users": 8, "max_scheduled": 4, "num_antennas": 2}, "zero-forcing needs M >= S"),
        ({"channel": {"snr_db_range": [20, 0]}}, "negative range"),
        ({"num_userz": 3}, "unknown key"),
    ],
)
def test_bad_configs_one_clear_error(env, msg) -> None:
    with pytest.raises(ConfigError, match=msg) as info:
        FggmConfig.from_dict({"env": env})
    assert "\n" not in str(info.value)


def test_config_round_trip(tmp_path) -> None:
    cfg = FggmConfig.from_file("configs/smart16.yaml")
    assert cfg.env.obs_dim == 544 and cfg.train.net_arch == (512, 512)
    again = FggmConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert EnvConfig(channel=ChannelConfig(model="correlated")).channel.model == "correlated"
