"""Knapsack solvers behind one interface: ``solve(w_rep, v_rep, capacity) -> selection masks``.

Every solver sees only the REPORTED weights and values (and the capacity it believes in),
batched over instances.

* ``random`` - a random order, each item joining while it fits (a random maximal feasible set);
* ``greedy`` - by reported value/weight, best first, each item joining while it fits;
* ``exact`` - the optimum of the reported instance by enumerating all ``2 ** n`` subsets;
* :class:`PolicySolver` - the SB3 SAC solver: ``scores`` head decoded as in the environment, or
  ``proto`` head: the actor's proto-action, its ``knn_k`` nearest grid points re-ranked by the
  first critic ``Q1(obs, point)`` (nco-knapsack's design).

Example:
    >>> from fggm.knapsack.env import sample_instances
    >>> w, v = sample_instances(3, 10, 0)
    >>> make_solver("greedy").solve(w, v, np.full(3, 2.5)).shape
    (3, 10)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from fggm.knapsack.config import KnapsackConfigError, KnapsackEnvConfig
from fggm.knapsack.env import ProtoGrid, decode_scores, exact_solve

__all__ = ["BASELINES", "Solver", "RandomSolver", "GreedySolver", "ExactSolver", "PolicySolver", "make_solver",
           "rerank"]

BASELINES = ("random", "greedy", "exact")


class Solver(ABC):
    """Base class: maps reported instances to selections.

    Example:
        >>> GreedySolver().name
        'greedy'
    """

    name = "solver"

    @abstractmethod
    def solve(self, w_rep: np.ndarray, v_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        """Selection masks ``[B, n]`` (bool) for reported instances ``[B, n]`` and capacities ``[B]``."""


class RandomSolver(Solver):
    """Items in a random order, each joining while its reported weight fits.

    Example:
        >>> RandomSolver(0).solve(np.full((1, 3), 0.6), np.ones((1, 3)), np.array([1.0])).sum()
        np.int64(1)
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def solve(self, w_rep: np.ndarray, v_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        return decode_scores(self.rng.random(np.shape(w_rep)) + 1e-9, w_rep, capacity)


class GreedySolver(Solver):
    """Best reported value/weight first, each item joining while it fits (skips what does not fit).

    Example:
        >>> GreedySolver().solve(np.array([[0.5, 0.2]]), np.array([[0.6, 0.1]]), np.array([0.6])).tolist()
        [[True, False]]
    """

    name = "greedy"

    def solve(self, w_rep: np.ndarray, v_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        ratio = np.asarray(v_rep, float) / np.maximum(np.asarray(w_rep, float), 1e-12)
        return decode_scores(ratio + 1e-12, w_rep, capacity)


class ExactSolver(Solver):
    """Exact optimum of the reported instance (enumeration of all subsets).

    Example:
        >>> ExactSolver().solve(np.array([[0.6, 0.5, 0.5]]), np.array([[1.0, 0.7, 0.7]]), np.array([1.0])).tolist()
        [[False, True, True]]
    """

    name = "exact"

    def solve(self, w_rep: np.ndarray, v_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        return exact_solve(w_rep, v_rep, capacity)


def rerank(grid: ProtoGrid, critic: Any, obs_norm: Any, proto: np.ndarray, k: int | None = None) -> np.ndarray:
    """nco-knapsack's selection: the ``k`` grid points nearest each proto-action, the one with the
    highest ``critic.q1_forward(obs, point)`` wins; grid indices ``[B]``.

    ``obs_norm`` are NORMALISED observations ``[B, obs]`` (what the critic was trained on).

    Example:
        >>> # idx = rerank(grid, model.critic, torch.as_tensor(vecnorm.normalize_obs(obs)), proto)
    """
    import torch

    cand = grid.knn(proto, k)  # [B, k]
    B, kk = cand.shape
    obs_t = torch.as_tensor(np.asarray(obs_norm), dtype=torch.float32)
    pts = torch.as_tensor(grid.points[cand.reshape(-1)])
    with torch.no_grad():
        q = critic.q1_forward(obs_t.repeat_interleave(kk, dim=0), pts).reshape(B, kk)
    return cand[np.arange(B), q.argmax(1).numpy()]


class PolicySolver(Solver):
    """The SAC solver (deterministic actor), with its ``VecNormalize`` statistics.

    Example:
        >>> # model, vecnorm, cfg = load_solver("data/knapsack/solver10")
        >>> # PolicySolver(model, vecnorm, cfg.env).solve(w, v, cap)
    """

    def __init__(self, model: Any, vecnormalize: Any, env_cfg: KnapsackEnvConfig, name: str = "sac") -> None:
        self.model, self.vecnorm, self.cfg, self.name = model, vecnormalize, env_cfg, name
        self.grid = ProtoGrid(env_cfg) if env_cfg.head == "proto" else None
        if int(np.prod(model.action_space.shape)) != env_cfg.action_dim:
            raise KnapsackConfigError(f"the policy has {int(np.prod(model.action_space.shape))} action dimensions, "
                                      f"the '{env_cfg.head}' head needs {env_cfg.action_dim}")

    def normalise(self, w_rep: np.ndarray, v_rep: np.ndarray) -> np.ndarray:
        """Normalised observations ``[B, 2n]`` as the policy sees them."""
        obs = np.concatenate([np.atleast_2d(w_rep), np.atleast_2d(v_rep)], 1).astype(np.float32)
        return self.vecnorm.normalize_obs(obs) if self.vecnorm is not None else obs

    def actions(self, w_rep: np.ndarray, v_rep: np.ndarray) -> np.ndarray:
        """Deterministic actions ``[B, action_dim]`` in ``[-1, 1]`` (SB3's ``predict``)."""
        act, _ = self.model.predict(self.normalise(w_rep, v_rep), deterministic=True)
        return np.asarray(act, dtype=np.float64).reshape(np.shape(np.atleast_2d(w_rep))[0], -1)

    def solve(self, w_rep: np.ndarray, v_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        act = self.actions(w_rep, v_rep)
        if self.grid is None:
            return decode_scores(act, w_rep, capacity)
        idx = rerank(self.grid, self.model.critic, self.normalise(w_rep, v_rep), act)
        return self.grid.masks[idx].copy()


def make_solver(name: str, seed: int = 0) -> Solver:
    """A baseline by name (``random``, ``greedy``, ``exact``).

    Example:
        >>> make_solver("exact").name
        'exact'
    """
    if name == "random":
        return RandomSolver(seed)
    if name == "greedy":
        return GreedySolver()
    if name == "exact":
        return ExactSolver()
    raise KnapsackConfigError(f"unknown solver {name!r}: choose one of {', '.join(BASELINES)} or a checkpoint directory")
