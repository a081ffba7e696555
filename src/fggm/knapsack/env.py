"""The one-step knapsack environment (Gymnasium) and the maps between actions and item subsets.

Each episode is one instance: ``n`` items whose owners report a weight and a value, both drawn
i.i.d. U(0, 1).  Owners may forge their reports (:meth:`KnapsackEnv.report_override`); the
solver sees only the reports, the physical outcome uses the TRUE weights and values, so a forged
item can make a selection infeasible.  Reward = true value of the selected items if their true
weight fits the capacity, else 0.

Observation (float32, length ``2n``): ``[w_rep[0..n), v_rep[0..n)]``.  Item ``i``'s entries are
``i`` and ``n + i`` (:func:`item_indices`).

Actions (``Box(-1, 1)``), by ``head``:

* ``scores`` (``n`` values): items with a positive score join in descending score order while
  their REPORTED weight fits the capacity the solver believes in (:func:`decode_scores`).
* ``proto`` (``proto_dim`` values): the nearest point of the ``grid_levels ** proto_dim`` grid;
  grid point ``g`` (``itertools.product`` order) is the ``g``-th item subset in size-then-
  lexicographic order (:class:`ProtoGrid`).  The SAC solver instead takes the ``knn_k`` nearest
  points and lets its critic choose; a grid point is its own nearest point, so the environment
  executes that choice exactly.

Example:
    >>> env = KnapsackEnv(KnapsackEnvConfig(n_items=4))
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (8,)
    >>> obs, reward, terminated, truncated, info = env.step(np.ones(4, dtype=np.float32))
    >>> terminated, sorted(info)[:3]
    (True, ['capacity', 'feasible', 'optimum'])
"""

from __future__ import annotations

import itertools
from typing import Any

import gymnasium as gym
import numpy as np

from fggm.knapsack.config import KnapsackConfigError, KnapsackEnvConfig

__all__ = ["KnapsackEnv", "ProtoGrid", "subset_masks", "item_indices", "decode_scores", "outcome", "exact_solve",
           "sample_instances", "believed_capacity", "true_capacity"]

_MASKS: dict[int, np.ndarray] = {}


def subset_masks(n: int) -> np.ndarray:
    """All ``2 ** n`` item subsets as a bool matrix ``[2**n, n]``, by size then lexicographic order.

    Example:
        >>> subset_masks(3).astype(int).tolist()[:5]
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    """
    if n not in _MASKS:
        rows = [np.isin(np.arange(n), c) for r in range(n + 1) for c in itertools.combinations(range(n), r)]
        m = np.array(rows, dtype=bool).reshape(-1, n)
        m.setflags(write=False)
        _MASKS[n] = m
    return _MASKS[n]


def item_indices(n_items: int, item: int) -> np.ndarray:
    """Observation positions ``[weight, value]`` of one item.

    Example:
        >>> item_indices(10, 3).tolist()
        [3, 13]
    """
    if not 0 <= item < n_items:
        raise KnapsackConfigError(f"item {item} outside [0, {n_items})")
    return np.array([item, n_items + item])


def sample_instances(n_instances: int, n_items: int, seed: int | np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(w, v)``, each ``[n_instances, n_items]`` i.i.d. U(0, 1), from ``seed``.

    Example:
        >>> w, v = sample_instances(5, 10, 0)
        >>> w.shape, bool(((0 <= v) & (v < 1)).all())
        ((5, 10), True)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    u = rng.random((n_instances, 2, n_items))
    return u[:, 0], u[:, 1]


def true_capacity(cfg: KnapsackEnvConfig, w_true: np.ndarray) -> np.ndarray:
    """Physical capacity per instance ``[B]`` (the TRUE weights set it in ``relative`` mode).

    Example:
        >>> true_capacity(KnapsackEnvConfig(), np.ones((2, 10))).tolist()
        [2.5, 2.5]
    """
    w = np.atleast_2d(w_true)
    return np.full(w.shape[0], cfg.capacity_ratio * cfg.n_items) if cfg.capacity == "fixed" \
        else cfg.capacity_ratio * w.sum(1)


def believed_capacity(cfg: KnapsackEnvConfig, w_rep: np.ndarray) -> np.ndarray:
    """The capacity a solver infers from the REPORTED weights ``[B]`` (same rule, reported data).

    Example:
        >>> believed_capacity(KnapsackEnvConfig(capacity="relative"), np.ones((1, 10))).tolist()
        [2.5]
    """
    return true_capacity(cfg, w_rep)


def decode_scores(scores: np.ndarray, w_rep: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """The ``scores`` head's selection ``[B, n]``: positive-score items, best first, while they fit.

    Ties in score are broken by the lower item index.

    Example:
        >>> decode_scores(np.array([[0.9, -0.1, 0.5]]), np.array([[0.6, 0.1, 0.5]]), np.array([1.0])).tolist()
        [[True, False, False]]
    """
    s, w = np.atleast_2d(scores), np.atleast_2d(w_rep)
    B, n = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    rows = np.arange(B)
    rem = np.asarray(capacity, dtype=float).reshape(B).copy()
    mask = np.zeros((B, n), dtype=bool)
    for j in range(n):
        idx = order[:, j]
        wi = w[rows, idx]
        take = (s[rows, idx] > 0) & (wi <= rem + 1e-12)
        mask[rows, idx] = take
        rem = rem - np.where(take, wi, 0.0)
    return mask


def outcome(mask: np.ndarray, w_true: np.ndarray, v_true: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Physical result of selections ``mask [B, n]``: ``(reward, feasible)``, reward 0 if infeasible.

    Example:
        >>> outcome(np.array([[True, True]]), np.array([[0.5, 0.6]]), np.array([[1.0, 2.0]]), np.array([1.0]))
        (array([0.]), array([False]))
    """
    m = np.atleast_2d(mask).astype(float)
    weight = (m * np.atleast_2d(w_true)).sum(1)
    value = (m * np.atleast_2d(v_true)).sum(1)
    feasible = weight <= np.asarray(capacity, dtype=float).reshape(-1) + 1e-12
    return np.where(feasible, value, 0.0), feasible


def exact_solve(w: np.ndarray, v: np.ndarray, capacity: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Exact optimum by enumerating all ``2 ** n`` subsets (vectorised); masks ``[B, n]``.

    Among optimal subsets the first in size-then-lexicographic order is returned.

    Example:
        >>> exact_solve(np.array([[0.6, 0.5, 0.5]]), np.array([[1.0, 0.7, 0.7]]), np.array([1.0])).tolist()
        [[False, True, True]]
    """
    w, v = np.atleast_2d(w), np.atleast_2d(v)
    cap = np.asarray(capacity, dtype=float).reshape(-1)
    masks = subset_masks(w.shape[1])
    mf = masks.T.astype(float)
    out = np.empty(w.shape, dtype=bool)
    for s in range(0, w.shape[0], chunk):
        W, V = w[s : s + chunk] @ mf, v[s : s + chunk] @ mf
        V = np.where(W <= cap[s : s + chunk, None] + 1e-12, V, -1.0)
        out[s : s + chunk] = masks[np.argmax(V, axis=1)]
    return out


class ProtoGrid:
    """The proto-action grid of nco-knapsack: ``levels ** dim`` points in ``[-1, 1]^dim``
    (``itertools.product`` order), the first ``2 ** n`` of them standing for the item subsets in
    size-then-lexicographic order.

    Example:
        >>> g = ProtoGrid(KnapsackEnvConfig())
        >>> g.points.shape, g.masks.shape, g.nearest(g.points[[7]]).tolist()
        ((1024, 5), (1024, 10), [7])
    """

    def __init__(self, cfg: KnapsackEnvConfig) -> None:
        self.k = cfg.knn_k
        self.masks = subset_masks(cfg.n_items)
        levels = np.arange(cfg.grid_levels, dtype=np.float64) / (cfg.grid_levels - 1) * 2.0 - 1.0
        pts = np.array(list(itertools.product(levels, repeat=cfg.proto_dim)))[: len(self.masks)]
        self.points = pts.astype(np.float32)
        self.points.setflags(write=False)

    def distances(self, a: np.ndarray) -> np.ndarray:
        """Euclidean distances ``[B, G]`` from proto-actions ``a [B, dim]`` to every grid point."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float64))
        d2 = ((a[:, None, :] - self.points[None].astype(np.float64)) ** 2).sum(-1)
        return np.sqrt(d2)

    def nearest(self, a: np.ndarray) -> np.ndarray:
        """Index ``[B]`` of the nearest grid point (lowest index on ties)."""
        return np.argmin(self.distances(a), axis=1)

    def knn(self, a: np.ndarray, k: int | None = None) -> np.ndarray:
        """Indices ``[B, k]`` of the ``k`` nearest grid points, nearest first (lower index on ties).

        Example:
            >>> ProtoGrid(KnapsackEnvConfig()).knn(np.full((1, 5), -1.0), 3).tolist()
            [[0, 1, 4]]
        """
        k = self.k if k is None else k
        d = self.distances(a)
        return np.argsort(d, axis=1, kind="stable")[:, :k]

    def reachable(self, lo: np.ndarray, hi: np.ndarray, k: int | None = None) -> np.ndarray:
        """Bool ``[G]``: grid points that can be among the ``k`` nearest of SOME proto-action in the
        box ``[lo, hi]`` (a sound over-approximation of the union of the k-NN sets).

        For every ``p`` in the box, the k-th nearest distance is at most ``R``, the largest
        distance from the box to the k nearest points of its centre; a point whose distance
        from the box exceeds ``R`` is never among the k nearest.

        Example:
            >>> g = ProtoGrid(KnapsackEnvConfig())
            >>> p = g.points[0]
            >>> int(g.reachable(p, p, 1).sum()), int(g.reachable(p, p, 3).sum())   # 3: five points tie at 2/3
            (1, 6)
        """
        k = self.k if k is None else k
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        pts = self.points.astype(np.float64)
        centre_nn = self.knn(((lo + hi) / 2)[None], k)[0]
        far = np.maximum(np.abs(pts - lo), np.abs(pts - hi))  # per-coordinate farthest distance
        radius = np.sqrt((far[centre_nn] ** 2).sum(1)).max()
        gap = np.maximum(0.0, np.maximum(lo - pts, pts - hi))
        near = np.sqrt((gap**2).sum(1))
        return near <= radius * (1 + 1e-9) + 1e-12


class KnapsackEnv(gym.Env):
    """One-step knapsack (see the module docstring); passes ``gymnasium``'s ``check_env``.

    ``reset(options={"instance": (w, v)})`` sets the true instance instead of sampling it.
    ``info`` after ``step``: ``selected`` (bool mask), ``value`` (true value of the selection),
    ``weight`` (its true weight), ``feasible``, ``reported_feasible`` (by the reports and the
    believed capacity), ``capacity``, ``optimum`` (exact optimum of the TRUE instance),
    ``w_true``, ``v_true``, ``w_rep``, ``v_rep``.

    Example:
        >>> env = KnapsackEnv()
        >>> env.report_override(0, (0.0, 1.0))   # item 0 reports weight 0, value 1
        >>> float(env.reset(seed=1)[0][0])
        0.0
    """

    metadata = {"render_modes": []}

    def __init__(self, config: KnapsackEnvConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = KnapsackEnvConfig(**config)
        self.cfg = config or KnapsackEnvConfig()
        n = self.cfg.n_items
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2 * n,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.cfg.action_dim,), dtype=np.float32)
        self.grid = ProtoGrid(self.cfg) if self.cfg.head == "proto" else None
        self._forged: dict[int, tuple[float, float]] = {}
        self._w = self._v = np.zeros(n)

    # -- reports ------------------------------------------------------------------------------
    def report_override(self, item: int, report: tuple[float, float] | None) -> None:
        """Make ``item`` report ``(weight, value)`` every episode (``None`` clears it).

        Example:
            >>> KnapsackEnv().report_override(9, (0.2, 0.9))
        """
        item_indices(self.cfg.n_items, int(item))
        if report is None:
            self._forged.pop(int(item), None)
            return
        w, v = (float(x) for x in report)
        if not (0.0 <= w <= 1.0 and 0.0 <= v <= 1.0):
            raise KnapsackConfigError(f"a report must lie in [0, 1]^2, got ({w}, {v})")
        self._forged[int(item)] = (w, v)

    def reports(self) -> tuple[np.ndarray, np.ndarray]:
        """``(w_rep, v_rep)`` of the current instance."""
        w, v = self._w.copy(), self._v.copy()
        for i, (fw, fv) in self._forged.items():
            w[i], v[i] = fw, fv
        return w, v

    def _obs(self) -> np.ndarray:
        w, v = self.reports()
        return np.concatenate([w, v]).astype(np.float32)

    # -- gym API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        inst = (options or {}).get("instance")
        if inst is not None:
            w, v = (np.asarray(x, dtype=float).reshape(-1) for x in inst)
            if w.shape != (self.cfg.n_items,) or v.shape != w.shape:
                raise KnapsackConfigError(f"an instance needs {self.cfg.n_items} weights and values")
            self._w, self._v = w.copy(), v.copy()
        else:
            w, v = sample_instances(1, self.cfg.n_items, self.np_random)
            self._w, self._v = w[0], v[0]
        return self._obs(), {}

    def decode(self, action: np.ndarray) -> np.ndarray:
        """Selection mask ``[n]`` that ``action`` stands for, on the current reports."""
        a = np.asarray(action, dtype=np.float64).reshape(1, -1)
        if self.grid is not None:
            return self.grid.masks[self.grid.nearest(a)[0]].copy()
        w_rep, _ = self.reports()
        return decode_scores(a, w_rep[None], believed_capacity(self.cfg, w_rep[None]))[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        mask = self.decode(action)
        w_rep, v_rep = self.reports()
        cap = true_capacity(self.cfg, self._w[None])
        reward, feasible = outcome(mask[None], self._w[None], self._v[None], cap)
        opt = exact_solve(self._w[None], self._v[None], cap)
        info = {
            "selected": mask,
            "value": float(reward[0]),
            "weight": float(self._w[mask].sum()),
            "feasible": bool(feasible[0]),
            "reported_feasible": bool(w_rep[mask].sum() <= believed_capacity(self.cfg, w_rep[None])[0] + 1e-12),
            "capacity": float(cap[0]),
            "optimum": float(outcome(opt, self._w[None], self._v[None], cap)[0][0]),
            "w_true": self._w.copy(), "v_true": self._v.copy(), "w_rep": w_rep, "v_rep": v_rep,
        }
        return self._obs(), float(reward[0]), True, False, info
