"""A rule that reads only the observation: the marginal-reward score, the behaviour-cloning teacher.

For user k with reported single-user SE ``su_k`` and cumulative SE ``c_k`` (both in the
observation), the score is the first-order gain in reward of scheduling k, with the user's
multi-user SE guessed as ``rho * su_k`` and the fairness term weighed ``w`` times (a look-ahead:
one TTI moves Jain's index by O(1/t), but the cumulative SE keeps the gain for the rest of the
episode)::

    score_k = rho * su_k * (a / norm(su) + w * b * dJain/dc_k)
    dJain/dc_k = 2 s1 / (K s2) - 2 s1^2 c_k / (K s2^2),   s1 = sum c, s2 = sum c^2

with ``norm`` the environment's SE normaliser (``all``: sum of su; ``top_s``: the S largest). The
rule schedules the top-S users by score (:class:`RuleScheduler`); :func:`teacher_scores` maps the
scores to targets for the ``scores`` head (positive for the users the rule schedules).

Example:
    >>> from fggm.mimo.env import MuMimoEnv
    >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2})
    >>> obs, _ = env.reset(seed=0)
    >>> rule = RuleScheduler(); rule.reset(env)
    >>> len(env.codec.index_to_subset(rule.select(obs, env)))
    2
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fggm.mimo.config import EnvConfig
from fggm.mimo.schedulers import Scheduler

__all__ = ["marginal_scores", "teacher_scores", "RuleScheduler"]


def marginal_scores(obs: np.ndarray, env_config: EnvConfig, rho: float = 0.85, w: float = 120.0) -> np.ndarray:
    """Marginal-reward score of every user, ``[..., K]``, from raw observations ``[..., obs_dim]``.

    Example:
        >>> cfg = EnvConfig(num_antennas=2, num_users=2, max_scheduled=1)
        >>> obs = np.zeros(cfg.obs_dim); obs[:2] = [1.0, 2.0]; obs[2:4] = [5.0, 1.0]
        >>> s = marginal_scores(obs, cfg); bool(s[1] > s[0])      # better channel, less served
        True
    """
    K, S = env_config.num_users, env_config.max_scheduled
    x = np.asarray(obs, dtype=np.float64)
    su = np.maximum(x[..., :K], 0.0)
    c = np.maximum(x[..., K:2 * K], 0.0)
    if env_config.normaliser == "top_s":
        norm = np.sort(su, axis=-1)[..., -S:].sum(axis=-1, keepdims=True)
    else:
        norm = su.sum(axis=-1, keepdims=True)
    norm = np.maximum(norm, 1e-12)
    s1 = c.sum(axis=-1, keepdims=True)
    s2 = (c * c).sum(axis=-1, keepdims=True)
    ok = s2 > 1e-12
    s2_safe = np.where(ok, s2, 1.0)
    grad = np.where(ok, 2.0 * s1 / (K * s2_safe) - 2.0 * s1 * s1 * c / (K * s2_safe * s2_safe), 0.0)
    return rho * su * (env_config.reward_a / norm + w * env_config.reward_b * grad)


def teacher_scores(obs: np.ndarray, env_config: EnvConfig, rho: float = 0.85, w: float = 120.0,
                   scale: float = 2.0, limit: float = 3.0) -> np.ndarray:
    """Targets for the scores head's pre-tanh mean: the marginal scores centred between the S-th and
    (S+1)-th best user (so the S users the rule picks are positive, the rest negative), divided by
    their spread across users, times ``scale``, clipped to ``[-limit, limit]``.

    Example:
        >>> cfg = EnvConfig(num_antennas=2, num_users=3, max_scheduled=1)
        >>> obs = np.zeros(cfg.obs_dim); obs[:3] = [1.0, 3.0, 2.0]
        >>> (teacher_scores(obs, cfg) > 0).tolist()
        [False, True, False]
    """
    K, S = env_config.num_users, env_config.max_scheduled
    m = marginal_scores(obs, env_config, rho, w)
    srt = np.sort(m, axis=-1)
    if S < K:
        mid = 0.5 * (srt[..., K - S] + srt[..., K - S - 1])
    else:
        mid = srt[..., 0] - 1.0
    spread = np.maximum(m.std(axis=-1), 1e-9)
    return np.clip(scale * (m - mid[..., None]) / spread[..., None], -limit, limit)


class RuleScheduler(Scheduler):
    """The top-S users by :func:`marginal_scores` (reads only the observation).

    Example:
        >>> RuleScheduler(rho=0.85, w=120.0).name
        'rule'
    """

    name = "rule"

    def __init__(self, rho: float = 0.85, w: float = 120.0) -> None:
        self.rho = float(rho)
        self.w = float(w)

    def select(self, obs: np.ndarray, env: Any) -> int:
        m = marginal_scores(obs, env.config, self.rho, self.w)
        top = np.argsort(-m, kind="stable")[: env.S]
        return env.codec.subset_to_index(top)
