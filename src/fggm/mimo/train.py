"""Train the DRL scheduler (Stable-Baselines3 SAC inside ``VecNormalize``) and load it back.

A checkpoint directory holds ``sac.zip`` (``SAC.load``-able, no replay buffer, optimiser moments
and the separate target critic dropped to keep it small, see :func:`save_checkpoint`), ``vecnormalize.pkl`` (the observation normaliser's running statistics)
and ``manifest.json`` (config, seed, versions, steps, wall time, final evaluation). Training also
writes ``progress.csv`` and ``training_curve.png``.

Example:
    >>> # from fggm.mimo.config import FggmConfig
    >>> # manifest = train(FggmConfig.from_file("configs/tiny.yaml"), "runs/tiny")
    >>> # model, vecnorm, env_cfg = load_scheduler("runs/tiny")
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fggm.mimo.config import ConfigError, EnvConfig, FggmConfig, env_config_from_dict
from fggm.mimo.env import MuMimoEnv, check_sizes
from fggm.mimo.heads import ActionHead
from fggm.training_log import TrainingLog

MODEL_FILE = "sac.zip"
NORM_FILE = "vecnormalize.pkl"
MANIFEST_FILE = "manifest.json"
FORMAT = "fggm-sac-scheduler/2"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint.

    Example:
        >>> "stable_baselines3" in versions()
        True
    """
    import gymnasium
    import stable_baselines3
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }


def make_vec_env(env_config: EnvConfig, n_envs: int, seed: int) -> Any:
    """``DummyVecEnv`` of monitored :class:`MuMimoEnv` copies, seeded ``seed, seed+1, ...``.

    Example:
        >>> v = make_vec_env(EnvConfig(num_antennas=4, num_users=4, max_scheduled=2), 1, 0)
        >>> v.observation_space.shape
        (40,)
    """
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: Monitor(MuMimoEnv(env_config)) for _ in range(n_envs)])
    venv.seed(seed)
    return venv


def _strip_optimizer_state(model: Any) -> None:
    """Replace the optimisers by fresh ones (same class and settings) so their moments are not saved."""
    for owner in (model.actor, model.critic):
        opt = owner.optimizer
        owner.optimizer = type(opt)(opt.param_groups[0]["params"], **{k: v for k, v in opt.defaults.items()})
        owner.optimizer.load_state_dict({"state": {}, "param_groups": opt.state_dict()["param_groups"]})


def save_checkpoint(model: Any, vecnormalize: Any, out_dir: str | Path, compact: bool = True) -> None:
    """Write ``sac.zip`` + ``vecnormalize.pkl``.

    ``compact`` (default) keeps the file small without breaking ``SAC.load``: the Adam moments are
    dropped (training would resume with fresh ones) and the Polyak target critic is stored as a
    copy of the critic (shared storage, written once). The actor, and so every action, is unchanged.

    Example:
        >>> # save_checkpoint(model, vecnorm, "data/schedulers/mine")
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if compact:
        saved = (model.actor.optimizer, model.critic.optimizer)
        target_data = [p.data for p in model.critic_target.parameters()]
        try:
            _strip_optimizer_state(model)
            # the target critic is written as the critic itself: torch stores shared storages once
            for p_target, p_critic in zip(model.critic_target.parameters(), model.critic.parameters()):
                p_target.data = p_critic.data
            model.save(out / MODEL_FILE, exclude=["replay_buffer"])
        finally:
            model.actor.optimizer, model.critic.optimizer = saved
            for p_target, data in zip(model.critic_target.parameters(), target_data):
                p_target.data = data
    else:
        model.save(out / MODEL_FILE, exclude=["replay_buffer"])
    vecnormalize.save(str(out / NORM_FILE))


def load_scheduler(path: str | Path, env_config: EnvConfig | None = None) -> tuple[Any, Any, EnvConfig]:
    """Load ``(SAC model, VecNormalize, EnvConfig)`` from a checkpoint directory.

    The VecNormalize is set to evaluation mode (statistics frozen, rewards not normalised).
    With ``env_config`` given, a checkpoint of a different size raises :class:`ConfigError`.

    Example:
        >>> # model, vecnorm, cfg = load_scheduler("data/schedulers/smart16")
        >>> # obs = vecnorm.normalize_obs(raw_obs); action, _ = model.predict(obs, deterministic=True)
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from fggm.mimo.safe_load import load_sac, load_vecnormalize

    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"scheduler checkpoint folder not found: {d}")
    for name in (MODEL_FILE, NORM_FILE, MANIFEST_FILE):
        if not (d / name).is_file():
            raise ConfigError(f"{d} is not a scheduler checkpoint: missing {name}")
    ckpt_cfg = _manifest_env(d)
    if env_config is not None:
        for key in ("num_antennas", "num_users", "max_scheduled"):
            if getattr(env_config, key) != getattr(ckpt_cfg, key):
                raise ConfigError(
                    f"checkpoint {d} was trained for {key}={getattr(ckpt_cfg, key)} but the environment has "
                    f"{key}={getattr(env_config, key)}"
                )
    cfg = env_config or ckpt_cfg
    env = MuMimoEnv(cfg)
    # neither file is unpickled with the standard unpickler: see fggm.mimo.safe_load
    model = load_sac(d / MODEL_FILE, env.observation_space, env.action_space)
    check_sizes(cfg, int(model.observation_space.shape[0]), what=f"checkpoint {d}")
    vecnorm = load_vecnormalize(d / NORM_FILE, DummyVecEnv([lambda: MuMimoEnv(cfg)]))
    if vecnorm.obs_rms.mean.shape != (cfg.obs_dim,):
        raise ConfigError(f"normaliser in {d} has size {vecnorm.obs_rms.mean.shape[0]}, environment needs {cfg.obs_dim}")
    vecnorm.training = False
    vecnorm.norm_reward = False
    return model, vecnorm, cfg


def _policy_for(config: FggmConfig) -> tuple[Any, dict[str, Any]]:
    """SB3 policy class and ``policy_kwargs`` for the config's action head."""
    tc, env = config.train, config.env
    if env.action_head == "scores":
        from fggm.mimo.scores_policy import ScoresPolicy

        return ScoresPolicy, {"net_arch": list(tc.net_arch), "num_users": env.num_users, "num_antennas": env.num_antennas,
                              "score_rule": env.score_rule, "score_threshold": float(env.score_threshold)}
    return "MlpPolicy", {"net_arch": list(tc.net_arch)}


def _quick_eval(model: Any, vecnorm: Any, env_config: EnvConfig, ttis: int, seed: int) -> float:
    from fggm.mimo.evaluate import run_scheduler
    from fggm.mimo.schedulers import PolicyScheduler

    return float(run_scheduler(env_config, PolicyScheduler(model, vecnorm), ttis, seed)["mean_reward"])


def train(
    config: FggmConfig,
    out_dir: str | Path,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    final_eval: bool = True,
) -> dict[str, Any]:
    """Train SAC on :class:`MuMimoEnv`; write checkpoint, CSV log, curve PNG and manifest; return the manifest.

    The checkpoint kept is the best one by periodic evaluation on validation channels (seed
    ``eval_seed + 1``, distinct from the final evaluation seed ``eval_seed``).

    Example:
        >>> # train(FggmConfig.from_file("configs/tiny.yaml"), "runs/tiny", steps=300)
    """
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecNormalize

    tc = config.train
    steps = int(steps if steps is not None else tc.total_steps)
    seed = int(seed if seed is not None else tc.seed)
    if steps < 1:
        raise ConfigError("steps must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tc.torch_threads)
    venv = make_vec_env(config.env, tc.n_envs, seed)
    vecnorm = VecNormalize(venv, norm_obs=tc.norm_obs, norm_reward=tc.norm_reward, clip_obs=tc.clip_obs, gamma=tc.gamma)
    scores = config.env.action_head == "scores"
    policy, policy_kwargs = _policy_for(config)
    model = SAC(
        policy,
        vecnorm,
        learning_rate=tc.learning_rate,
        buffer_size=tc.buffer_size,
        batch_size=tc.batch_size,
        gamma=tc.gamma,
        tau=tc.tau,
        train_freq=tc.train_freq,
        gradient_steps=tc.gradient_steps,
        learning_starts=min(tc.learning_starts, max(steps - 1, 0)),
        policy_kwargs=policy_kwargs,
        ent_coef=tc.ent_coef,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    log_path = out / "progress.csv"
    val_seed = tc.eval_seed + 1
    val_ttis = tc.val_ttis or min(tc.eval_ttis, config.env.episode_length)
    train_seeds = replace(tc, seed=seed).train_seeds()
    t0 = time.time()
    state: dict[str, Any] = {"best": -np.inf, "best_step": 0, "saved": False}

    def _write_manifest(steps_done: int, complete: bool) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "complete": complete,
            "config": config.to_dict(),
            "action_head": config.env.action_head,
            "head": ActionHead.from_config(config.env).to_dict(),
            "seed": seed,
            "train_seeds": train_seeds,
            "validation_seeds": [val_seed],
            "steps": int(steps_done),
            "steps_requested": steps,
            "stopped_by_wall_clock": bool(state.get("stopped_early", False)),
            "checkpoint_step": state["best_step"],
            "checkpoint_val_reward": None if not np.isfinite(state["best"]) else state["best"],
            "validation": {"ttis": val_ttis, "seed": val_seed},
            "wall_time_s": round(time.time() - t0, 1),
            "versions": versions(),
            "obs_dim": config.env.obs_dim,
            "num_subsets": config.env.num_subsets,
            "sac": {"train_freq": tc.train_freq, "gradient_steps": tc.gradient_steps, "net_arch": list(tc.net_arch),
                    "gamma": tc.gamma, "norm_reward": tc.norm_reward, "n_envs": tc.n_envs, "batch_size": tc.batch_size,
                    "learning_rate": tc.learning_rate, "buffer_size": tc.buffer_size, "learning_starts": tc.learning_starts},
            "policy": "fggm.ScoresPolicy (shared per-user network)" if scores else "MlpPolicy",
            "user_pooled_normaliser": scores,
            "warm_start": warm_start,
            "files": {"model": MODEL_FILE, "normalizer": NORM_FILE, "log": "progress.csv", "curve": "training_curve.png"},
            "storage": "SB3 zip without replay buffer or Adam moments; target critic stored as the critic",
        }
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        return manifest

    warm_start: dict[str, Any] | None = None
    if scores and tc.bc_states > 0:
        from fggm.mimo.bc import behaviour_clone

        warm_start = behaviour_clone(model, vecnorm, replace(config, train=replace(tc, seed=seed)), progress=progress)
        vecnorm.training = False
        val_r = _quick_eval(model, vecnorm, config.env, val_ttis, val_seed)
        warm_start["val_reward"] = val_r
        state.update(best=val_r, best_step=0, saved=True)
        save_checkpoint(model, vecnorm, out)
        _write_manifest(0, complete=False)
    train_norm = not (scores and tc.freeze_normaliser)
    vecnorm.training = train_norm

    class _Logger(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.log = TrainingLog(log_path, steps=steps, window=tc.log_interval, t0=t0, progress=progress)
            if warm_start is not None:  # step 0: the behaviour-cloned policy before any SAC update
                self.log.warm_start_row(warm_start["val_reward"])

        def _on_training_start(self) -> None:
            if scores and tc.critic_warmup_steps > 0:
                model.actor.requires_grad_(False)  # the critic first learns the warm-started policy's values

        def _on_step(self) -> bool:
            self.log.add_rewards(vecnorm.get_original_reward())
            n = self.num_timesteps
            if scores and train_norm:
                from fggm.mimo.bc import pool_user_statistics

                pool_user_statistics(vecnorm.obs_rms, config.env.num_antennas, config.env.num_users)
            if (scores and tc.critic_warmup_steps > 0 and not state.get("actor_released")
                    and n >= model.learning_starts + tc.critic_warmup_steps):
                model.actor.requires_grad_(True)
                state["actor_released"] = n
            self.log.advance(self.training_env.num_envs)
            if n % tc.log_interval < self.training_env.num_envs or n >= steps:
                val = ""
                if n > model.learning_starts:
                    vecnorm.training = False
                    val_r = _quick_eval(model, vecnorm, config.env, val_ttis, val_seed)
                    vecnorm.training = train_norm
                    val = f"{val_r:.5f}"
                    # ties (the deterministic policy unchanged, e.g. while the critic warms up) keep the later
                    # checkpoint: same actions, a critic trained longer
                    if val_r >= state["best"]:
                        state["best"], state["best_step"], state["saved"] = val_r, n, True
                        save_checkpoint(model, vecnorm, out)
                        _write_manifest(n, complete=False)
                self.log.row(n, val, model.logger.name_to_value)
            if tc.max_wall_s is not None and time.time() - t0 > tc.max_wall_s:
                state["stopped_early"] = True
                return False
            return True

        def _on_training_end(self) -> None:
            self.log.close()

    model.learn(total_timesteps=steps, callback=_Logger(), progress_bar=False)
    if not state["saved"]:  # never evaluated (very short run): keep the final weights
        save_checkpoint(model, vecnorm, out)
        state["best_step"] = int(model.num_timesteps)
    manifest = _write_manifest(int(model.num_timesteps), complete=True)
    from fggm.plots import plot_training_curve

    plot_training_curve(log_path, out / "training_curve.png")
    if final_eval:
        manifest["final_evaluation"] = final_evaluation(out, config.env, tc.eval_ttis, tc.eval_seed, progress=progress)
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def final_evaluation(ckpt_dir: str | Path, env_config: EnvConfig, ttis: int, seed: int, progress: bool = False) -> dict[str, Any]:
    """Evaluate the saved checkpoint and every baseline on unseen channels (seed ``seed``).

    Example:
        >>> # final_evaluation("runs/tiny", EnvConfig(...), ttis=800, seed=12345)
    """
    from fggm.mimo.evaluate import evaluate_schedulers
    from fggm.mimo.schedulers import BASELINES, PolicyScheduler, make_scheduler

    model, vecnorm, _ = load_scheduler(ckpt_dir, env_config)
    scheds = [PolicyScheduler(model, vecnorm, name="sac")] + [make_scheduler(b, seed) for b in BASELINES]
    rows = evaluate_schedulers(env_config, scheds, ttis, seed, progress=progress)
    summary = {r["scheduler"]: {k: r[k] for k in ("mean_reward", "sum_se", "jain", "share_max_rel_dev")} for r in rows}
    best = summary["exhaustive"]["mean_reward"]
    summary["sac_vs_exhaustive"] = summary["sac"]["mean_reward"] / best if best else float("nan")
    return {"ttis": ttis, "seed": seed, "results": summary}


def load_config_for_dir(path: str | Path) -> EnvConfig:
    """Env config stored in a checkpoint's manifest.

    Example:
        >>> # load_config_for_dir("data/schedulers/smart16").num_users
    """
    d = Path(path)
    if not (d / MANIFEST_FILE).is_file():
        raise ConfigError(f"{d} is not a scheduler checkpoint: missing {MANIFEST_FILE}")
    return _manifest_env(d)


def _read_manifest(d: Path) -> dict[str, Any]:
    """``d``'s manifest as a dict; an unreadable one is one :class:`ConfigError` naming the file."""
    try:
        data = json.loads((d / MANIFEST_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{d / MANIFEST_FILE} is not a scheduler manifest ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{d / MANIFEST_FILE} is not a scheduler manifest (not a JSON object)")
    return data


def _manifest_env(d: Path) -> EnvConfig:
    """The env config in ``d``'s manifest; an unreadable manifest is one :class:`ConfigError`."""
    try:
        return env_config_from_dict(_read_manifest(d)["config"]["env"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{d / MANIFEST_FILE} is not a scheduler manifest ({type(exc).__name__})") from None


def seen_seeds(path: str | Path) -> dict[str, list[int]]:
    """Channel seeds a checkpoint has seen: ``{"train": [...], "validation": [...]}``.

    Read from the manifest's ``train_seeds`` / ``validation_seeds``; a manifest written before they
    were recorded gets them from its config (SAC environments ``seed .. seed + n_envs - 1``, the
    validation seed ``eval_seed + 1``).

    Example:
        >>> seen_seeds("data/schedulers/smart16")      # doctest: +SKIP
        {'train': [0, 1, 2, 3], 'validation': [12346]}
    """
    d = Path(path)
    if not (d / MANIFEST_FILE).is_file():
        raise ConfigError(f"{d} is not a scheduler checkpoint: missing {MANIFEST_FILE}")
    m = _read_manifest(d)
    tr = (m.get("config") or {}).get("train") or {}
    if "train_seeds" in m:
        train_s = [int(x) for x in m["train_seeds"]]
    else:
        seed = int(m.get("seed", tr.get("seed", 0)))
        train_s = list(range(seed, seed + int(tr.get("n_envs", 1))))
    if "validation_seeds" in m:
        val_s = [int(x) for x in m["validation_seeds"]]
    else:
        v = (m.get("validation") or {}).get("seed")
        val_s = [int(v)] if v is not None else [int(tr.get("eval_seed", 12_345)) + 1]
    return {"train": train_s, "validation": val_s}


def check_unseen(path: str | Path, eval_seeds: list[int] | tuple[int, ...]) -> list[int]:
    """Evaluation seeds that the checkpoint at ``path`` trained or was selected on (empty: all unseen).

    Example:
        >>> check_unseen("data/schedulers/smart16", [7, 0])   # doctest: +SKIP
        [0]
    """
    seen = seen_seeds(path)
    used = set(seen["train"]) | set(seen["validation"])
    return sorted(int(s) for s in eval_seeds if int(s) in used)
