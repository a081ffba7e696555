"""Run the victim policy under several attacks at once, on the same channels, TTI by TTI.

Every condition (no attack, each crafted forgery, the white-box oracle) has its own
:class:`~fggm.mimo.forgery.ForgedEnv` seeded identically, so all see the same channel realisations
(channels do not depend on actions) and their per-TTI numbers are paired.  The conditions advance
in lock-step so that one batched call of the SB3 policy (through ``VecNormalize``, deterministic)
serves all of them each TTI.  Physical rates use the TRUE channels with a ZF receiver built from
the REPORTED ones.

:class:`OracleAttacker` is the white-box upper bound: every TTI it runs sign-PGD on the forgery's
parameters at the EXACT current observation (for ``pilot``, from the attackers' exact true
channels), starting from given crafted parameters, and reports the best for this TTI only.

Example:
    >>> traces = run_conditions(victim, [Condition("none"), Condition("fggm", res.reports)], ttis=400, seed=101)  # doctest: +SKIP
    >>> traces["fggm"].se.shape                                                                                  # doctest: +SKIP
    (400, 16)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fggm.mimo.config import EnvConfig
from fggm.mimo.forgery import ForgedEnv, Report
from fggm.mimo.setup import AttackSetup
from fggm.mimo.victim import Victim

__all__ = ["Condition", "Trace", "OracleAttacker", "run_conditions"]


class OracleAttacker:
    """White-box oracle: per TTI, ``steps`` sign-PGD steps on the forgery's parameters at the exact
    observation (batch of starting points: ``inits`` plus two random feasible ones), keeping the
    best point margin of the goal; the winner is reported for this TTI only.  The search stops as
    soon as one point meets the goal at this observation (a deeper margin changes nothing).

    Example:
        >>> oracle = OracleAttacker(setup, [fggm_result.x()[0]])   # doctest: +SKIP
    """

    def __init__(self, setup: AttackSetup, inits: Sequence[torch.Tensor], steps: int = 10, step_size: float = 0.1) -> None:
        self.setup = setup
        ctl = setup.controlled
        rand = ctl.sample(2, setup.threat.seed + 17)
        starts = [torch.as_tensor(x, dtype=torch.float32).reshape(ctl.shape) for x in inits]
        self.x0 = ctl.project(torch.cat([torch.stack(starts), rand]) if starts else rand)
        self.steps, self.scale = steps, ctl.step_scale(step_size)
        self.net = setup.problem.net

    def best(self, obs: np.ndarray) -> torch.Tensor:
        """The parameters ``[A, ...]`` with the deepest point margin at the honest observation ``obs``."""
        s = self.setup
        o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0).expand(self.x0.shape[0], -1)
        x = self.x0.clone().requires_grad_(True)
        best_x, best = self.x0.clone(), torch.full((self.x0.shape[0],), float("inf"), dtype=torch.float64)
        for step in range(self.steps + 1):
            loss = s.point_margin(self.net(s.point(x, o)).double())
            with torch.no_grad():
                better = loss < best
                best = torch.where(better, loss.detach(), best)
                best_x[better] = x.detach()[better]
            if step == self.steps or bool((best < 0).any()):
                break
            g = torch.autograd.grad(loss.sum(), x)[0]
            with torch.no_grad():
                x -= self.scale * g.sign()
                x.copy_(s.project(x))
        return best_x[int(torch.argmin(best))]

    def act(self, env: ForgedEnv) -> None:
        """Choose this TTI's reports from the environment's honest observation and set them."""
        s = self.setup
        users = list(s.threat.attackers)
        x = self.best(env.observation())
        reported = s.controlled.reported(x, env.true_channel[:, users].T)
        for u, h in zip(users, reported):
            env.set_now(u, h)


@dataclass
class Condition:
    """One attack condition: each attacker's static report (empty: no attack) or an oracle.

    Example:
        >>> Condition("none").reports
        {}
    """

    name: str
    reports: dict[int, Report] = field(default_factory=dict)
    oracle: OracleAttacker | None = None


@dataclass
class Trace:
    """Per-TTI record of one condition: physical SE ``[T, K]``, who was scheduled ``[T, K]``, the
    TTI's index within its episode ``[T]`` and (optionally) the observation the policy saw ``[T, obs]``.

    Example:
        >>> Trace(np.zeros((2, 3)), np.zeros((2, 3), bool), np.arange(2)).throughput([0, 1])
        0.0
    """

    se: np.ndarray
    scheduled: np.ndarray
    t: np.ndarray
    obs: np.ndarray | None = None

    def throughput(self, users: Sequence[int]) -> float:
        """Mean SE per TTI of ``users`` (bit/s/Hz per user)."""
        return float(self.se[:, list(users)].mean())

    def per_tti(self, users: Sequence[int]) -> np.ndarray:
        """``[T]`` mean SE of ``users`` each TTI."""
        return self.se[:, list(users)].mean(1)


def run_conditions(victim: Victim, conditions: Sequence[Condition], ttis: int, seed: int, *,
                   env: EnvConfig | None = None, record_obs: bool = False,
                   on_step: Callable[[int], None] | None = None) -> dict[str, Trace]:
    """Run every condition for ``ttis`` TTIs on channel seed ``seed`` (episodes restart every
    ``episode_length``), the policy batched over conditions each TTI.

    Example:
        >>> run_conditions(victim, [Condition("none")], ttis=10, seed=1)["none"].se.shape   # doctest: +SKIP
        (10, 16)
    """
    if ttis < 1:
        raise ValueError("ttis must be >= 1")
    cfg = env or victim.env
    envs = [ForgedEnv(cfg, c.reports) for c in conditions]
    K, D = cfg.num_users, cfg.obs_dim
    C = len(conditions)
    se = np.zeros((C, ttis, K), dtype=np.float32)
    sched = np.zeros((C, ttis, K), dtype=bool)
    tt = np.zeros(ttis, dtype=np.int32)
    obs_rec = np.zeros((C, ttis, D), dtype=np.float32) if record_obs else None
    for e in envs:
        e.reset(seed=seed)
    codec = envs[0].codec
    for t in range(ttis):
        for c, e in zip(conditions, envs):
            if c.oracle is not None:
                c.oracle.act(e)
        obs = np.stack([e.observation() for e in envs])
        actions = victim.actions(obs)
        tt[t] = envs[0].t
        for i, e in enumerate(envs):
            idx = victim.subset_index(actions[i], obs[i], codec)
            _, _, _, truncated, info = e.step_index(idx)
            se[i, t] = info["se"]
            sched[i, t, list(info["scheduled"])] = True
            if obs_rec is not None:
                obs_rec[i, t] = obs[i]
        if on_step is not None:
            on_step(C)
        if truncated and t < ttis - 1:
            for e in envs:
                e.reset()
    return {c.name: Trace(se[i], sched[i], tt.copy(), None if obs_rec is None else obs_rec[i])
            for i, c in enumerate(conditions)}
