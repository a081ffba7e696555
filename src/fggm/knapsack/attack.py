"""FGGM on the knapsack solver: the knapsack problem plugged into :mod:`fggm.core`.

Attackers own a few items and forge their reported ``(weight, value)`` within stated bounds
(default ``[0, 1]`` each, the support of honest reports); the forgery is FIXED: the same for
every instance.  Every other entry of the observation (the other items' reports) is assumed to
lie in the normaliser's box ``mean +- k sigma`` clamped into ``[0, 1]`` (so for k >= about 1.73
the box is every possible instance).  Goals:

* ``exclude`` -- keep the victim items out of the selection;
* ``include`` -- get every attacker item in;
* ``infeasible`` -- make the chosen set physically infeasible: the attackers report the lowest
  allowed weight (pinned) and forge values that get their items in; their TRUE weights then
  overflow the capacity whenever the rest of the knapsack is nearly full.

What is certified, by head:

* ``scores``: a specification matrix on the ten pre-tanh scores, bounded by CROWN over the box
  (``fggm.core.spec.MatrixSpec``).  ``exclude``: every victim's score ``< -margin`` (then the
  decoder never takes it); ``include`` / ``infeasible``: every attacker's score ``> margin`` and
  ``margin`` above every other item's (then the attackers are taken first, and their reported
  weights fit).  Whether ``infeasible`` then happens depends on the true weights: empirical.
* ``proto``: the certified box of proto-actions (CROWN bounds of the 5 pre-tanh outputs) and the
  set of grid points that can be among the ``knn_k`` nearest of any proto-action in it
  (:meth:`fggm.knapsack.env.ProtoGrid.reachable`).  Proved when every reachable candidate
  satisfies the goal (the critic's choice then does not matter); otherwise the share of
  reachable candidates that satisfy it is reported, and which one the critic picks is empirical.

Example:
    >>> victim = KnapsackVictim.load("data/knapsack/solver10")                    # doctest: +SKIP
    >>> res = craft(victim, KnapsackThreat(attackers=(0, 1), victims=(2,)))       # doctest: +SKIP
    >>> res.forged, res.certificate["certified_k"]                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fggm.core.attack import BoxProblem, Search, bisect_k, certify, double, eot_search, ladder_search, mean_point_search
from fggm.core.files import read_format, write_json
from fggm.core.spec import MatrixSpec, atanh_ends
from fggm.core.threat import AttackError, BoundedEntries, NormaliserStats, check_search, coverage, parse_ids
from fggm.knapsack.config import KnapsackConfig
from fggm.knapsack.env import ProtoGrid, item_indices
from fggm.knapsack.solvers import PolicySolver

__all__ = ["GOALS", "METHODS", "KnapsackThreat", "KnapsackVictim", "KnapsackSetup", "KnapsackAttack", "craft",
           "FORMAT"]

GOALS = ("exclude", "include", "infeasible")
METHODS = ("fggm", "fggm-ibp", "mean-pgd", "eot-pgd", "random")
FORMAT = "fggm-knapsack-attack/1"


@dataclass(frozen=True)
class KnapsackThreat:
    """Who forges what, the goal, what the attackers assume, and how they search.

    Attributes:
        attackers: items whose owners forge their reports.
        victims: items to keep out (``exclude``; disjoint from ``attackers``; ignored otherwise).
        goal: ``exclude``, ``include`` or ``infeasible`` (see the module docstring).
        k: box half-width in normaliser standard deviations for every other entry.
        weight_bounds, value_bounds: the forged reports' allowed ranges.
        margin: pre-tanh margin every spec row must clear (robustness to rounding and ties).
        domain, step_rule, steps, step_size, restarts, seed: the search (step_size is a
            fraction of the forged range per step).

    Example:
        >>> KnapsackThreat(attackers=(1, 0), victims=(2,)).attackers
        (0, 1)
    """

    attackers: tuple[int, ...] = (0, 1)
    victims: tuple[int, ...] = (2,)
    goal: str = "exclude"
    k: float = 3.0
    weight_bounds: tuple[float, float] = (0.0, 1.0)
    value_bounds: tuple[float, float] = (0.0, 1.0)
    margin: float = 0.05
    domain: str = "crown"
    step_rule: str = "sign"
    steps: int = 60
    step_size: float = 0.1
    restarts: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attackers", parse_ids(self.attackers, "attackers", "item"))
        if self.goal not in GOALS:
            raise AttackError(f"goal must be one of {', '.join(GOALS)}, got {self.goal!r}")
        victims = parse_ids(self.victims, "victims", "item") if self.goal == "exclude" else \
            tuple(sorted(int(v) for v in self.victims))
        object.__setattr__(self, "victims", victims)
        both = sorted(set(self.attackers) & set(self.victims))
        if both:
            raise AttackError(f"attackers and victims overlap in item(s) {both}")
        for name in ("weight_bounds", "value_bounds"):
            lo, hi = (float(x) for x in getattr(self, name))
            if not 0.0 <= lo <= hi <= 1.0:
                raise AttackError(f"{name} must satisfy 0 <= low <= high <= 1, got [{lo}, {hi}]")
            object.__setattr__(self, name, (lo, hi))
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise AttackError(f"margin must be >= 0, got {self.margin}")
        check_search(self.k, self.domain, self.step_rule, self.steps, self.restarts, self.step_size)

    def check_env(self, n_items: int) -> None:
        """Raise :class:`AttackError` for items that do not exist, or no honest item left.

        Example:
            >>> KnapsackThreat().check_env(10)
        """
        unknown = sorted(i for i in self.attackers + self.victims if i >= n_items)
        if unknown:
            raise AttackError(f"unknown item(s) {unknown}: the instances have items 0..{n_items - 1}")
        if len(self.attackers) >= n_items:
            raise AttackError("every item is an attacker: nothing is left to attack")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what the attack JSON stores).

        Example:
            >>> KnapsackThreat().to_dict()["goal"]
            'exclude'
        """
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KnapsackThreat":
        """Inverse of :meth:`to_dict` (unknown keys are an error).

        Example:
            >>> KnapsackThreat.from_dict(KnapsackThreat().to_dict()) == KnapsackThreat()
            True
        """
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise AttackError(f"unknown threat-model key(s): {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class KnapsackVictim:
    """What the attackers know: the attacker's view of the actor (normaliser -> clip -> MLP -> pre-tanh
    head) and the normaliser's statistics; plus the SB3 model (its critic for the ``proto`` head)
    and the config.

    Example:
        >>> # KnapsackVictim.load("data/knapsack/solver10").view(torch.zeros(1, 20)).shape == (1, 10)
    """

    view: nn.Sequential
    stats: NormaliserStats
    config: KnapsackConfig
    model: Any = None
    vecnormalize: Any = None
    source: str = ""

    @classmethod
    def load(cls, solver_dir: str | Path) -> "KnapsackVictim":
        """Load a checkpoint written by :func:`fggm.knapsack.train.train`.

        Example:
            >>> KnapsackVictim.load("data/knapsack/solver10").config.env.n_items   # doctest: +SKIP
            10
        """
        from fggm.knapsack.train import load_solver
        from fggm.mimo.policy import extract_policy  # SB3-generic actor extraction (see the package docstring)

        model, vecnorm, cfg = load_solver(solver_dir)
        return cls(view=extract_policy(model, vecnorm), stats=NormaliserStats.from_vecnormalize(vecnorm), config=cfg,
                   model=model, vecnormalize=vecnorm, source=str(solver_dir))

    def solver(self, name: str = "sac") -> PolicySolver:
        """The victim as a :class:`~fggm.knapsack.solvers.PolicySolver` (what evaluation runs)."""
        return PolicySolver(self.model, self.vecnormalize, self.config.env, name=name)


def goal_met(threat: KnapsackThreat, masks: np.ndarray) -> np.ndarray:
    """Per selection ``[B, n]``: whether the goal's selection condition holds (``exclude``: no
    victim selected; ``include`` / ``infeasible``: every attacker selected).

    Example:
        >>> goal_met(KnapsackThreat(victims=(2,)), np.array([[True, True, False], [False, False, True]])).tolist()
        [True, False]
    """
    m = np.atleast_2d(masks)
    if threat.goal == "exclude":
        return ~m[:, list(threat.victims)].any(1)
    return m[:, list(threat.attackers)].all(1)


@dataclass
class KnapsackSetup:
    """The core problem for one (victim, threat): controlled entries, box, spec; plus, for the
    ``proto`` head, the grid and the cells targeted.

    Example:
        >>> # setup = KnapsackSetup.build(victim, KnapsackThreat()); setup.problem.box(x)
    """

    victim: KnapsackVictim
    threat: KnapsackThreat
    problem: BoxProblem
    grid: ProtoGrid | None = None
    targets: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, victim: KnapsackVictim, threat: KnapsackThreat) -> "KnapsackSetup":
        env = victim.config.env
        n = env.n_items
        threat.check_env(n)
        if victim.stats.mean.shape != (env.obs_dim,):
            raise AttackError(f"normaliser has {victim.stats.mean.shape[0]} entries, the instances {env.obs_dim}")
        idx, lo, hi = [], [], []
        (wl, wh), (vl, vh) = threat.weight_bounds, threat.value_bounds
        if threat.goal == "infeasible":
            wh = wl  # the lowest allowed weight: the most the true weight can overflow
        for a in threat.attackers:
            idx.extend(item_indices(n, a).tolist())
            lo.extend([wl, vl])
            hi.extend([wh, vh])
        start = torch.tensor(victim.stats.mean[idx], dtype=torch.float32)
        ctl = BoundedEntries(torch.tensor(idx), torch.tensor(lo), torch.tensor(hi), start=start)
        phys_lo, phys_hi = np.zeros(env.obs_dim), np.ones(env.obs_dim)
        grid, targets = None, []
        if env.head == "scores":
            spec = _score_spec(threat, n)
        else:
            grid = ProtoGrid(env)
            spec, targets = _proto_spec(threat, grid, env.grid_levels)
        problem = BoxProblem(victim.view, victim.stats, ctl, spec, threat.k, threat.domain, phys_lo, phys_hi)
        return cls(victim=victim, threat=threat, problem=problem, grid=grid, targets=targets)

    def forged_of(self, x: torch.Tensor) -> dict[int, tuple[float, float]]:
        """``{item: (weight, value)}`` of parameters ``x [1, 2A]``."""
        v = x.detach().double().reshape(-1).numpy()
        return {a: (float(v[2 * i]), float(v[2 * i + 1])) for i, a in enumerate(self.threat.attackers)}

    def params_of(self, forged: dict[int, tuple[float, float]]) -> torch.Tensor:
        """Inverse of :meth:`forged_of`: ``[1, 2A]``."""
        return torch.tensor([[c for a in self.threat.attackers for c in forged[a]]], dtype=torch.float32)

    def candidates(self, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
        """(proto head) Grid points reachable as k-NN candidates from the certified pre-tanh box."""
        assert self.grid is not None
        return self.grid.reachable(np.tanh(lb), np.tanh(ub))

    def certificate(self, lb: torch.Tensor, ub: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
        """What one forgery's float64 bounds prove (see the module docstring)."""
        env = self.victim.config.env
        lb_n, ub_n = lb.reshape(-1).numpy(), ub.reshape(-1).numpy()
        if self.grid is None:
            proved = self.problem.spec.which(lb, ub) is not None
            fits = True
            if self.threat.goal != "exclude":  # the attackers, taken first, must fit in the believed capacity
                w = sum(f[0] for f in self.forged_of(x).values())
                cap_lo = env.capacity_ratio * (env.n_items if env.capacity == "fixed"
                                               else float(self.problem.box(x)[0][0, : env.n_items].sum()))
                fits = w <= cap_lo
            d = self.problem.spec.d.numpy()  # type: ignore[attr-defined]
            return {"proved": bool(proved and fits), "rows_proved_share": float((lb_n >= d).mean()),
                    "spec_rows_bound": [lb_n.tolist(), ub_n.tolist()], "attackers_fit": fits, "head": "scores"}
        # proto head: the certified proto-action region and the candidates it can reach
        view_lb, view_ub = self._proto_box(x)
        reach = self.grid.reachable(np.tanh(view_lb), np.tanh(view_ub))
        ok = goal_met(self.threat, self.grid.masks[reach])
        return {"proved": bool(ok.all()), "head": "proto", "proto_box": [np.tanh(view_lb).tolist(),
                                                                         np.tanh(view_ub).tolist()],
                "reachable_candidates": int(reach.sum()), "candidate_goal_share": float(ok.mean()),
                "target_cell_proved": self.problem.spec.which(lb, ub) is not None,
                "empirical": "which reachable candidate the critic picks"}

    def _proto_box(self, x: torch.Tensor, k: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        prob = self.problem if k is None else self.problem.at_k(k)
        with torch.no_grad():
            l, u = prob.bound(x, "crown", torch.float64, double(self.victim.view))
            il, iu = prob.bound(x, "ibp", torch.float64, double(self.victim.view))
        return torch.maximum(l, il)[0].numpy(), torch.minimum(u, iu)[0].numpy()

    def proto_certified_k(self, x: torch.Tensor, iters: int = 12) -> float:
        """(proto head) Largest k (bisection) at which every reachable candidate meets the goal."""
        def proved(k: float) -> bool:
            lo, up = self._proto_box(x, k)
            assert self.grid is not None
            return bool(goal_met(self.threat, self.grid.masks[self.grid.reachable(np.tanh(lo), np.tanh(up))]).all())

        if proved(self.threat.k):
            return self.threat.k
        return bisect_k(proved, self.threat.k, iters)


def _score_spec(threat: KnapsackThreat, n: int) -> MatrixSpec:
    rows: list[torch.Tensor] = []
    if threat.goal == "exclude":
        for j in threat.victims:
            rows.append(-torch.eye(n)[j])
    else:
        others = [i for i in range(n) if i not in threat.attackers]
        for a in threat.attackers:
            rows.append(torch.eye(n)[a])
            rows.extend(torch.eye(n)[a] - torch.eye(n)[i] for i in others)
    C = torch.stack(rows)
    return MatrixSpec(C, torch.full((C.shape[0],), threat.margin))


def _proto_spec(threat: KnapsackThreat, grid: ProtoGrid, levels: int, n_targets: int = 8) -> tuple[MatrixSpec, list[int]]:
    """Target cells: the grid points whose own k-NN candidates best meet the goal."""
    share = np.array([goal_met(threat, grid.masks[c]).mean() for c in grid.knn(grid.points)])
    own = goal_met(threat, grid.masks)
    order = np.lexsort((-own.astype(float), -share))[:n_targets]
    half = 1.0 / (levels - 1)
    pts = grid.points[order].astype(np.float64)
    margin = 0.01 * half
    lo = np.where(pts <= -1 + 1e-9, -np.inf, atanh_ends(np.clip(pts - half + margin, -1, 1)))
    hi = np.where(pts >= 1 - 1e-9, np.inf, atanh_ends(np.clip(pts + half - margin, -1, 1)))
    return MatrixSpec.boxes(torch.tensor(lo), torch.tensor(hi)), [int(i) for i in order]


# ------------------------------------------------------------------------------ result


@dataclass
class KnapsackAttack:
    """A crafted forgery: ``{item: (weight, value)}``, its certificate and how it was made.

    Example:
        >>> # craft(victim, KnapsackThreat()).save("runs/knapsack-attack.json")
    """

    attack: str
    threat: KnapsackThreat
    forged: dict[int, tuple[float, float]]
    certificate: dict[str, Any]
    solver: str = ""
    n_items: int = 10
    head: str = "scores"
    steps_done: int = 0
    wall_s: float = 0.0
    history: list[float] = field(default_factory=list)
    ladder: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the knapsack attack JSON schema)."""
        import stable_baselines3

        return {"format": FORMAT, "attack": self.attack, "threat_model": self.threat.to_dict(),
                "forged": {str(i): {"weight": w, "value": v} for i, (w, v) in self.forged.items()},
                "certificate": {**self.certificate, "domain": self.threat.domain, "k": self.threat.k},
                "solver": self.solver, "env": {"n_items": self.n_items, "head": self.head},
                "seed": self.threat.seed, "steps_done": self.steps_done, "wall_s": round(self.wall_s, 3),
                "loss_history": [round(v, 6) for v in self.history], "ladder": self.ladder,
                "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                             "stable_baselines3": stable_baselines3.__version__}}

    def save(self, path: str | Path) -> Path:
        """Write the attack JSON (parents created); returns the path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "KnapsackAttack":
        """Read an attack JSON written by :meth:`save`.

        Example:
            >>> # KnapsackAttack.load("runs/knapsack-attack.json").forged
        """
        d = read_format(path, FORMAT, AttackError, "a knapsack attack file")
        cert = {k: v for k, v in d["certificate"].items() if k not in ("domain", "k")}
        return cls(attack=d["attack"], threat=KnapsackThreat.from_dict(d["threat_model"]),
                   forged={int(i): (float(f["weight"]), float(f["value"])) for i, f in d["forged"].items()},
                   certificate=cert, solver=d.get("solver", ""), n_items=int(d["env"]["n_items"]),
                   head=d["env"].get("head", "scores"), steps_done=int(d.get("steps_done", 0)),
                   wall_s=float(d.get("wall_s", 0.0)), history=list(d.get("loss_history", [])),
                   ladder=list(d.get("ladder", [])))


# ------------------------------------------------------------------------------ crafting


def craft(victim: KnapsackVictim | str | Path, threat: KnapsackThreat, method: str = "fggm", *,
          on_step: Callable[[int, float], None] | None = None) -> KnapsackAttack:
    """Craft one fixed forgery with ``method``: ``fggm`` (certified bounds, CROWN), ``fggm-ibp``
    (the IBP ablation), ``mean-pgd`` (the normaliser's mean instance), ``eot-pgd`` (expected margin
    over instances sampled from the normaliser's Gaussian, clipped into [0, 1]) or ``random``
    (uniform in the forgery bounds).  Every result is certified the same way.

    Example:
        >>> # craft("data/knapsack/solver10", KnapsackThreat(goal="include"), "eot-pgd").forged
    """
    if method not in METHODS:
        raise AttackError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(victim, KnapsackVictim):
        victim = KnapsackVictim.load(victim)
    t0 = time.perf_counter()
    tm = replace(threat, domain="ibp") if method == "fggm-ibp" else threat
    setup = KnapsackSetup.build(victim, tm)
    ctl = setup.problem.controlled
    x0 = ctl.init(tm.restarts, tm.seed)
    ladder: list[dict[str, Any]] = []
    if method in ("fggm", "fggm-ibp"):
        s = ladder_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size, seed=tm.seed, on_step=on_step)
        ladder = s.ladder
    elif method == "mean-pgd":
        s = mean_point_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size)
    elif method == "eot-pgd":
        s = eot_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size, seed=tm.seed)
    else:
        x = ctl.sample(1, tm.seed + 7919)
        with torch.no_grad():
            s_loss = setup.problem.loss(x)
        s = Search(x, s_loss, [float(s_loss)], 0)
    cert = certify(setup.problem, s.x, s.loss)
    c = setup.certificate(cert.lb, cert.ub, cert.x)
    if setup.grid is None:
        c["certified_k"] = cert.certified_k if c["attackers_fit"] else 0.0
    else:
        c["certified_k"] = setup.proto_certified_k(cert.x)
        c["target_cell_certified_k"] = cert.certified_k
    return KnapsackAttack(attack=method, threat=tm, forged=setup.forged_of(cert.x), certificate=c,
                          solver=victim.source, n_items=victim.config.env.n_items, head=victim.config.env.head,
                          steps_done=s.steps, wall_s=time.perf_counter() - t0, history=s.history, ladder=ladder)


def coverages(setup: KnapsackSetup, obs: np.ndarray, certified_k: float) -> tuple[float, float]:
    """``(coverage, certified coverage)``: shares of observations ``[B, 2n]`` whose uncontrolled
    entries all lie in the box at ``k`` and at ``certified_k``.

    Example:
        >>> # coverages(setup, obs, res.certificate["certified_k"])
    """
    ctl = setup.problem.controlled.indices.numpy()
    lo, up = setup.problem.base_lo.numpy(), setup.problem.base_up.numpy()
    cov = coverage(obs, lo, up, ctl)
    if certified_k <= 0:
        return cov, 0.0
    sub = setup.problem.at_k(certified_k)
    return cov, coverage(obs, sub.base_lo.numpy(), sub.base_up.numpy(), ctl)
