"""Behaviour-cloning warm start of the scores head from the marginal-reward rule, and the
observation-statistics pooling that keeps the scheduler permutation-equivariant.

* :func:`collect_states` rolls out the teacher rule (:class:`fggm.mimo.teacher.RuleScheduler`)
  or, for DAgger rounds, the current student policy, on channel seeds given explicitly (they are
  training seeds and end up in the manifest's ``train_seeds``);
* :func:`clone_actor` regresses the actor's pre-tanh per-user means on the teacher's targets
  (:func:`fggm.mimo.teacher.teacher_scores`) in the normalised observation space;
* :func:`pool_user_statistics` replaces the VecNormalize running mean/variance of each per-user
  entry by its pooled value over users (SE, history, and each antenna's Re/Im), so normalising the
  observation commutes with permuting the users.

Example:
    >>> from fggm.mimo.config import EnvConfig
    >>> cfg = EnvConfig(num_antennas=2, num_users=3, max_scheduled=2, episode_length=5)
    >>> collect_states(cfg, 10, seeds=[7]).shape
    (10, 18)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fggm.mimo.config import EnvConfig
from fggm.mimo.env import MuMimoEnv
from fggm.mimo.teacher import RuleScheduler, teacher_scores

__all__ = ["behaviour_clone", "collect_states", "clone_actor", "pool_user_statistics", "student_policy"]


def pool_user_statistics(obs_rms: Any, num_antennas: int, num_users: int) -> None:
    """Pool a ``RunningMeanStd``'s per-entry mean and variance over users, in place.

    Entries pooled together: every user's single-user SE; every user's history; for each antenna m,
    every user's ``Re h[m]`` (and ``Im h[m]``). The pooled variance is the mixture variance
    (mean of variances plus the variance of the means).

    Example:
        >>> from stable_baselines3.common.running_mean_std import RunningMeanStd
        >>> rms = RunningMeanStd(shape=(12,)); rms.mean[:2] = [1.0, 3.0]; rms.var[:2] = [1.0, 1.0]
        >>> pool_user_statistics(rms, 2, 2); rms.mean[:2].tolist(), rms.var[:2].tolist()
        ([2.0, 2.0], [2.0, 2.0])
    """
    M, K = num_antennas, num_users
    mean = np.asarray(obs_rms.mean, dtype=np.float64)
    var = np.asarray(obs_rms.var, dtype=np.float64)
    groups = [np.arange(K), K + np.arange(K)]
    for m in range(M):
        groups.append(2 * K + np.arange(K) * M + m)
        groups.append(2 * K + M * K + np.arange(K) * M + m)
    for g in groups:
        mu = mean[g].mean()
        v = (var[g] + (mean[g] - mu) ** 2).mean()
        mean[g] = mu
        var[g] = v
    obs_rms.mean = mean
    obs_rms.var = var


def student_policy(model: Any, vecnormalize: Any, deterministic: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Batch policy ``raw obs [n, D] -> actions [n, K]`` of an SB3 model behind a VecNormalize.

    Example:
        >>> # act = student_policy(model, vecnorm); act(obs_batch).shape
    """
    def act(obs: np.ndarray) -> np.ndarray:
        x = vecnormalize.normalize_obs(np.asarray(obs, dtype=np.float32)) if vecnormalize is not None else obs
        a, _ = model.predict(x, deterministic=deterministic)
        return np.asarray(a, dtype=np.float32)
    return act


def collect_states(env_config: EnvConfig, n_states: int, seeds: Sequence[int], policy: Callable[[np.ndarray], np.ndarray] | None = None,
                   w: float = 120.0, epsilon: float = 0.0, rng_seed: int = 0,
                   on_step: Callable[[int], None] | None = None) -> np.ndarray:
    """Raw observations visited by the teacher rule (``policy=None``) or by ``policy``, ``[n, D]``.

    One environment per seed, stepped in lock-step (the policy sees a batch); with probability
    ``epsilon`` a TTI schedules a random subset instead (wider state coverage).

    Example:
        >>> cfg = EnvConfig(num_antennas=2, num_users=3, max_scheduled=2, episode_length=4)
        >>> collect_states(cfg, 9, seeds=[1, 2], epsilon=0.5).shape
        (9, 18)
    """
    if n_states < 1 or not seeds:
        raise ValueError("collect_states needs n_states >= 1 and at least one seed")
    envs = [MuMimoEnv(env_config) for _ in seeds]
    obs = np.stack([e.reset(seed=int(s))[0] for e, s in zip(envs, seeds)])
    rule = RuleScheduler(w=w)
    rng = np.random.default_rng(rng_seed)
    out = np.empty((n_states, env_config.obs_dim), dtype=np.float32)
    n = 0
    while n < n_states:
        take = min(len(envs), n_states - n)
        out[n:n + take] = obs[:take]
        n += take
        actions = policy(obs) if policy is not None else None
        if actions is None:  # the teacher, for the whole batch at once
            from fggm.mimo.teacher import marginal_scores

            top = np.argsort(-marginal_scores(obs, env_config, rule.rho, rule.w), axis=1, kind="stable")[:, :env_config.max_scheduled]
        for i, env in enumerate(envs):
            if rng.random() < epsilon:
                idx = int(rng.integers(env.codec.n))
            elif actions is None:
                idx = env.codec.subset_to_index(top[i])
            else:
                idx = env.action_to_index(actions[i])
            o, _, term, trunc, _ = env.step_index(idx)
            obs[i] = env.reset()[0] if (term or trunc) else o
        if on_step is not None:
            on_step(take)
    return out


def clone_actor(model: Any, vecnormalize: Any, states: np.ndarray, env_config: EnvConfig, *, w: float = 120.0,
                epochs: int = 20, lr: float = 1e-3, batch_size: int = 256, seed: int = 0, log_std: float = -1.0,
                max_wall_s: float | None = None, on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Fit the scores actor's pre-tanh means to the teacher's targets on ``states`` (raw observations).

    The observations are normalised with ``vecnormalize``'s current statistics (clip included), the
    actor's ``log_std`` head is reset to the constant ``log_std`` afterwards (initial exploration).
    Returns ``{"epochs", "loss", "agreement", "wall_s"}``; ``agreement`` is the fraction of states whose
    top-S set equals the teacher's (held-out 10 %).

    Example:
        >>> # stats = clone_actor(model, vecnorm, states, cfg, epochs=10)
    """
    t0 = time.time()
    K, S = env_config.num_users, env_config.max_scheduled
    x = vecnormalize.normalize_obs(states.astype(np.float32)) if vecnormalize is not None else states
    y = teacher_scores(states, env_config, w=w).astype(np.float32)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen).numpy()
    n_val = max(1, len(x) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    X = torch.as_tensor(x, dtype=torch.float32)
    Y = torch.as_tensor(y, dtype=torch.float32)
    actor = model.actor
    params = [p for n, p in actor.named_parameters() if not n.startswith("log_std")]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))

    def mean_scores(xb: torch.Tensor) -> torch.Tensor:
        feats = actor.extract_features(xb, actor.features_extractor)
        return actor.mu(actor.latent_pi(feats))

    loss_v = float("nan")
    done = 0
    actor.set_training_mode(True)
    for ep in range(epochs):
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        total, count = 0.0, 0
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            pred = mean_scores(X[b])
            loss = torch.mean((pred - Y[b]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
        sched.step()
        loss_v = total / max(count, 1)
        done = ep + 1
        if on_epoch is not None:
            on_epoch(done, loss_v)
        if max_wall_s is not None and time.time() - t0 > max_wall_s:
            break
    actor.set_training_mode(False)
    with torch.no_grad():
        pv = mean_scores(X[val]).numpy()
        top_p = np.sort(np.argsort(-pv, axis=1)[:, :S], axis=1)
        top_t = np.sort(np.argsort(-y[val], axis=1)[:, :S], axis=1)
        agreement = float(np.mean(np.all(top_p == top_t, axis=1)))
        val_loss = float(np.mean((pv - y[val]) ** 2))
        for lin in (actor.log_std.self_linear,):
            lin.weight.zero_()
            lin.bias.fill_(float(log_std))
    return {"epochs": done, "loss": loss_v, "val_loss": val_loss, "agreement": agreement,
            "states": int(len(x)), "wall_s": round(time.time() - t0, 1), "users": K}


def behaviour_clone(model: Any, vecnormalize: Any, config: Any, progress: bool = False) -> dict[str, Any]:
    """The whole warm start a :class:`~fggm.mimo.config.TrainConfig` asks for, in place on ``model``.

    1. ``bc_states`` teacher states on seeds ``bc_seed .. bc_seed + bc_envs - 1`` (exploration
       ``bc_epsilon``); the normaliser's statistics are fitted to them and pooled over users;
    2. :func:`clone_actor` for ``bc_epochs`` epochs;
    3. ``bc_dagger_rounds`` DAgger rounds: ``bc_states // 2`` states visited by the cloned policy
       itself (deterministic, next block of ``bc_envs`` seeds), labelled by the teacher, added to
       the set, and half the epochs again at half the learning rate.

    Returns what happened (``states``, per-round agreement with the teacher, wall time, seeds).

    Example:
        >>> # info = behaviour_clone(model, vecnorm, FggmConfig.from_file("configs/smart16-scores.yaml"))
    """
    tc, env = config.train, config.env
    t0 = time.time()
    bar = None
    total = tc.bc_states + tc.bc_dagger_rounds * (tc.bc_states // 2)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="BC warm start: rollouts", unit="state", mininterval=2.0)
    step = bar.update if bar is not None else None

    def on_epoch(epoch: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix_str(f"cloning epoch {epoch}, loss {loss:.3f}")
    seeds = list(range(tc.bc_seed, tc.bc_seed + tc.bc_envs))
    states = collect_states(env, tc.bc_states, seeds, w=tc.bc_teacher_w, epsilon=tc.bc_epsilon, rng_seed=tc.bc_seed,
                            on_step=step)
    if vecnormalize is not None and vecnormalize.norm_obs:
        vecnormalize.obs_rms.update(states.astype(np.float64))
        pool_user_statistics(vecnormalize.obs_rms, env.num_antennas, env.num_users)
    rounds = [clone_actor(model, vecnormalize, states, env, w=tc.bc_teacher_w, epochs=tc.bc_epochs, lr=tc.bc_lr,
                          seed=tc.seed, log_std=tc.log_std_init, on_epoch=on_epoch)]
    used = list(seeds)
    for d in range(tc.bc_dagger_rounds):
        block = list(range(tc.bc_seed + tc.bc_envs * (d + 1), tc.bc_seed + tc.bc_envs * (d + 2)))
        used += block
        extra = collect_states(env, max(1, tc.bc_states // 2), block, policy=student_policy(model, vecnormalize, True),
                               w=tc.bc_teacher_w, rng_seed=block[0], on_step=step)
        states = np.concatenate([states, extra])
        rounds.append(clone_actor(model, vecnormalize, states, env, w=tc.bc_teacher_w, epochs=max(1, tc.bc_epochs // 2),
                                  lr=tc.bc_lr / 2, seed=tc.seed + d + 1, log_std=tc.log_std_init, on_epoch=on_epoch))
    if bar is not None:
        bar.close()
    return {"teacher": {"rule": "marginal_scores", "w": tc.bc_teacher_w, "epsilon": tc.bc_epsilon},
            "states": int(len(states)), "rounds": rounds, "seeds": used, "wall_s": round(time.time() - t0, 1)}
