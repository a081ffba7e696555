"""The FGGM loop, its certificate and the point baselines, for any problem (knows none).

A :class:`BoxProblem` ties together the attacker's view of the policy (an ``nn.Sequential`` from
raw observations to the head's pre-squash output), the normaliser's box at ``k`` over every
entry the attackers do not control, the :class:`~fggm.core.threat.Controlled` map that writes
the forged parameters into the observation, and the goal as a :class:`~fggm.core.spec.Spec`.

* :func:`ladder_search` -- FGGM: gradient steps on the forged parameters through the certified
  bounds (:func:`fggm.core.bounds.crown` or ``ibp``), along a ladder of growing boxes, so that
  the largest box it can certify is found within the step budget.
* :func:`certify` -- the best restart's certificate in float64 (CROWN and IBP intersected) and
  the largest ``k`` at which it is proved (bisection).
* :func:`mean_point_search` / :func:`eot_search` -- the grey-box baselines: the same search on
  the normaliser's mean observation, or on the expected margin over observations sampled from
  the normaliser's Gaussian (EOT-PGD); no bounds.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from fggm.core.spec import MatrixSpec
    >>> from fggm.core.threat import BoundedEntries, NormaliserStats
    >>> _ = torch.manual_seed(0); view = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> problem = BoxProblem(view, NormaliserStats(np.zeros(3), np.ones(3), 1e-8, 10.0),
    ...                      BoundedEntries(torch.tensor([0]), -torch.ones(1), torch.ones(1)),
    ...                      MatrixSpec(torch.tensor([[1.0, -1.0]]), torch.zeros(1)), k=0.1)
    >>> search = ladder_search(problem, problem.controlled.init(2, 0), steps=10)
    >>> cert = certify(problem, search.x, search.loss)
    >>> cert.x.shape[0], cert.certified_k <= 0.1
    (1, True)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fggm.core import bounds
from fggm.core.spec import Spec
from fggm.core.threat import Controlled, NormaliserStats

__all__ = ["BoxProblem", "Search", "Certified", "optimise", "ladder_search", "certify", "certified_k", "bisect_k",
           "prove_split", "mean_point_search", "eot_search", "double"]


@dataclass
class BoxProblem:
    """One attack on one policy: view, box at ``k``, controlled entries, goal, abstract domain.

    ``phys_lo`` / ``phys_hi`` clamp the box into the observation's physical limits (``None``:
    none).  ``tighten`` (optional) maps the float64 box ``(lo, up)`` to a smaller one using what
    the attackers know for sure about the problem (e.g. one entry is a function of others); it
    must only remove points no real observation can take.  ``base_lo`` / ``base_up`` (float32
    ``[obs]``) are the box of every entry; the controlled entries are overwritten by :meth:`box`.

    Example:
        >>> # problem.at_k(0.5).box(x)[0].shape == (x.shape[0], obs_dim)
    """

    view: nn.Module
    stats: NormaliserStats
    controlled: Controlled
    spec: Spec
    k: float
    domain: str = "crown"
    phys_lo: np.ndarray | None = None
    phys_hi: np.ndarray | None = None
    tighten: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    base_lo: torch.Tensor = field(init=False)
    base_up: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        lo, up = self.stats.box(self.k, self.phys_lo, self.phys_hi)
        if self.tighten is not None:
            lo, up = self.tighten(lo, up)
        self.base_lo = torch.tensor(lo, dtype=torch.float32)
        self.base_up = torch.tensor(up, dtype=torch.float32)

    def at_k(self, k: float) -> "BoxProblem":
        """The same problem on the box of half-width ``k``."""
        return replace(self, k=k)

    @property
    def net(self) -> nn.Module:
        """What is bounded: the spec's network on the view."""
        return self.spec.network(self.view)

    def box(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners ``[B, obs]`` with the controlled entries set from parameters ``x [B, ...]``."""
        B = x.shape[0]
        lo = self.base_lo.to(dtype).expand(B, -1).clone()
        up = self.base_up.to(dtype).expand(B, -1).clone()
        idx = self.controlled.indices
        v_lo, v_up = self.controlled.values_box(x.to(dtype), self.base_lo[idx].to(dtype), self.base_up[idx].to(dtype))
        lo = lo.index_put((torch.arange(B)[:, None], idx[None, :]), v_lo)
        up = up.index_put((torch.arange(B)[:, None], idx[None, :]), v_up)
        return lo, up

    def point(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Observations ``obs [B, obs]`` as the policy sees them under parameters ``x``
        (:meth:`Controlled.apply`: the controlled entries replaced or transformed)."""
        return self.controlled.apply(x, obs)

    def mean_observation(self) -> torch.Tensor:
        """The normaliser's mean observation, within the box (physical limits applied), ``[obs]``."""
        m = torch.tensor(self.stats.mean, dtype=torch.float32)
        return torch.minimum(torch.maximum(m, self.base_lo), self.base_up)

    def bound(self, x: torch.Tensor, domain: str | None = None, dtype: torch.dtype = torch.float32,
              net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified bounds ``[B, rows]`` of the spec's network over the box of each ``x``."""
        lo, up = self.box(x, dtype)
        net = net if net is not None else self.net
        if (domain or self.domain) == "crown":
            return bounds.crown(net, lo, up)
        return bounds.ibp(net, lo, up)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` distance from a certificate: the best alternative's cost (float64)."""
        lb, ub = self.bound(x)
        return self.spec.costs(lb.double(), ub.double()).min(-1).values


@dataclass
class Search:
    """Result of a search: each restart's best parameters and loss, the best-loss history, steps
    used and (FGGM) the ladder of boxes tried.

    Example:
        >>> Search(torch.zeros(1, 2), torch.zeros(1), [0.0], 0).steps
        0
    """

    x: torch.Tensor
    loss: torch.Tensor
    history: list[float]
    steps: int
    ladder: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Certified:
    """The best restart ``x [1, ...]``, its float64 bounds ``[1, rows]`` (CROWN and IBP intersected),
    the alternative proved on the full box (``None`` if none) and the largest ``k`` proved.

    Example:
        >>> Certified(torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1, 1), None, 0.0).proved
        False
    """

    x: torch.Tensor
    lb: torch.Tensor
    ub: torch.Tensor
    alternative: int | None
    certified_k: float

    @property
    def proved(self) -> bool:
        """Whether the goal holds for every observation of the full box."""
        return self.alternative is not None


def optimise(controlled: Controlled, loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
             steps: int, step_rule: str, step_size: float,
             done: Callable[[torch.Tensor], torch.Tensor] | None = None,
             on_step: Callable[[int, float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """Projected descent of ``loss_fn`` (``[B]``, one per restart); keeps each restart's best point.

    ``sign``: steps of ``controlled.step_scale(step_size)`` times the gradient's sign, decaying
    linearly to a tenth; ``adam``: Adam with that learning rate.  Returns the best points, their
    losses, the history of the best loss, and the number of steps taken (stops early when
    ``done(best_loss)`` holds for any restart).

    Example:
        >>> # x, loss, history, used = optimise(ctl, problem.loss, ctl.init(4, 0), 60, "sign", 0.2)
    """
    scale = controlled.step_scale(step_size)
    x = x0.clone().requires_grad_(True)
    best_x, best_loss = x0.clone(), torch.full((x0.shape[0],), float("inf"))
    opt = torch.optim.Adam([x], lr=scale) if step_rule == "adam" else None
    history: list[float] = []
    step = 0
    for step in range(steps + 1):
        loss = loss_fn(x)
        with torch.no_grad():
            better = loss.detach() < best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_x[better] = x.detach()[better]
        history.append(float(best_loss.min()))
        if on_step is not None:
            on_step(step, history[-1])
        if step == steps or (done is not None and bool(done(best_loss).any())):
            break
        grad = torch.autograd.grad(loss.sum(), x)[0]
        with torch.no_grad():
            if opt is None:
                decay = 1.0 - 0.9 * step / max(steps - 1, 1)
                x -= scale * decay * grad.sign()
            else:
                x.grad = grad
                opt.step()
            x.copy_(controlled.project(x))
    return best_x, best_loss, history, step


def ladder_search(problem: BoxProblem, x0: torch.Tensor, steps: int, step_rule: str = "sign", step_size: float = 0.2,
                  *, rungs: int = 12, seed: int = 0,
                  on_step: Callable[[int, float], None] | None = None) -> Search:
    """FGGM: minimise :meth:`BoxProblem.loss` along a ladder of boxes ``k/2^(rungs-1), ..., k``.

    Each rung starts from the best parameters so far (and jittered copies as the other
    restarts) and stops as soon as one restart is certified; a certified rung doubles ``k`` (up
    to the full box), a failed one bisects between the last certified and the failed ``k``; the
    ladder ends on the full box, when the bracket is within 10%, or when ``steps`` run out.
    The result holds the parameters certified on the largest box reached (or, if none, the
    closest to a certificate).

    Example:
        >>> # search = ladder_search(problem, ctl.init(4, 0), steps=60)
    """
    ctl = problem.controlled
    x = x0
    gen = torch.Generator().manual_seed(seed + 1)
    history: list[float] = []
    log: list[dict[str, Any]] = []
    best_x, best_loss = x, torch.full((x.shape[0],), float("inf"))
    budget, done_steps = steps, 0
    chunk = max(4, steps // 8)
    k_try, k_ok, k_fail = problem.k / 2 ** (max(1, rungs) - 1), 0.0, None
    while budget > 0:
        rung = problem.at_k(k_try)
        offset = len(history)
        rx, rloss, rhist, used = optimise(
            ctl, rung.loss, x, min(chunk, budget), step_rule, step_size, done=lambda bl: bl <= 0,
            on_step=(lambda j, v, o=done_steps: on_step(o + j, v)) if on_step else None)
        history.extend(rhist)
        budget, done_steps = budget - max(used, 1), done_steps + used
        ok = bool((rloss <= 0).any())
        log.append({"k": k_try, "start": offset, "steps": used, "certified": ok, "loss": float(rloss.min())})
        if ok:
            best_x, best_loss, k_ok = rx, rloss, k_try
            if k_try >= problem.k:
                break  # proved on the full box
            if k_fail is not None and k_fail / k_ok < 1.1:
                break  # bracketed to within 10%
            k_try = min(problem.k, 2 * k_try) if k_fail is None else math.sqrt(k_ok * k_fail)
        else:
            if k_ok == 0.0 and (len(log) == 1 or float(rloss.min()) < float(best_loss.min())):
                best_x, best_loss = rx, rloss  # nothing certified yet: keep the closest
            k_fail = k_try
            if k_ok == 0.0:
                k_try = k_try / 2  # not even the smallest box: shrink
            else:
                if k_fail / k_ok < 1.1:
                    break
                k_try = math.sqrt(k_ok * k_fail)
        j = int(torch.argmin(best_loss))
        noise = torch.randn(best_x.shape, generator=gen) * ctl.step_scale(0.05)
        x = ctl.project(best_x[j : j + 1] + noise)
        x[0] = best_x[j]
    return Search(best_x, best_loss, history, done_steps, log)


def double(net: nn.Module) -> nn.Module:
    """A float64 copy of a network (for the final certificate).

    Example:
        >>> next(double(nn.Linear(2, 1)).parameters()).dtype
        torch.float64
    """
    return copy.deepcopy(net).double()


def certified_k(problem: BoxProblem, x: torch.Tensor, net64: nn.Module, proved_full: bool, iters: int = 12) -> float:
    """Largest ``k' <= problem.k`` (bisection, float64 CROWN) at which parameters ``x [1, ...]`` are proved.

    0 when not even a box of ``1e-6 k`` around the normaliser mean is proved.

    Example:
        >>> # certified_k(problem, x, double(problem.net), proved_full=False)
    """
    if proved_full:
        return problem.k

    def proved(k: float) -> bool:
        sub = problem.at_k(k)
        with torch.no_grad():
            l, u = sub.bound(x, "crown", torch.float64, net64)
        return sub.spec.which(l[0], u[0]) is not None

    return bisect_k(proved, problem.k, iters)


def bisect_k(proved: Callable[[float], bool], k_max: float, iters: int = 12) -> float:
    """Largest ``k <= k_max`` found by bisection where ``proved(k)`` holds (assumed monotone: a
    smaller box is easier); 0 when not even ``1e-6 k_max`` is proved.  The caller checks ``k_max``.

    Example:
        >>> round(bisect_k(lambda k: k <= 1.5, 3.0, iters=20), 3)
        1.5
    """
    lo, hi = 0.0, k_max
    if not proved(1e-6 * hi):
        return 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if proved(mid) else (lo, mid)
    return lo


def prove_split(problem: BoxProblem, x: torch.Tensor, max_leaves: int = 16, net64: nn.Module | None = None) -> tuple[bool, int]:
    """Prove the goal on the box of parameters ``x [1, ...]`` by input splitting (branch and bound
    on the input): bound the box with float64 CROWN; while some leaf is not proved, split the
    worst leaf in half along the coordinate whose width times the cost's sensitivity to its
    corners is largest.  The goal holds on the box when every leaf proves some alternative (not
    necessarily the same one).  Returns ``(proved, leaves used)``; gives up after ``max_leaves``.

    Example:
        >>> # proved, leaves = prove_split(problem.at_k(0.2), cert.x, max_leaves=32)
    """
    net64 = net64 if net64 is not None else double(problem.net)
    lo0, up0 = problem.box(x, torch.float64)
    ctl = problem.controlled.indices

    def cost(lo: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        lb, ub = bounds.crown(net64, lo, up)
        return problem.spec.costs(lb, ub).min(-1).values

    leaves = [(lo0, up0)]
    used = 1
    while True:
        costs = [float(cost(lo, up)) for lo, up in leaves]
        open_ = [i for i, c in enumerate(costs) if c > 0]
        if not open_:
            return True, used
        if used >= max_leaves:
            return False, used
        i = max(open_, key=lambda j: costs[j])
        lo, up = leaves.pop(i)
        lo_g, up_g = lo.clone().requires_grad_(True), up.clone().requires_grad_(True)
        g_lo, g_up = torch.autograd.grad(cost(lo_g, up_g).sum(), (lo_g, up_g))
        score = ((g_lo.abs() + g_up.abs()) * (up - lo))[0]
        score[ctl] = -1.0  # the attackers' own entries are never split
        d = int(torch.argmax(score))
        if float(score[d]) <= 0:
            leaves.insert(i, (lo, up))
            return False, used
        mid = (lo[0, d] + up[0, d]) / 2
        left_up, right_lo = up.clone(), lo.clone()
        left_up[0, d], right_lo[0, d] = mid, mid
        leaves += [(lo, left_up), (right_lo, up)]
        used += 1


def certify(problem: BoxProblem, best_x: torch.Tensor, best_loss: torch.Tensor) -> Certified:
    """Pick the best restart and certify it in float64 (CROWN and IBP intersected).

    Example:
        >>> # cert = certify(problem, search.x, search.loss); cert.proved, cert.certified_k
    """
    i = int(torch.argmin(best_loss))
    x = best_x[i : i + 1]
    net64 = double(problem.net)
    with torch.no_grad():
        cl, cu = problem.bound(x, "crown", torch.float64, net64)
        il, iu = problem.bound(x, "ibp", torch.float64, net64)
        lb, ub = torch.maximum(cl, il), torch.minimum(cu, iu)
    alt = problem.spec.which(lb[0], ub[0])
    return Certified(x, lb, ub, alt, certified_k(problem, x, net64, alt is not None))


def mean_point_search(problem: BoxProblem, x0: torch.Tensor, steps: int, step_rule: str = "sign",
                      step_size: float = 0.2) -> Search:
    """Baseline: minimise the spec's point margin at the normaliser's mean observation (no bounds).

    Example:
        >>> # search = mean_point_search(problem, ctl.init(4, 0), 60)
    """
    obs = problem.mean_observation().unsqueeze(0)
    net = problem.net

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        y = net(problem.point(x, obs.expand(x.shape[0], -1)))
        return problem.spec.point_margin(y.double())

    bx, bl, hist, used = optimise(problem.controlled, loss_fn, x0, steps, step_rule, step_size)
    return Search(bx, bl, hist, used)


def eot_search(problem: BoxProblem, x0: torch.Tensor, steps: int, step_rule: str = "sign", step_size: float = 0.2,
               *, samples: int = 256, seed: int = 0) -> Search:
    """Baseline (EOT-PGD): minimise the expected point margin over ``samples`` observations drawn
    once from the normaliser's Gaussian and clipped into the physical limits (no bounds).

    Example:
        >>> # search = eot_search(problem, ctl.init(4, 0), 60, samples=256)
    """
    gen = torch.Generator().manual_seed(seed + 4242)
    obs = problem.stats.sample(samples, gen, problem.phys_lo, problem.phys_hi)  # [S, obs]
    net = problem.net
    S = obs.shape[0]

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        xr = x.repeat_interleave(S, dim=0)
        y = net(problem.point(xr, obs.repeat(B, 1)))
        return problem.spec.point_margin(y.double()).reshape(B, S).mean(1)

    bx, bl, hist, used = optimise(problem.controlled, loss_fn, x0, steps, step_rule, step_size)
    return Search(bx, bl, hist, used)
