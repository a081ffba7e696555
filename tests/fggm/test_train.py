"""SAC training smoke run on the tiny config, checkpoint save/load, size checks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fggm.config import ConfigError, EnvConfig, FggmConfig
from fggm.env import MuMimoEnv
from fggm.schedulers import PolicyScheduler
from fggm.train import load_scheduler, save_checkpoint, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    manifest = train(FggmConfig.from_file("configs/tiny.yaml"), out, steps=300, seed=3, progress=False, final_eval=False)
    return out, manifest


def _observations(cfg: EnvConfig, n: int = 20) -> np.ndarray:
    env = MuMimoEnv(cfg)
    obs, _ = env.reset(seed=11)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
    return np.stack(out)


def test_training_writes_everything(tiny_run) -> None:
    out, manifest = tiny_run
    for name in ("sac.zip", "vecnormalize.pkl", "manifest.json", "progress.csv", "training_curve.png"):
        assert (out / name).is_file(), name
    assert manifest["steps"] == 300 and manifest["seed"] == 3
    assert manifest["sac"]["train_freq"] == 4 and manifest["sac"]["norm_reward"] is False
    assert {"torch", "stable_baselines3", "gymnasium"} <= set(manifest["versions"])
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [int(r["step"]) for r in rows] == [100, 200, 300]
    assert json.loads((out / "manifest.json").read_text())["config"]["env"]["num_users"] == 4


def test_save_load_gives_identical_actions(tiny_run, tmp_path) -> None:
    out, _ = tiny_run
    model, vecnorm, cfg = load_scheduler(out)
    assert cfg.num_users == 4 and not vecnorm.training
    assert np.any(vecnorm.obs_rms.mean != 0)  # the normaliser's running statistics were learned and saved
    obs = _observations(cfg)
    sched = PolicyScheduler(model, vecnorm)
    a1 = np.stack([sched.action(o) for o in obs])
    # a second save/load round trip reproduces the actions exactly
    save_checkpoint(model, vecnorm, tmp_path)
    shutil.copy(out / "manifest.json", tmp_path / "manifest.json")
    model2, vecnorm2, _ = load_scheduler(tmp_path)
    a2 = np.stack([PolicyScheduler(model2, vecnorm2).action(o) for o in obs])
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(vecnorm.obs_rms.var, vecnorm2.obs_rms.var)
    # the deterministic action is tanh(actor mean) of the clipped, normalised observation
    x = np.clip((obs - vecnorm.obs_rms.mean) / np.sqrt(vecnorm.obs_rms.var + vecnorm.epsilon), -10, 10)
    with torch.no_grad():
        mu = model.actor.mu(model.actor.latent_pi(torch.as_tensor(x, dtype=torch.float32)))
    np.testing.assert_allclose(a1, torch.tanh(mu).numpy(), atol=1e-5)
    # optimiser moments are not shipped, yet SAC.load restores a trainable model
    assert model.actor.optimizer.state_dict()["state"] == {}


def test_mismatched_sizes_give_one_clear_error(tiny_run, tmp_path) -> None:
    out, _ = tiny_run
    with pytest.raises(ConfigError, match="num_users=4 but the environment has num_users=6"):
        load_scheduler(out, EnvConfig(num_antennas=4, num_users=6, max_scheduled=2))
    with pytest.raises(ConfigError, match="missing"):
        load_scheduler(tmp_path)


def test_shipped_checkpoint_loads_and_acts() -> None:
    model, vecnorm, cfg = load_scheduler("data/schedulers/smart16", EnvConfig())
    assert cfg.obs_dim == 544 and vecnorm.obs_rms.mean.shape == (544,)
    manifest = json.loads(Path("data/schedulers/smart16/manifest.json").read_text())
    assert manifest["config"]["train"]["net_arch"] == [512, 512] and "final_evaluation" in manifest
    obs = _observations(cfg, n=10)
    actions = np.stack([PolicyScheduler(model, vecnorm).action(o) for o in obs])
    assert np.all(np.abs(actions) <= 1.0) and len(np.unique(actions)) > 1  # the policy reacts to the channels
