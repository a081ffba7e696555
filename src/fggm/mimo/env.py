"""Gymnasium environment: uplink MU-MIMO user scheduling (SMART's formulation).

Each TTI the agent picks one of the N subsets of 1..S users (see :class:`SubsetCodec`).

Observation (float32, length ``2K + 2MK``; 544 for M = K = 16), in this order:

==========================  ======================================  =============================
slice                       content                                 computed from
==========================  ======================================  =============================
``[0, K)``                  single-user SE ``log2(1 + ||h_k||^2)``  the REPORTED channel of user k
``[K, 2K)``                 cumulative SE of each user this episode physical (true) rates so far
``[2K, 2K + MK)``           ``Re(H_rep)``, user-major               ``H_rep[:, k]`` at ``2K + k*M + m``
``[2K + MK, 2K + 2MK)``     ``Im(H_rep)``, user-major               ``H_rep[:, k]`` at ``2K + MK + k*M + m``
==========================  ======================================  =============================

So user k's entries are ``k``, ``K + k``, ``2K + k*M : 2K + (k+1)*M`` and
``2K + MK + k*M : 2K + MK + (k+1)*M``. A user who forges its report with
:meth:`MuMimoEnv.report_override` controls its own channel entries AND, deterministically, its own
single-user SE entry; its cumulative-SE entry stays physical. Use :func:`observation_indices`.

Action (``config.action_head``, see :mod:`fggm.mimo.heads`): ``subset`` is ``Box([-1], [1])``,
the nearest subset index on an even grid (``SubsetCodec``); ``scores`` is ``Box(-1, 1, (K,))``, one
score per user, read out as the top-S users (set-size rule ``score_rule``).
Reward: ``a * sum_k SE_k / norm + b * Jain(cumulative SE including this TTI)`` where ``SE_k`` is
the physical ZF rate (receiver from reported CSI, signal through true channels) and ``norm`` the
sum of the true single-user SEs of all K users (``normaliser: all``) or of the S largest
(``normaliser: top_s``, as SMART's code), a per-TTI normaliser.
Episodes are truncated after ``episode_length`` TTIs.

Example:
    >>> env = MuMimoEnv(EnvConfig(num_antennas=4, num_users=4, max_scheduled=2))
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (40,)
    >>> obs, r, term, trunc, info = env.step(np.array([0.3], dtype=np.float32))
    >>> {"se", "scheduled", "predicted_se", "su_se_true", "su_se_reported"} <= set(info)
    True
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fggm.mimo.channels import ChannelGenerator
from fggm.mimo.config import ConfigError, EnvConfig, env_config_from_dict
from fggm.mimo.heads import ActionHead
from fggm.mimo.physics import SubsetCodec, all_subsets_se, jain, scheduled_se, single_user_se

__all__ = ["MuMimoEnv", "SubsetCodec", "observation_indices", "index_to_subset", "subset_to_index", "action_to_index", "index_to_action"]


def observation_indices(num_antennas: int, num_users: int, user: int) -> dict[str, np.ndarray]:
    """Positions of one user's entries in the observation vector.

    Example:
        >>> ix = observation_indices(16, 16, 2)
        >>> int(ix["su_se"][0]), int(ix["history"][0]), int(ix["re"][0]), int(ix["im"][0])
        (2, 18, 64, 320)
    """
    M, K = num_antennas, num_users
    if not 0 <= user < K:
        raise ValueError(f"user {user} outside [0, {K})")
    return {
        "su_se": np.array([user]),
        "history": np.array([K + user]),
        "re": 2 * K + user * M + np.arange(M),
        "im": 2 * K + M * K + user * M + np.arange(M),
    }


_CODECS: dict[tuple[int, int], SubsetCodec] = {}


def _codec(K: int, S: int) -> SubsetCodec:
    if (K, S) not in _CODECS:
        _CODECS[(K, S)] = SubsetCodec(K, S)
    return _CODECS[(K, S)]


def index_to_subset(index: int, num_users: int = 16, max_scheduled: int = 4) -> tuple[int, ...]:
    """Subset at ``index`` (size-then-lexicographic order).

    Example:
        >>> index_to_subset(16)
        (0, 1)
    """
    return _codec(num_users, max_scheduled).index_to_subset(index)


def subset_to_index(subset: Any, num_users: int = 16, max_scheduled: int = 4) -> int:
    """Index of ``subset``.

    Example:
        >>> subset_to_index((12, 13, 14, 15))
        2515
    """
    return _codec(num_users, max_scheduled).subset_to_index(subset)


def action_to_index(action: Any, num_users: int = 16, max_scheduled: int = 4) -> int:
    """Nearest subset index of a scalar action in [-1, 1].

    Example:
        >>> action_to_index(-1.0), action_to_index(1.0)
        (0, 2515)
    """
    return _codec(num_users, max_scheduled).action_to_index(action)


def index_to_action(index: int, num_users: int = 16, max_scheduled: int = 4) -> float:
    """Grid action of a subset index.

    Example:
        >>> index_to_action(0)
        -1.0
    """
    return _codec(num_users, max_scheduled).index_to_action(index)


class MuMimoEnv(gym.Env):
    """Uplink MU-MIMO scheduling environment (see the module docstring for the exact layout).

    Example:
        >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 3, "max_scheduled": 2})
        >>> _ = env.reset(seed=1)
        >>> _, _, _, _, info = env.step_index(env.codec.subset_to_index([0, 2]))
        >>> info["scheduled"]
        (0, 2)
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = EnvConfig()
        elif isinstance(config, dict):
            config = env_config_from_dict(config)
        self.config: EnvConfig = config
        self.M, self.K, self.S = config.num_antennas, config.num_users, config.max_scheduled
        self.T = config.episode_length
        self.codec = _codec(self.K, self.S)
        self.generator = ChannelGenerator(config.channel, self.M, self.K)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(config.obs_dim,), dtype=np.float32)
        self.head = ActionHead.from_config(config)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.head.action_dim,), dtype=np.float32)
        self._overrides: dict[int, np.ndarray] = {}
        self.t = 0
        self.cumulative_se = np.zeros(self.K)
        self.H_true: np.ndarray | None = None
        self._table_cache: tuple[int, np.ndarray] | None = None

    # ----------------------------------------------------------------- forged reports
    def report_override(self, user: int, h: np.ndarray | None) -> None:
        """Make ``user`` report the complex channel ``h`` (shape [M]) every TTI; ``None`` clears it.

        Example:
            >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 3, "max_scheduled": 2})
            >>> env.report_override(1, np.ones(4, dtype=complex))
            >>> sorted(env.overrides)
            [1]
        """
        if not 0 <= int(user) < self.K:
            raise ValueError(f"user {user} outside [0, {self.K})")
        if h is None:
            self._overrides.pop(int(user), None)
        else:
            v = np.asarray(h, dtype=np.complex128).reshape(-1)
            if v.shape != (self.M,):
                raise ValueError(f"forged channel must have shape [{self.M}], got {np.shape(h)}")
            if not np.all(np.isfinite(v)):
                raise ValueError("forged channel must be finite")
            self._overrides[int(user)] = v.copy()
        if self.H_true is not None:
            self._refresh_reports()

    def clear_overrides(self) -> None:
        """Remove every forged report."""
        self._overrides.clear()
        if self.H_true is not None:
            self._refresh_reports()

    @property
    def overrides(self) -> dict[int, np.ndarray]:
        """Forged reports currently active (user -> channel)."""
        return dict(self._overrides)

    # ----------------------------------------------------------------- episode state
    def _refresh_reports(self) -> None:
        assert self.H_true is not None
        H_rep = self.H_true.copy()
        for u, h in self._overrides.items():
            H_rep[:, :, u] = h[None, :]
        self.H_rep = H_rep
        self.su_rep = single_user_se(H_rep)  # [T, K]
        Ht = np.swapaxes(H_rep, 1, 2).reshape(self.T, self.K * self.M)  # user-major
        self._obs_ch = np.concatenate([Ht.real, Ht.imag], axis=1).astype(np.float32)
        self._table_cache = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a new episode of channels (seeded through Gymnasium's ``np_random``)."""
        super().reset(seed=seed)
        self.H_true = self.generator.episode(self.np_random, self.T)
        self.su_true = single_user_se(self.H_true)
        self._refresh_reports()
        self.t = 0
        self.cumulative_se = np.zeros(self.K)
        return self._obs(), {"t": 0}

    def _obs(self) -> np.ndarray:
        t = min(self.t, self.T - 1)
        return np.concatenate([self.su_rep[t].astype(np.float32), self.cumulative_se.astype(np.float32), self._obs_ch[t]])

    @property
    def true_channel(self) -> np.ndarray:
        """True channel ``[M, K]`` of the current TTI."""
        self._require_reset()
        return self.H_true[min(self.t, self.T - 1)]  # type: ignore[index]

    @property
    def reported_channel(self) -> np.ndarray:
        """Channel ``[M, K]`` the base station holds this TTI (forged columns included)."""
        self._require_reset()
        return self.H_rep[min(self.t, self.T - 1)]

    def predicted_se_table(self) -> np.ndarray:
        """What the base station predicts from REPORTED CSI: SE ``[N, K]`` of every subset this TTI."""
        self._require_reset()
        if self._table_cache is None or self._table_cache[0] != self.t:
            H = self.reported_channel
            self._table_cache = (self.t, all_subsets_se(H, H, self.codec))
        return self._table_cache[1]

    def reward_of(self, se: np.ndarray, su_se: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
        """Reward for SE vectors ``se`` ([..., K]) given single-user SEs and cumulative SE so far.

        Example:
            >>> env = MuMimoEnv({"num_antennas": 2, "num_users": 2, "max_scheduled": 2})
            >>> float(env.reward_of(np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.zeros(2)))
            6.0
        """
        a, b = self.config.reward_a, self.config.reward_b
        return a * np.sum(se, axis=-1) / self.se_normaliser(su_se) + b * jain(cumulative + se)

    def se_normaliser(self, su_se: np.ndarray) -> float:
        """The reward's SE normaliser for single-user SEs ``su_se`` ([K]): their sum (``all``) or the
        sum of the S largest (``top_s``); never below 1e-12.

        Example:
            >>> env = MuMimoEnv({"num_antennas": 2, "num_users": 3, "max_scheduled": 2, "normaliser": "top_s"})
            >>> env.se_normaliser(np.array([1.0, 3.0, 2.0]))
            5.0
        """
        su = np.asarray(su_se, dtype=float).reshape(-1)
        if self.config.normaliser == "top_s":
            su = np.sort(su)[-self.S:]
        return max(float(su.sum()), 1e-12)

    def _require_reset(self) -> None:
        if self.H_true is None:
            raise RuntimeError("call reset() before stepping the environment")

    # ----------------------------------------------------------------- stepping
    def action_to_index(self, action: np.ndarray) -> int:
        """Subset index ``action`` selects this TTI under the configured head (scores ties are
        broken by the reported single-user SE).

        Example:
            >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2, "action_head": "scores"})
            >>> _ = env.reset(seed=0)
            >>> env.codec.index_to_subset(env.action_to_index(np.array([0.5, -0.5, 0.9, 0.0])))
            (0, 2)
        """
        self._require_reset()
        return self.head.to_index(action, self.codec, tiebreak=self.su_rep[min(self.t, self.T - 1)])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Schedule the users ``action`` selects (``subset``: a [1]-shaped value in [-1, 1];
        ``scores``: K scores in [-1, 1])."""
        return self.step_index(self.action_to_index(action))

    def step_index(self, index: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Schedule subset ``index`` directly (what the classical schedulers do)."""
        self._require_reset()
        if self.t >= self.T:
            raise RuntimeError("episode is over; call reset()")
        subset = self.codec.index_to_subset(index)
        t = self.t
        se, predicted = scheduled_se(self.H_true[t], self.H_rep[t], subset)  # type: ignore[index]
        su_true = self.su_true[t]
        a, b = self.config.reward_a, self.config.reward_b
        r_se = a * float(se.sum()) / self.se_normaliser(su_true)
        self.cumulative_se = self.cumulative_se + se
        r_jain = b * float(jain(self.cumulative_se))
        info = {
            "t": t,
            "subset_index": int(index),
            "scheduled": subset,
            "se": se,
            "predicted_se": predicted,
            "su_se_true": su_true.copy(),
            "su_se_reported": self.su_rep[t].copy(),
            "sum_se": float(se.sum()),
            "reward_se": r_se,
            "reward_jain": r_jain,
            "cumulative_se": self.cumulative_se.copy(),
        }
        self.t += 1
        truncated = self.t >= self.T
        return self._obs(), r_se + r_jain, False, truncated, info


def check_sizes(config: EnvConfig, obs_dim: int, what: str = "checkpoint") -> None:
    """Raise :class:`ConfigError` when an observation size does not match ``config``.

    Example:
        >>> check_sizes(EnvConfig(), 544)
    """
    if obs_dim != config.obs_dim:
        raise ConfigError(
            f"{what} expects observations of size {obs_dim} but the environment "
            f"(M={config.num_antennas}, K={config.num_users}) produces {config.obs_dim}"
        )
