"""Train the knapsack solver (Stable-Baselines3 SAC inside ``VecNormalize``) and load it back.

A checkpoint directory holds ``sac.zip`` (``SAC.load``-able; no replay buffer, no Adam moments,
the target critic stored as the critic), ``vecnormalize.pkl`` (the observation normaliser),
``manifest.json`` (config, seed, versions, steps, wall time, final evaluation), ``progress.csv``
and ``training_curve.png``.  The compact writer is :func:`fggm.mimo.train.save_checkpoint`,
imported from the MU-MIMO package for now (it is SB3-generic).

With the ``proto`` head, training runs :class:`KnnSAC`: the action executed and stored in the
replay buffer is the grid point the critic picks among the ``knn_k`` nearest neighbours of the
actor's (stochastic) proto-action, as in nco-knapsack; the observation normaliser is updated
only during the random warm-up and then frozen.

Example:
    >>> # manifest = train(KnapsackConfig.from_file("configs/knapsack10.yaml"), "runs/knapsack10")
    >>> # model, vecnorm, cfg = load_solver("runs/knapsack10")
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import SAC

from fggm.knapsack.config import KnapsackConfig, KnapsackConfigError, KnapsackEnvConfig
from fggm.knapsack.env import KnapsackEnv, ProtoGrid
from fggm.training_log import TrainingLog

__all__ = ["KnnSAC", "train", "load_solver", "final_evaluation", "MODEL_FILE", "NORM_FILE", "MANIFEST_FILE",
           "FORMAT"]

MODEL_FILE = "sac.zip"
NORM_FILE = "vecnormalize.pkl"
MANIFEST_FILE = "manifest.json"
FORMAT = "fggm-knapsack-solver/1"


class KnnSAC(SAC):
    """SAC whose executed (and stored) action is the critic's pick among the ``k`` grid points
    nearest the sampled proto-action; plain SAC when ``knn_grid`` is ``None``.

    Example:
        >>> # KnnSAC("MlpPolicy", venv, knn_grid=ProtoGrid(cfg))
    """

    def __init__(self, *args: Any, knn_grid: ProtoGrid | None = None, **kwargs: Any) -> None:
        self.knn_grid = knn_grid
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["knn_grid"]

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        if self.knn_grid is None:
            return action, buffer_action
        from fggm.knapsack.solvers import rerank

        idx = rerank(self.knn_grid, self.critic, self._last_obs, buffer_action)
        point = self.knn_grid.points[idx].copy()
        return point, point.copy()


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint.

    Example:
        >>> "stable_baselines3" in versions()
        True
    """
    import gymnasium
    import stable_baselines3
    import torch

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "gymnasium": gymnasium.__version__, "stable_baselines3": stable_baselines3.__version__}


def _venv(cfg: KnapsackEnvConfig, n_envs: int, seed: int) -> Any:
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: Monitor(KnapsackEnv(cfg)) for _ in range(n_envs)])
    venv.seed(seed)
    return venv


def load_solver(path: str | Path) -> tuple[Any, Any, KnapsackConfig]:
    """``(SAC model, VecNormalize in evaluation mode, KnapsackConfig)`` from a checkpoint directory.

    Example:
        >>> # model, vecnorm, cfg = load_solver("data/knapsack/solver10")
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    d = Path(path)
    for name in (MODEL_FILE, NORM_FILE, MANIFEST_FILE):
        if not (d / name).is_file():
            raise KnapsackConfigError(f"{d} is not a knapsack solver checkpoint: missing {name}")
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    if manifest.get("format") != FORMAT:
        raise KnapsackConfigError(f"{d} is not a knapsack solver checkpoint (format {manifest.get('format')!r})")
    cfg = KnapsackConfig.from_dict(manifest["config"])
    model = SAC.load(d / MODEL_FILE, device="cpu")
    if model.observation_space.shape != (cfg.env.obs_dim,) or model.action_space.shape != (cfg.env.action_dim,):
        raise KnapsackConfigError(f"checkpoint {d}: policy spaces {model.observation_space.shape} -> "
                                  f"{model.action_space.shape} do not fit its environment config")
    vecnorm = VecNormalize.load(str(d / NORM_FILE), DummyVecEnv([lambda: KnapsackEnv(cfg.env)]))
    vecnorm.training, vecnorm.norm_reward = False, False
    return model, vecnorm, cfg


def _validate(model: Any, vecnorm: Any, cfg: KnapsackEnvConfig, instances: int, seed: int) -> float:
    from fggm.knapsack.evaluate import evaluate_solvers
    from fggm.knapsack.solvers import PolicySolver

    return float(evaluate_solvers(cfg, [PolicySolver(model, vecnorm, cfg)], instances, seed)[0]["vs_optimum"])


def train(config: KnapsackConfig, out_dir: str | Path, steps: int | None = None, seed: int | None = None,
          progress: bool = True, final_eval: bool = True) -> dict[str, Any]:
    """Train SAC on :class:`KnapsackEnv`; write checkpoint, CSV log, curve and manifest; return the manifest.

    The checkpoint kept is the best by periodic validation (share of the exact optimum on
    instances from seed ``eval_seed + 1``; the final evaluation uses ``eval_seed``).

    Example:
        >>> # train(KnapsackConfig.from_dict({"train": {"total_steps": 300}}), "runs/knap-tiny")
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecNormalize

    from fggm.mimo.train import save_checkpoint  # SB3-generic writer (see the module docstring)

    tc, ec = config.train, config.env
    steps = int(steps if steps is not None else tc.total_steps)
    seed = int(seed if seed is not None else tc.seed)
    if steps < 1:
        raise KnapsackConfigError("steps must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tc.torch_threads)
    vecnorm = VecNormalize(_venv(ec, tc.n_envs, seed), norm_obs=True, norm_reward=False, clip_obs=tc.clip_obs,
                           gamma=tc.gamma)
    model = KnnSAC("MlpPolicy", vecnorm, knn_grid=ProtoGrid(ec) if ec.head == "proto" else None,
                   learning_rate=tc.learning_rate, buffer_size=tc.buffer_size, batch_size=tc.batch_size,
                   gamma=tc.gamma, tau=tc.tau, train_freq=tc.train_freq, gradient_steps=tc.gradient_steps,
                   learning_starts=min(tc.learning_starts, max(steps - 1, 0)),
                   policy_kwargs={"net_arch": list(tc.net_arch)}, seed=seed, device="cpu", verbose=0)
    val_seed, val_n = tc.eval_seed + 1, min(tc.eval_instances, 1000)
    t0 = time.time()
    state: dict[str, Any] = {"best": -np.inf, "best_step": 0, "stopped": False}

    def manifest(steps_done: int, complete: bool) -> dict[str, Any]:
        m = {"format": FORMAT, "complete": complete, "config": config.to_dict(), "seed": seed,
             "steps": int(steps_done), "steps_requested": steps, "stopped_by_wall_clock": state["stopped"],
             "checkpoint_step": state["best_step"],
             "checkpoint_val_vs_optimum": None if not np.isfinite(state["best"]) else state["best"],
             "validation": {"instances": val_n, "seed": val_seed}, "wall_time_s": round(time.time() - t0, 1),
             "versions": versions(), "head": ec.head,
             "files": {"model": MODEL_FILE, "normalizer": NORM_FILE, "log": "progress.csv",
                       "curve": "training_curve.png"},
             "storage": "SB3 zip without replay buffer or Adam moments; target critic stored as the critic"}
        (out / MANIFEST_FILE).write_text(json.dumps(m, indent=2))
        return m

    class _Logger(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.log = TrainingLog(out / "progress.csv", steps=steps, window=tc.log_interval, t0=t0,
                                   progress=progress, desc=f"training SAC ({ec.head} head)")

        def _on_step(self) -> bool:
            self.log.add_rewards(vecnorm.get_original_reward())
            n = self.num_timesteps
            if tc.freeze_normaliser and vecnorm.training and n >= model.learning_starts:
                vecnorm.training = False  # statistics from the random warm-up only
            self.log.advance(self.training_env.num_envs)
            if n % tc.log_interval < self.training_env.num_envs or n >= steps:
                val = ""
                if n > model.learning_starts:
                    was = vecnorm.training
                    vecnorm.training = False
                    score = _validate(model, vecnorm, ec, val_n, val_seed)
                    vecnorm.training = was
                    val = f"{score:.5f}"
                    if score > state["best"]:
                        state["best"], state["best_step"] = score, n
                        save_checkpoint(model, vecnorm, out)
                        manifest(n, complete=False)
                self.log.row(n, val, model.logger.name_to_value)
            if tc.max_wall_s is not None and time.time() - t0 > tc.max_wall_s:
                state["stopped"] = True
                return False
            return True

        def _on_training_end(self) -> None:
            self.log.close()

    model.learn(total_timesteps=steps, callback=_Logger(), progress_bar=False)
    if state["best_step"] == 0:  # never validated (very short run): keep the final weights
        save_checkpoint(model, vecnorm, out)
        state["best_step"] = int(model.num_timesteps)
    m = manifest(int(model.num_timesteps), complete=True)
    from fggm.plots import plot_training_curve

    plot_training_curve(out / "progress.csv", out / "training_curve.png")
    if final_eval:
        m["final_evaluation"] = final_evaluation(out, tc.eval_instances, tc.eval_seed)
        (out / MANIFEST_FILE).write_text(json.dumps(m, indent=2))
    return m


def final_evaluation(ckpt_dir: str | Path, instances: int, seed: int) -> dict[str, Any]:
    """The saved checkpoint and every baseline on unseen instances (seed ``seed``).

    Example:
        >>> # final_evaluation("runs/knapsack10", 2000, 12345)["results"]["sac"]["vs_optimum"]
    """
    from fggm.knapsack.evaluate import evaluate_solvers
    from fggm.knapsack.solvers import BASELINES, PolicySolver, make_solver

    model, vecnorm, cfg = load_solver(ckpt_dir)
    solvers = [PolicySolver(model, vecnorm, cfg.env)] + [make_solver(b, seed) for b in BASELINES]
    rows = evaluate_solvers(cfg.env, solvers, instances, seed)
    return {"instances": instances, "seed": seed,
            "results": {r["solver"]: {k: r[k] for k in ("mean_value", "vs_optimum", "feasible_rate")} for r in rows}}
