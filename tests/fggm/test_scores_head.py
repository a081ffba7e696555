"""The scores head end to end: equivariance, training smoke run with a BC warm start, plain SB3
loading, the attacker's view (Sequential, 1e-5, bounds), seed-overlap detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fggm.config import ConfigError, FggmConfig
from fggm.env import MuMimoEnv
from fggm.schedulers import PolicyScheduler
from fggm.train import check_unseen, load_scheduler, seen_seeds, train

M, K, S = 4, 4, 2
TINY_SCORES = {
    "env": {"num_antennas": M, "num_users": K, "max_scheduled": S, "episode_length": 50, "action_head": "scores",
            "score_rule": "threshold"},
    "train": {"total_steps": 300, "seed": 5, "net_arch": [16, 16], "buffer_size": 1000, "batch_size": 32,
              "learning_starts": 50, "train_freq": 4, "eval_ttis": 50, "log_interval": 100, "bc_states": 400,
              "bc_epochs": 3, "bc_dagger_rounds": 1, "bc_envs": 4, "bc_seed": 900, "critic_warmup_steps": 50,
              "ent_coef": "auto_0.05"},
}


@pytest.fixture(scope="module")
def scores_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scores")
    manifest = train(FggmConfig.from_dict(TINY_SCORES), out, progress=False, final_eval=False)
    return out, manifest


def _observations(cfg, n: int = 30, seed: int = 11) -> np.ndarray:
    env = MuMimoEnv(cfg)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32))
    return np.stack(out)


def _permute_users(obs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The observation of the same state with user perm[j] moved to position j."""
    su, hist = obs[:, :K], obs[:, K:2 * K]
    re = obs[:, 2 * K:2 * K + M * K].reshape(-1, K, M)
    im = obs[:, 2 * K + M * K:].reshape(-1, K, M)
    return np.concatenate([su[:, perm], hist[:, perm], re[:, perm].reshape(-1, K * M), im[:, perm].reshape(-1, K * M)], axis=1)


def test_training_writes_a_v2_manifest(scores_run) -> None:
    out, manifest = scores_run
    assert manifest["action_head"] == "scores" and manifest["format"] == "fggm-sac-scheduler/2"
    assert manifest["train_seeds"] == [5, 900, 901, 902, 903, 904, 905, 906, 907]  # SAC env 5, BC rollouts 900..907
    assert manifest["validation_seeds"] == [12346]
    ws = manifest["warm_start"]
    assert ws["states"] == 400 + 200 and len(ws["rounds"]) == 2 and ws["seeds"] == list(range(900, 908))
    assert json.loads((out / "manifest.json").read_text())["head"]["score_rule"] == "threshold"
    assert manifest["steps"] == 300


def test_plain_sb3_loading_reproduces_actions(scores_run) -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import fggm

    out, _ = scores_run
    model, vecnorm, cfg = load_scheduler(out)
    plain = SAC.load(out / "sac.zip", device="cpu")
    assert type(plain.policy) is fggm.ScoresPolicy and plain.policy.score_rule == "threshold"
    vn = VecNormalize.load(str(out / "vecnormalize.pkl"), DummyVecEnv([lambda: MuMimoEnv(cfg)]))
    obs = _observations(cfg)
    a1, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    a2, _ = plain.predict(vn.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == (len(obs), K) and np.all(np.abs(a1) <= 1)
    sched = PolicyScheduler(model, vecnorm)
    env = MuMimoEnv(cfg)
    env.reset(seed=0)
    for o in obs:
        sub = env.codec.index_to_subset(sched.select(o, env))
        assert 1 <= len(sub) <= S


def test_scheduler_is_permutation_equivariant(scores_run) -> None:
    out, _ = scores_run
    model, vecnorm, cfg = load_scheduler(out)
    # the normaliser's statistics are pooled over users, so normalising commutes with permuting users
    mean = np.asarray(vecnorm.obs_rms.mean)
    assert np.allclose(mean[:K], mean[0]) and np.allclose(mean[K:2 * K], mean[K])
    obs = _observations(cfg)
    rng = np.random.default_rng(2)
    for _ in range(3):
        perm = rng.permutation(K)
        a, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
        ap, _ = model.predict(vecnorm.normalize_obs(_permute_users(obs, perm)), deterministic=True)
        np.testing.assert_allclose(ap, a[:, perm], atol=1e-5)
        # the critic is invariant: the same state and actions in another user order give the same Q
        ob = torch.as_tensor(vecnorm.normalize_obs(obs))
        obp = torch.as_tensor(vecnorm.normalize_obs(_permute_users(obs, perm)))
        act = torch.as_tensor(a)
        with torch.no_grad():
            q = model.critic(ob, act)[0]
            qp = model.critic(obp, act[:, perm])[0]
        torch.testing.assert_close(q, qp, atol=1e-4, rtol=1e-5)


def test_attacker_view_is_a_bounded_sequential_reproducing_scores(scores_run) -> None:
    from fggm import bounds
    from fggm.policy import extract_policy, extract_scores_policy, load_attacker_view, view_to_action

    out, _ = scores_run
    model, vecnorm, cfg = load_scheduler(out)
    view = extract_scores_policy(model, vecnorm)
    assert isinstance(view, torch.nn.Sequential)
    assert all(isinstance(m, (bounds.Affine, torch.nn.Hardtanh, torch.nn.Linear, torch.nn.ReLU)) for m in view)
    obs = _observations(cfg, n=45)
    obs[:5] *= 40  # far outside the statistics: the clip must engage
    expected, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    with torch.no_grad():
        got = view_to_action(view(torch.as_tensor(obs))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # folded (one Linear per shared layer) is the same function
    with torch.no_grad():
        folded = view_to_action(extract_scores_policy(model, vecnorm, fold=True)(torch.as_tensor(obs))).numpy()
    np.testing.assert_allclose(folded, expected, atol=1e-5)
    # the loader picks the scores view from the directory
    with torch.no_grad():
        again = load_attacker_view(out)(torch.as_tensor(obs))
    np.testing.assert_allclose(torch.tanh(again).numpy(), expected, atol=1e-5)
    # CROWN bounds of every score hold on sampled points of a box
    x = torch.as_tensor(obs[5:9])
    lb, ub = bounds.crown(view, x - 0.3, x + 0.3)
    with torch.no_grad():
        pts = view(x.unsqueeze(1) + 0.6 * (torch.rand(4, 300, x.shape[1]) - 0.5))
    assert bool((pts >= lb.unsqueeze(1) - 1e-4).all() and (pts <= ub.unsqueeze(1) + 1e-4).all())
    # the subset-head view refuses a scores model with a clear message
    with pytest.raises(ValueError, match="scores"):
        extract_policy(model, vecnorm)


def test_seed_overlap_is_detected(scores_run, tmp_path: Path) -> None:
    from fggm.cli import app

    out, _ = scores_run
    assert seen_seeds(out) == {"train": [5, 900, 901, 902, 903, 904, 905, 906, 907], "validation": [12346]}
    assert check_unseen(out, [5, 6, 903, 12346]) == [5, 903, 12346]
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--scheduler", str(out), "--scheduler", "pf", "--ttis", "20", "--seed", "903",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "903" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "e" / "results.json").exists()
    res = runner.invoke(app, ["evaluate", "--scheduler", str(out), "--scheduler", "pf", "--ttis", "20", "--seed", "903",
                              "--allow-seen-seeds", "--out", str(tmp_path / "w")])
    assert res.exit_code == 0 and "warning" in res.output
    rows = json.loads((tmp_path / "w" / "results.json").read_text())["rows"]
    assert all(r["seen_seeds"] for r in rows)
    res = runner.invoke(app, ["evaluate", "--scheduler", str(out), "--scheduler", "round-robin", "--ttis", "60",
                              "--seed", "6", "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "ok" / "results.json").read_text())["rows"]
    keys = {"scheduler", "mean_reward", "sum_se", "jain", "per_user_throughput", "scheduled_share", "ttis", "seed"}
    for r in rows:
        assert keys <= set(r) and len(r["scheduled_share"]) == K and not r["seen_seeds"]
    assert rows[1]["scheduled_share"] == [0.5] * K and "share dev" in res.output
    # old manifests without train_seeds: derived from the config (the shipped smart16 trained on 0..3)
    assert seen_seeds("data/schedulers/smart16")["train"] == [0, 1, 2, 3]


def test_bad_scores_config_is_one_line_error(tmp_path: Path) -> None:
    from fggm.cli import app

    bad = json.loads(json.dumps(TINY_SCORES))
    bad["train"]["bc_states"] = -1
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(app, ["train", "--config", str(p), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.strip().startswith("error: ") and "bc_states" in res.output
    with pytest.raises(ConfigError, match="needs env.action_head: scores"):
        FggmConfig.from_dict({"env": {"num_antennas": 4, "num_users": 4, "max_scheduled": 2},
                              "train": {"critic_warmup_steps": 10}})


def test_shipped_v2_checkpoint() -> None:
    """data/schedulers/smart16-scores: plain SB3 loading, its manifest, the view to 1e-5, equivariance."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import fggm
    from fggm.config import EnvConfig
    from fggm.policy import load_attacker_view

    d = Path("data/schedulers/smart16-scores")
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["action_head"] == "scores" and manifest["config"]["env"]["score_rule"] == "top_s"
    train_seeds = set(manifest["train_seeds"])
    assert {3000, 3001, 3002, 3003} <= train_seeds and not train_seeds & {7, 2024, 12345, 101}
    assert (d / "sac.zip").stat().st_size < 1_000_000  # no replay buffer, no optimiser moments
    cfg = EnvConfig(**{k: v for k, v in manifest["config"]["env"].items() if k != "channel"})
    model = SAC.load(d / "sac.zip", device="cpu")
    assert isinstance(model.policy, fggm.ScoresPolicy) and isinstance(model.actor.features_extractor, fggm.UserFeatures)
    vecnorm = VecNormalize.load(str(d / "vecnormalize.pkl"), DummyVecEnv([lambda: MuMimoEnv(cfg)]))
    vecnorm.training = False
    env = MuMimoEnv(cfg)
    obs, _ = env.reset(seed=77)
    batch = []
    sched = PolicyScheduler(model, vecnorm)
    for _ in range(40):
        batch.append(obs)
        obs, *_ = env.step_index(sched.select(obs, env))
    batch = np.stack(batch)
    expected, _ = model.predict(vecnorm.normalize_obs(batch), deterministic=True)
    with torch.no_grad():
        got = torch.tanh(load_attacker_view(d)(torch.as_tensor(batch))).numpy()
    # float32: the view and SB3 round differently (SB3's own float32 scores are ~1.6e-5 from exact)
    np.testing.assert_allclose(got, expected, atol=5e-5)
    # float64: the view is exactly the policy's function (normaliser, clip, shared network)
    import copy

    from fggm.policy import extract_scores_policy

    exact_in = np.clip((batch.astype(np.float64) - vecnorm.obs_rms.mean) / np.sqrt(vecnorm.obs_rms.var + vecnorm.epsilon),
                       -vecnorm.clip_obs, vecnorm.clip_obs)
    actor64 = copy.deepcopy(model.actor).double()
    with torch.no_grad():
        ref = actor64.mu(actor64.latent_pi(actor64.features_extractor(torch.as_tensor(exact_in))))
        v64 = extract_scores_policy(model, vecnorm, dtype=torch.float64)(torch.as_tensor(batch, dtype=torch.float64))
    torch.testing.assert_close(v64, ref, atol=1e-9, rtol=0)
    perm = np.random.default_rng(0).permutation(16)
    M16 = 16
    su, hist = batch[:, :16], batch[:, 16:32]
    re, im = batch[:, 32:32 + 256].reshape(-1, 16, M16), batch[:, 288:].reshape(-1, 16, M16)
    permuted = np.concatenate([su[:, perm], hist[:, perm], re[:, perm].reshape(-1, 256), im[:, perm].reshape(-1, 256)], axis=1)
    ap, _ = model.predict(vecnorm.normalize_obs(permuted), deterministic=True)
    np.testing.assert_allclose(ap, expected[:, perm], atol=5e-5)  # float32: the user mean sums in another order
    with torch.no_grad():
        v64p = extract_scores_policy(model, vecnorm, dtype=torch.float64)(torch.as_tensor(permuted, dtype=torch.float64))
    torch.testing.assert_close(v64p, v64[:, perm], atol=1e-9, rtol=0)  # exactly equivariant
