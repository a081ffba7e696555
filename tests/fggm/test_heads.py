"""Action heads (subset / scores), the reward normaliser option, the share check and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fggm.config import ConfigError, EnvConfig, FggmConfig
from fggm.env import MuMimoEnv
from fggm.mimo.evaluate import run_scheduler, share_check
from fggm.mimo.heads import ActionHead, scores_to_subset
from fggm.mimo.schedulers import make_scheduler
from fggm.mimo.teacher import RuleScheduler, marginal_scores, teacher_scores

SC = EnvConfig(num_antennas=4, num_users=5, max_scheduled=2, episode_length=20, action_head="scores")


@pytest.mark.filterwarnings("ignore:.*infinity")
def test_scores_env_passes_check_env_and_has_one_action_per_user() -> None:
    env = MuMimoEnv(SC)
    check_env(env, skip_render_check=True)
    assert env.action_space.shape == (5,)
    assert MuMimoEnv(EnvConfig(num_antennas=4, num_users=5, max_scheduled=2)).action_space.shape == (1,)


@pytest.mark.parametrize("head", ["subset", "scores"])
@pytest.mark.parametrize("rule", ["top_s", "threshold"])
def test_every_action_maps_to_a_valid_subset(head: str, rule: str) -> None:
    cfg = EnvConfig(num_antennas=4, num_users=5, max_scheduled=3, episode_length=50, action_head=head, score_rule=rule)
    env = MuMimoEnv(cfg)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    sizes = set()
    for _ in range(50):
        a = rng.uniform(-1.2, 1.2, size=env.action_space.shape).astype(np.float32)  # also out of range: clipped
        _, _, _, _, info = env.step(a)
        sub = info["scheduled"]
        assert 1 <= len(sub) <= 3 and len(set(sub)) == len(sub) and all(0 <= u < 5 for u in sub)
        sizes.add(len(sub))
    if head == "scores" and rule == "top_s":
        assert sizes == {3}
    if head == "scores" and rule == "threshold":
        assert len(sizes) > 1  # the set size follows the scores


def test_scores_readout_rules() -> None:
    s = np.array([0.9, -0.2, 0.5, 0.1, -0.7])
    assert scores_to_subset(s, 2) == (0, 2)
    assert scores_to_subset(s, 4, rule="threshold") == (0, 2, 3)  # only the positive ones among the top 4
    assert scores_to_subset(-np.abs(s), 3, rule="threshold") == (3,)  # at least one: the best-scored user
    assert scores_to_subset(s, 3, rule="threshold", threshold=0.3) == (0, 2)
    # ties go to the better reported channel, never to the lower index
    assert scores_to_subset(np.ones(4), 1, tiebreak=[0.1, 0.2, 3.0, 0.4]) == (2,)
    picks = {scores_to_subset(np.ones(6), 1) for _ in range(3)}
    assert len(picks) == 1 and picks != {(0,)}
    with pytest.raises(ValueError, match="expects 5 scores"):
        ActionHead("scores", 5, 2).to_subset(np.zeros(3))


def test_scores_readout_is_permutation_equivariant() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        s, tb = rng.normal(size=7), rng.normal(size=7)
        perm = rng.permutation(7)
        got = scores_to_subset(s[perm], 3, tiebreak=tb[perm])
        assert tuple(sorted(int(perm[u]) for u in got)) == scores_to_subset(s, 3, tiebreak=tb)


def test_normaliser_option_changes_only_the_se_term() -> None:
    base = dict(num_antennas=4, num_users=4, max_scheduled=2, episode_length=10)
    env_all, env_top = MuMimoEnv(EnvConfig(**base)), MuMimoEnv(EnvConfig(**base, normaliser="top_s"))
    env_all.reset(seed=2)
    env_top.reset(seed=2)
    idx = env_all.codec.subset_to_index([0, 3])
    _, r_all, _, _, i_all = env_all.step_index(idx)
    _, r_top, _, _, i_top = env_top.step_index(idx)
    su = i_all["su_se_true"]
    np.testing.assert_allclose(i_all["se"], i_top["se"])
    assert i_all["reward_se"] == pytest.approx(5.0 * i_all["se"].sum() / su.sum())
    assert i_top["reward_se"] == pytest.approx(5.0 * i_top["se"].sum() / np.sort(su)[-2:].sum())
    assert i_all["reward_jain"] == pytest.approx(i_top["reward_jain"])
    assert r_top > r_all  # the top-S normaliser is smaller, so the SE term is larger


def test_rule_teacher_targets_agree_with_the_rule() -> None:
    cfg = EnvConfig(num_antennas=4, num_users=6, max_scheduled=2, episode_length=30)
    env = MuMimoEnv(cfg)
    obs, _ = env.reset(seed=4)
    rule = RuleScheduler()
    for _ in range(25):
        idx = rule.select(obs, env)
        y = teacher_scores(obs, cfg)
        assert set(np.flatnonzero(y > 0)) == set(env.codec.index_to_subset(idx))
        obs, *_ = env.step_index(idx)
    # a user far behind in cumulative SE gets a fairness bonus
    o = np.zeros(cfg.obs_dim)
    o[:6] = 2.0
    o[6:12] = [10, 10, 10, 10, 10, 1]
    assert int(np.argmax(marginal_scores(o, cfg))) == 5


def test_share_check_flags_index_bias() -> None:
    cfg = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2, episode_length=20)
    rr = run_scheduler(cfg, make_scheduler("round-robin"), 40, seed=1)
    assert rr["scheduled_share"] == rr["scheduled_rate"] == [0.5] * 4
    assert rr["share_within_tolerance"] and rr["share_max_rel_dev"] == 0.0
    biased = share_check(np.array([0.1, 0.2, 0.3, 0.4]))
    assert not biased["share_within_tolerance"] and biased["share_worst_user"] in (0, 3)
    assert biased["share_index_corr"] == pytest.approx(1.0)


@pytest.mark.parametrize("env, msg", [
    ({"action_head": "knn"}, "unknown action_head"),
    ({"score_rule": "top3"}, "unknown score_rule"),
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"normaliser": "some"}, "unknown normaliser"),
])
def test_bad_head_configs_give_one_clear_error(env: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        FggmConfig.from_dict({"env": {"num_antennas": 4, "num_users": 4, "max_scheduled": 2, **env}})


@pytest.mark.parametrize("train, msg", [
    ({"bc_states": 100}, "needs env.action_head: scores"),
    ({"ent_coef": "automatic"}, "ent_coef"),
    ({"ent_coef": -0.1}, "ent_coef"),
    ({"bc_epsilon": 2.0}, "bc_epsilon"),
    ({"freeze_normaliser": True}, "freeze_normaliser needs a BC warm start"),
])
def test_bad_training_configs_give_one_clear_error(train: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        FggmConfig.from_dict({"env": {"num_antennas": 4, "num_users": 4, "max_scheduled": 2}, "train": train})


def test_shipped_smart16_keeps_its_numbers() -> None:
    """The faithful SMART victim still loads as the subset head with the `all` normaliser, and its
    evaluation is unchanged (reference values measured with the code before the v2 heads existed)."""
    from fggm.schedulers import PolicyScheduler
    from fggm.train import load_scheduler

    model, vecnorm, cfg = load_scheduler("data/schedulers/smart16", EnvConfig())
    assert cfg.action_head == "subset" and cfg.normaliser == "all" and model.action_space.shape == (1,)
    row = run_scheduler(cfg, PolicyScheduler(model, vecnorm), 60, seed=7)
    assert row["mean_reward"] == pytest.approx(1.9599809734134201, rel=1e-6)
    assert row["sum_se"] == pytest.approx(29.27123930300165, rel=1e-6)
    assert run_scheduler(cfg, make_scheduler("exhaustive"), 60, seed=7)["mean_reward"] == pytest.approx(1.9109789319086503, rel=1e-9)
