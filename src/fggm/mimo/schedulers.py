"""Schedulers behind one interface: ``reset(env)``, ``select(obs, env) -> subset index``, ``observe(info)``.

Classical baselines only use what the base station knows: the REPORTED CSI (through
``env.predicted_se_table()`` / ``env.reported_channel``) and the achieved rates fed back by
``observe``. The DRL policy (:class:`PolicyScheduler`) sees only the observation vector.

* ``random`` - a uniformly random subset index (what a random action does);
* ``round-robin`` - users ``tS .. tS + S - 1`` (mod K) at TTI t, ignoring channels;
* ``greedy`` - greedy user addition: add the user that raises the predicted ZF sum SE most, stop
  when nothing raises it or S users are in;
* ``pf`` - proportional fair: the subset maximising ``sum_k SE_k / avg_k`` over all N subsets, with
  ``avg_k`` an exponentially weighted average throughput (time constant ``tc``);
* ``exhaustive`` - the myopic optimum of the reward: evaluates the reward of all N subsets
  (vectorised) and takes the best one.

Example:
    >>> from fggm.mimo.env import MuMimoEnv
    >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2})
    >>> obs, _ = env.reset(seed=0)
    >>> sched = make_scheduler("exhaustive")
    >>> sched.reset(env)
    >>> 0 <= sched.select(obs, env) < env.codec.n
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from fggm.mimo.physics import jain

BASELINES = ("random", "round-robin", "greedy", "pf", "exhaustive")


class Scheduler(ABC):
    """Base class: a scheduler picks one subset index per TTI.

    Example:
        >>> RoundRobinScheduler().name
        'round-robin'
    """

    name = "scheduler"

    def reset(self, env: Any) -> None:
        """Called at the start of every episode."""

    @abstractmethod
    def select(self, obs: np.ndarray, env: Any) -> int:
        """Return the index of the subset to schedule this TTI."""

    def observe(self, info: dict[str, Any]) -> None:
        """Feedback after the TTI (the step's info dict)."""


class RandomScheduler(Scheduler):
    """Uniformly random subset index.

    Example:
        >>> from fggm.mimo.env import MuMimoEnv
        >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2}); o, _ = env.reset(seed=0)
        >>> RandomScheduler(seed=1).select(o, env) in range(env.codec.n)
        True
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def select(self, obs: np.ndarray, env: Any) -> int:
        return int(self.rng.integers(env.codec.n))


class RoundRobinScheduler(Scheduler):
    """Cycle through the users S at a time, ignoring the channels.

    Example:
        >>> from fggm.mimo.env import MuMimoEnv
        >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2}); o, _ = env.reset(seed=0)
        >>> rr = RoundRobinScheduler(); rr.reset(env)
        >>> env.codec.index_to_subset(rr.select(o, env))
        (0, 1)
    """

    name = "round-robin"

    def reset(self, env: Any) -> None:
        self.next_user = 0

    def select(self, obs: np.ndarray, env: Any) -> int:
        users = [(self.next_user + i) % env.K for i in range(env.S)]
        self.next_user = (self.next_user + env.S) % env.K
        return env.codec.subset_to_index(users)


class GreedyScheduler(Scheduler):
    """Greedy user addition on the predicted ZF sum SE (from reported CSI).

    Example:
        >>> from fggm.mimo.env import MuMimoEnv
        >>> env = MuMimoEnv({"num_antennas": 4, "num_users": 4, "max_scheduled": 2}); o, _ = env.reset(seed=0)
        >>> len(env.codec.index_to_subset(GreedyScheduler().select(o, env))) <= 2
        True
    """

    name = "greedy"

    def select(self, obs: np.ndarray, env: Any) -> int:
        table = env.predicted_se_table().sum(axis=1)  # [N] predicted sum SE
        codec = env.codec
        chosen: list[int] = []
        best_val = 0.0
        best_idx = -1
        while len(chosen) < env.S:
            cands = [u for u in range(env.K) if u not in chosen]
            idxs = [codec.subset_to_index(chosen + [u]) for u in cands]
            vals = table[idxs]
            j = int(np.argmax(vals))
            if vals[j] <= best_val and best_idx >= 0:
                break
            best_val, best_idx = float(vals[j]), idxs[j]
            chosen.append(cands[j])
        return best_idx


class ProportionalFairScheduler(Scheduler):
    """Maximise ``sum_k SE_k / avg_k`` over all subsets (EWMA throughput with time constant ``tc``).

    Example:
        >>> ProportionalFairScheduler(tc=10).tc
        10.0
    """

    name = "pf"

    def __init__(self, tc: float = 50.0) -> None:
        self.tc = float(tc)

    def reset(self, env: Any) -> None:
        self.avg = np.full(env.K, 1e-3)

    def select(self, obs: np.ndarray, env: Any) -> int:
        table = env.predicted_se_table()
        return int(np.argmax(table @ (1.0 / self.avg)))

    def observe(self, info: dict[str, Any]) -> None:
        self.avg = (1.0 - 1.0 / self.tc) * self.avg + (1.0 / self.tc) * np.asarray(info["se"])


class ExhaustiveScheduler(Scheduler):
    """Myopic optimum: the subset with the highest reward this TTI, predicted from reported CSI.

    Example:
        >>> ExhaustiveScheduler().name
        'exhaustive'
    """

    name = "exhaustive"

    def select(self, obs: np.ndarray, env: Any) -> int:
        table = env.predicted_se_table()  # [N, K]
        a, b = env.config.reward_a, env.config.reward_b
        su = env.su_rep[min(env.t, env.T - 1)]
        norm = env.se_normaliser(su) if hasattr(env, "se_normaliser") else max(float(su.sum()), 1e-12)
        rewards = a * table.sum(axis=1) / norm + b * jain(env.cumulative_se[None, :] + table)
        return int(np.argmax(rewards))


class PolicyScheduler(Scheduler):
    """A Stable-Baselines3 policy (deterministic action) behind the scheduler interface.

    ``vecnormalize`` (optional) is a ``VecNormalize`` whose observation statistics are applied first.
    A one-dimensional action is read on the subset grid (SMART's head); a K-dimensional one as
    per-user scores (the scores head, with the set-size rule stored in the policy).

    Example:
        >>> # sched = PolicyScheduler(model, vecnormalize, name="sac")
        >>> PolicyScheduler.name
        'policy'
    """

    name = "policy"

    def __init__(self, model: Any, vecnormalize: Any = None, name: str = "sac") -> None:
        self.model = model
        self.vecnormalize = vecnormalize
        self.name = name

    def action(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action in [-1, 1] for a raw observation."""
        x = np.asarray(obs, dtype=np.float32)
        if self.vecnormalize is not None:
            x = self.vecnormalize.normalize_obs(x)
        act, _ = self.model.predict(x, deterministic=True)
        return np.asarray(act, dtype=np.float32).reshape(-1)

    def select(self, obs: np.ndarray, env: Any) -> int:
        a = self.action(obs)
        if a.shape[0] == 1:  # subset head: the scalar on the subset grid
            return env.codec.action_to_index(a)
        return self.head(env).to_index(a, env.codec, tiebreak=np.asarray(obs)[: env.K])

    def head(self, env: Any) -> Any:
        """The scores head's readout: the set-size rule stored with the policy (``score_rule``,
        ``score_threshold`` of :class:`fggm.ScoresPolicy`), sized by the environment."""
        from fggm.mimo.heads import ActionHead

        pol = getattr(self.model, "policy", None)
        return ActionHead("scores", env.K, env.S, getattr(pol, "score_rule", "top_s"),
                          float(getattr(pol, "score_threshold", 0.0)))


def make_scheduler(name: str, seed: int = 0) -> Scheduler:
    """Build a baseline by name (one of ``BASELINES``).

    Example:
        >>> make_scheduler("pf").name
        'pf'
    """
    table = {
        "random": lambda: RandomScheduler(seed),
        "round-robin": RoundRobinScheduler,
        "greedy": GreedyScheduler,
        "pf": ProportionalFairScheduler,
        "exhaustive": ExhaustiveScheduler,
    }
    if name not in table:
        raise ValueError(f"unknown scheduler {name!r}; baselines are {', '.join(BASELINES)} (or a checkpoint directory)")
    return table[name]()
