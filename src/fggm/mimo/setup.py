"""One (victim, threat model) as a :class:`fggm.core.attack.BoxProblem`: the box, what the
attackers control under the forgery, the goal as a specification on the head, the certificate
in MU-MIMO terms, and the coverage of real observations by the box.

* Box: ``mean +- k sigma`` of the normaliser's statistics within its clip range, SE >= 0; with
  ``box="tight"`` also what the attackers know for sure: a user's single-user SE is
  ``log2(1 + ||h||^2)`` of its own channel entries, so it lies between the SEs of the smallest and
  largest norm the channel entries' intervals allow, and its cumulative SE lies between 0 and
  ``horizon`` times that largest SE (a ZF rate never exceeds the single-user SE).
* Goal, ``subset`` head: the certified pre-tanh action interval inside one run of victim-free
  subset indices (:class:`~fggm.core.spec.RunSpec`).  ``scores`` head: at least S non-victims
  scored above every victim on the whole box, bounded directly as the rows ``y_t - y_v`` of a
  specification matrix (:class:`~fggm.core.spec.RankSpec`; with the ``threshold`` readout also the
  alternative "every victim below the threshold").

Example:
    >>> setup = AttackSetup.build(victim, ThreatModel(attackers=(0, 1), victims=(2,)))   # doctest: +SKIP
    >>> setup.coverage(obs, x)                                                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fggm.core.attack import BoxProblem
from fggm.core.spec import RankSpec, RunSpec, Spec
from fggm.core.threat import coverage as core_coverage
from fggm.mimo.env import observation_indices
from fggm.mimo.forgery import ForgedChannels, PilotGains, Report, StealthyChannels, _MimoControlled
from fggm.mimo.physics import SubsetCodec
from fggm.mimo.threat import ThreatModel, ThreatModelError
from fggm.mimo.victim import Victim

__all__ = ["AttackSetup", "user_powers", "tight_box"]


def user_powers(victim: Victim) -> np.ndarray:
    """``[K]`` mean channel power ``sum(mean^2 + var)`` of each user in the normaliser's statistics.

    Example:
        >>> user_powers(victim).shape   # doctest: +SKIP
        (16,)
    """
    M, K = victim.env.num_antennas, victim.env.num_users
    out = []
    for u in range(K):
        ix = observation_indices(M, K, u)
        e = np.concatenate([ix["re"], ix["im"]])
        out.append(float(np.sum(victim.mean[e] ** 2 + victim.var[e])))
    return np.asarray(out)


def tight_box(lo: np.ndarray, up: np.ndarray, M: int, K: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Tighten a raw-space box ``[obs]`` with facts every real observation satisfies: each user's
    single-user SE within ``[log2(1 + P_min), log2(1 + P_max)]`` of its channel entries' box, and
    its cumulative SE within ``[0, horizon * SE_max]``.

    Example:
        >>> lo, up = np.zeros(2 * 1 + 2 * 1), np.array([10.0, 1e4, 1.0, 1.0])   # M = K = 1
        >>> tight_box(lo, up, 1, 1, 10)[1].round(3).tolist()   # SE <= log2(1 + 2), cumulative <= 10 x that
        [1.585, 15.85, 1.0, 1.0]
    """
    lo, up = lo.copy(), up.copy()
    for u in range(K):
        ix = observation_indices(M, K, u)
        e = np.concatenate([ix["re"], ix["im"]])
        l, h = lo[e], up[e]
        p_min = float(np.sum(np.where((l <= 0) & (h >= 0), 0.0, np.minimum(l * l, h * h))))
        p_max = float(np.sum(np.maximum(l * l, h * h)))
        s = int(ix["su_se"][0])
        lo[s] = max(lo[s], math.log2(1 + p_min))
        up[s] = max(min(up[s], math.log2(1 + p_max)), lo[s])
        c = int(ix["history"][0])
        lo[c] = max(lo[c], 0.0)
        up[c] = max(min(up[c], horizon * up[s]), lo[c])
    return lo, up


@dataclass
class AttackSetup:
    """Everything precomputed for one (victim, threat model): the core problem (box, controlled
    entries, spec), the codec, and the power budget of the forgery.

    Example:
        >>> setup = AttackSetup.build(victim, ThreatModel())   # doctest: +SKIP
    """

    victim: Victim
    threat: ThreatModel
    codec: SubsetCodec
    problem: BoxProblem
    free: np.ndarray  # [N] bool: subset contains no victim
    budget: float

    @classmethod
    def build(cls, victim: Victim, threat: ThreatModel) -> "AttackSetup":
        env = victim.env
        M, K = env.num_antennas, env.num_users
        threat.check_env(K)
        victim.check()
        mean, sd = victim.mean, np.sqrt(victim.var)
        phys_lo = np.full(mean.shape, -np.inf)
        phys_lo[: 2 * K] = 0.0  # single-user SE and cumulative SE are >= 0
        ch = np.stack([np.concatenate([observation_indices(M, K, u)["re"], observation_indices(M, K, u)["im"]])
                       for u in threat.attackers])
        se = np.array([u for u in threat.attackers])
        ch_t, se_t = torch.tensor(ch, dtype=torch.long), torch.tensor(se, dtype=torch.long)
        powers = user_powers(victim)
        budget = threat.power_budget if threat.power_budget is not None else threat.power_factor * float(powers.max())
        controlled: _MimoControlled
        if threat.forgery in ("fixed", "silent"):
            controlled = ForgedChannels(ch_t, se_t, float(budget), torch.tensor(mean[ch], dtype=torch.float32))
        elif threat.forgery == "stealthy":
            ks = threat.stealth_k
            low, high = mean[ch] - ks * sd[ch], mean[ch] + ks * sd[ch]
            s_lo = np.maximum(mean[:K] - ks * sd[:K], 0.0)
            s_hi = mean[:K] + ks * sd[:K]
            real_lo, real_hi = float(np.min(2.0 ** s_lo - 1)), float(np.max(2.0 ** s_hi - 1))
            own_lo, own_hi = 2.0 ** s_lo[se] - 1, 2.0 ** s_hi[se] - 1
            p_min = np.maximum(own_lo, real_lo)
            p_max = np.minimum(np.minimum(own_hi, real_hi), threat.power_budget or np.inf)
            if np.any(p_min > p_max):
                raise ThreatModelError("the stealthy power range is empty: lower power_budget or raise stealth_k")
            budget = float(p_max.max())
            controlled = StealthyChannels(ch_t, se_t, torch.tensor(low, dtype=torch.float32),
                                          torch.tensor(high, dtype=torch.float32), torch.tensor(p_min),
                                          torch.tensor(p_max))
        else:  # pilot
            budget = float(threat.pilot_gain[1])
            controlled = PilotGains(ch_t, se_t, threat.pilot_gain, torch.tensor(mean[ch], dtype=torch.float32))
        codec = SubsetCodec(K, env.max_scheduled)
        free = ~codec.masks[:, list(threat.victims)].any(axis=1)
        spec = cls._spec(victim, threat, free)
        tighten = None
        if threat.box == "tight":
            horizon = int(threat.horizon or env.episode_length)
            tighten = lambda lo, up: tight_box(lo, up, M, K, horizon)  # noqa: E731
        problem = BoxProblem(victim.view, victim.stats, controlled, spec, threat.k, threat.domain, phys_lo=phys_lo,
                             tighten=tighten)
        return cls(victim=victim, threat=threat, codec=codec, problem=problem, free=free, budget=float(budget))

    @staticmethod
    def _spec(victim: Victim, threat: ThreatModel, free: np.ndarray) -> Spec:
        if victim.head == "subset":
            spec = RunSpec.from_grid(free)  # runs of victim-free subsets, 1% of a half step inside
            if len(spec.runs) == 0:
                raise ThreatModelError("every subset contains a victim: nothing to attack towards")
            return spec
        K, S = victim.env.num_users, victim.env.max_scheduled
        if K - len(threat.victims) < S and victim.score_rule != "threshold":
            raise ThreatModelError(f"with {len(threat.victims)} victims fewer than S={S} other users remain: "
                                   "the top-S readout always schedules a victim")
        thr = math.atanh(victim.score_threshold) if victim.score_rule == "threshold" else None
        return RankSpec(K, threat.victims, min(S, K - len(threat.victims)), threshold=thr)

    # -- the core problem's parts under their MU-MIMO names -----------------------------------
    @property
    def controlled(self) -> _MimoControlled:
        return self.problem.controlled  # type: ignore[return-value]

    @property
    def spec(self) -> Spec:
        return self.problem.spec

    @property
    def base_lo(self) -> torch.Tensor:
        """``[obs]`` raw-space box of every entry (the attackers' are overwritten by :meth:`box`)."""
        return self.problem.base_lo

    @property
    def base_up(self) -> torch.Tensor:
        return self.problem.base_up

    @property
    def ch_idx(self) -> torch.Tensor:
        """``[A, 2M]`` observation index of each attacker's Re then Im entries."""
        return self.controlled.ch_idx

    @property
    def se_idx(self) -> torch.Tensor:
        """``[A]`` observation index of each attacker's single-user SE entry."""
        return self.controlled.se_idx

    @property
    def mean_forged(self) -> torch.Tensor:
        """``[A, ...]`` the forgery's starting parameters (the mean channel, or the honest pilot)."""
        ctl = self.controlled
        return ctl.mean_forged if isinstance(ctl, ForgedChannels) else ctl.init(1, 0)[0]

    @property
    def runs(self) -> np.ndarray:
        """``[R, 2]`` first/last index of each run of victim-free subsets (``subset`` head)."""
        return self.spec.runs  # type: ignore[attr-defined]

    @property
    def run_lo(self) -> torch.Tensor:
        return self.spec.run_lo  # type: ignore[attr-defined]

    @property
    def run_hi(self) -> torch.Tensor:
        return self.spec.run_hi  # type: ignore[attr-defined]

    def box(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners ``[B, obs]`` with the attackers' entries set from the forgery's parameters ``x``."""
        return self.problem.box(x, dtype)

    def point(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Observations ``obs [B, obs]`` as the policy sees them under the forgery's parameters ``x``."""
        return self.problem.point(x, obs)

    def mean_observation(self) -> torch.Tensor:
        """The normaliser's mean observation (physical limits applied), ``[obs]``."""
        return self.problem.mean_observation()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project parameters onto the forgery's constraint."""
        return self.controlled.project(x)

    def bound(self, x: torch.Tensor, domain: str | None = None, dtype: torch.dtype = torch.float32,
              view: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified bounds of the spec's network over the box of parameters ``x``."""
        return self.problem.bound(x, domain, dtype, view)

    def run_costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` distance of certified bounds from each alternative of the goal."""
        return self.spec.costs(lb, ub)

    def point_margin(self, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` signed margin of point outputs of the spec's network (negative = goal met)."""
        return self.spec.point_margin(y)

    # -- what a parameter vector means --------------------------------------------------------
    def reports(self, x1: torch.Tensor) -> dict[int, Report]:
        """Each attacker's :class:`~fggm.mimo.forgery.Report` for one sample's parameters ``x1``."""
        if self.threat.forgery == "silent":
            return {u: Report("silent") for u in self.threat.attackers}
        return dict(zip(self.threat.attackers, self.controlled.reports(x1)))

    def certificate(self, lb: torch.Tensor, ub: torch.Tensor) -> dict[str, Any]:
        """The goal's certificate for float64 bounds ``lb, ub [1, rows]`` of the spec's network:
        ``proved``, the ``certified_share`` (subset head: victim-free share of the reachable
        subset indices; scores head: share of the S needed non-victims certified above every
        victim) and the head's own details."""
        spec = self.spec
        if isinstance(spec, RunSpec):
            l, u = float(lb.reshape(-1)[0]), float(ub.reshape(-1)[0])
            a_lo, a_hi = math.tanh(l), math.tanh(u)
            i_lo, i_hi = self.codec.action_to_index(a_lo), self.codec.action_to_index(a_hi)
            share = float(self.free[i_lo : i_hi + 1].mean())
            r = spec.which(l, u)
            target = None if r is None else [int(spec.runs[r][0]), int(spec.runs[r][1])]
            return {"proved": r is not None, "certified_share": 1.0 if r is not None else share, "bound": [l, u],
                    "action_interval": [a_lo, a_hi], "index_range": [i_lo, i_hi], "target_run": target,
                    "victim_free_share_of_all_subsets": float(self.free.mean())}
        assert isinstance(spec, RankSpec)
        alt = spec.which(lb[0], ub[0])
        n_ok = spec.certified_others(lb[0])
        return {"proved": alt is not None, "certified_share": 1.0 if alt is not None else min(1.0, n_ok / spec.top),
                "certified_above": n_ok, "needed_above": spec.top,
                "alternative": None if alt is None else ("rank", "threshold")[alt],
                "bound": [float(lb.min()), float(ub.max())]}

    # -- coverage of real observations --------------------------------------------------------
    def _box_np(self, x: torch.Tensor, k: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        prob = self.problem if k is None else self.problem.at_k(k)
        lo, up = prob.box(x.reshape(1, *x.shape[-len(self.controlled.shape):]), torch.float64)
        return lo[0].numpy(), up[0].numpy()

    def coverage(self, obs: np.ndarray, x: torch.Tensor, k: float | None = None) -> float:
        """Share of real observations ``obs [B, obs]`` (what the policy saw under this attack) that
        lie in the box at ``k`` (default: the threat model's) for parameters ``x``, after the
        normaliser's clip.  Point entries the attackers set are not tested (they are exact by
        construction); a pilot attacker's interval entries are.

        Example:
            >>> setup.coverage(obs, x), setup.coverage(obs, x, k=certified_k)   # doctest: +SKIP
        """
        if k is not None and k <= 0:
            return 0.0
        lo, up = self._box_np(x, k)
        skip = None if isinstance(self.controlled, PilotGains) else self.controlled.indices.numpy()
        return core_coverage(obs, lo, up, skip, self.victim.stats)
