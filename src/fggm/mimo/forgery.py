"""What MU-MIMO attackers control under each forgery, and the environment that plays it out.

* :class:`ForgedChannels` (``fixed``, and ``silent`` at ``x = 0``): the forged channels
  ``x [B, A, 2M]`` (Re then Im) written to the attackers' channel entries and, through
  :func:`forged_se`, their single-user-SE entries; each channel in the power ball.
* :class:`StealthyChannels` (``stealthy``): the same entries, each forged entry within the
  normaliser's ``mean +- stealth_k sigma`` of that attacker's own entries and the power within a
  range, by alternating projections.
* :class:`PilotGains` (``pilot``): one complex pilot gain ``g = a + jb = c exp(j phi)`` per attacker,
  ``x [B, A, 2] = (a, b)`` with ``|g|^2`` in the gain range.  The base station sees ``g h_true``:
  the attacker's entries are its own TRUE entries, unknown per TTI, rotated and scaled, so over a
  box they are intervals (:meth:`PilotGains.values_box`), and on an observation they are computed
  from the observation's own honest entries (:meth:`PilotGains.apply`).
* :class:`Report` / :class:`ForgedEnv`: what each attacker reports every TTI (a fixed vector, its
  scaled pilot, or nothing) inside the scheduling environment: the base station's ZF uses the
  reports, signals travel through the true channels, and a silent attacker sends no data either.

Example:
    >>> ctl = ForgedChannels(torch.tensor([[2, 3]]), torch.tensor([0]), 4.0, torch.zeros(1, 2))
    >>> ctl.values(torch.tensor([[[1.0, 1.0]]])).tolist()
    [[1.0, 1.0, 1.5849624872207642]]
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from fggm.core.threat import Controlled
from fggm.mimo.env import MuMimoEnv
from fggm.mimo.physics import single_user_se

__all__ = ["forged_se", "ForgedChannels", "StealthyChannels", "PilotGains", "Report", "ForgedEnv"]


def forged_se(x: torch.Tensor) -> torch.Tensor:
    """Single-user SE ``log2(1 + ||h||^2)`` of forged channels given as ``[..., 2M]`` (Re then Im),
    as :func:`fggm.mimo.single_user_se` computes it for the observation (noise power 1).

    Example:
        >>> forged_se(torch.tensor([1.0, 1.0, 1.0, 1.0]))   # ||h||^2 = 4
        tensor(2.3219)
    """
    return torch.log2(1.0 + (x * x).sum(-1))


@dataclass(frozen=True)
class Report:
    """What one attacker reports every TTI: ``fixed`` (the complex ``value [M]``), ``pilot`` (its
    true channel times the complex gain ``value [1]``) or ``silent`` (nothing: no pilot, no data).

    Example:
        >>> Report("pilot", np.array([0.5j])).reported(np.ones(2, dtype=complex)).tolist()
        [0.5j, 0.5j]
    """

    kind: str
    value: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "pilot", "silent"):
            raise ValueError(f"unknown report kind {self.kind!r}")
        if self.kind != "silent" and self.value is None:
            raise ValueError(f"a {self.kind} report needs a value")

    def reported(self, h_true: np.ndarray) -> np.ndarray:
        """The reported channel(s) for true channel(s) ``h_true [..., M]``."""
        h_true = np.asarray(h_true)
        if self.kind == "fixed":
            return np.broadcast_to(np.asarray(self.value, dtype=complex), h_true.shape).copy()
        if self.kind == "pilot":
            return complex(np.asarray(self.value).reshape(-1)[0]) * h_true
        return np.zeros_like(h_true, dtype=complex)


class _MimoControlled(Controlled):
    """Shared layout: ``ch_idx [A, 2M]`` (Re then Im of each attacker), ``se_idx [A]``."""

    ch_idx: torch.Tensor
    se_idx: torch.Tensor

    def _set_layout(self, ch_idx: torch.Tensor, se_idx: torch.Tensor) -> None:
        self.ch_idx, self.se_idx = ch_idx, se_idx
        self.indices = torch.cat([ch_idx.flatten(), se_idx])

    @abstractmethod
    def reports(self, x1: torch.Tensor) -> list[Report]:
        """One sample's parameters ``x1 [A, ...]`` as each attacker's :class:`Report`."""

    def reported(self, x1: torch.Tensor, h_true: np.ndarray) -> np.ndarray:
        """Complex ``[A, M]`` channels the base station holds for parameters ``x1`` and the
        attackers' true channels ``h_true [A, M]`` this TTI."""
        return np.stack([r.reported(h) for r, h in zip(self.reports(x1), h_true)])


class ForgedChannels(_MimoControlled):
    """``fixed``: forged channels ``x [B, A, 2M]`` (Re then Im) written to the attackers' channel
    entries and, through :func:`forged_se`, their single-user-SE entries; each channel projected
    onto ``||h||^2 <= budget``.

    Example:
        >>> ctl = ForgedChannels(torch.tensor([[2, 3]]), torch.tensor([0]), 4.0, torch.zeros(1, 2))
        >>> ctl.project(torch.tensor([[[3.0, 4.0]]])).tolist()
        [[[1.2000000476837158, 1.600000023841858]]]
    """

    def __init__(self, ch_idx: torch.Tensor, se_idx: torch.Tensor, budget: float, mean_forged: torch.Tensor) -> None:
        self._set_layout(ch_idx, se_idx)
        self.budget, self.mean_forged = float(budget), mean_forged
        self.shape = tuple(mean_forged.shape)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(x.shape[0], -1), forged_se(x)], 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x * torch.clamp(math.sqrt(self.budget) / norm, max=1.0)

    def init(self, restarts: int, seed: int) -> torch.Tensor:
        """Restart 0 at the mean channel (projected); the others random at 50-100% of the budget."""
        gen = torch.Generator().manual_seed(seed)
        A, D = self.mean_forged.shape
        x = torch.randn(restarts, A, D, generator=gen)
        scale = math.sqrt(self.budget) * (0.5 + 0.5 * torch.rand(restarts, A, 1, generator=gen))
        x = x / x.norm(dim=-1, keepdim=True) * scale
        x[0] = self.mean_forged
        return self.project(x)

    def step_scale(self, step_size: float) -> float:
        return step_size * math.sqrt(self.budget / self.shape[-1])  # per-coordinate step at full budget

    def sample(self, n: int, seed: int, power: torch.Tensor | None = None) -> torch.Tensor:
        """Random CN(0, I) directions at ``power`` ``[A]`` (default: the full budget)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *self.shape, generator=gen)
        p = power if power is not None else torch.full((self.shape[0],), self.budget)
        return self.project(x / x.norm(dim=-1, keepdim=True) * p.reshape(1, -1, 1).sqrt())

    def reports(self, x1: torch.Tensor) -> list[Report]:
        v = x1.detach().double().numpy()
        M = v.shape[-1] // 2
        return [Report("fixed", v[a, :M] + 1j * v[a, M:]) for a in range(v.shape[0])]


class StealthyChannels(ForgedChannels):
    """``stealthy``: forged channels with every entry in ``[low, high]`` (``[A, 2M]``: the
    normaliser's ``mean +- stealth_k sigma`` of each attacker's own entries) and the power
    ``||h||^2`` in ``[p_min, p_max]`` (``[A]``), by alternating projections (box, then radial),
    ending on the box.

    Example:
        >>> ctl = StealthyChannels(torch.tensor([[2, 3]]), torch.tensor([0]), -torch.ones(1, 2), torch.ones(1, 2),
        ...                        torch.tensor([0.5]), torch.tensor([1.0]))
        >>> x = ctl.project(torch.tensor([[[3.0, 0.0]]]))
        >>> x.tolist(), ctl.feasible(x).tolist()
        ([[[1.0, 0.0]]], [True])
    """

    def __init__(self, ch_idx: torch.Tensor, se_idx: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                 p_min: torch.Tensor, p_max: torch.Tensor, iters: int = 30) -> None:
        self.low, self.high = low.float(), high.float()
        self.p_min, self.p_max = p_min.float().reshape(-1, 1), p_max.float().reshape(-1, 1)
        self.iters = iters
        mid = (self.low + self.high) / 2
        super().__init__(ch_idx, se_idx, float(self.p_max.max()), mid)
        self.mean_forged = self.project(mid.unsqueeze(0))[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.low.to(x.dtype), self.high.to(x.dtype)
        r_lo, r_hi = self.p_min.to(x.dtype).sqrt(), self.p_max.to(x.dtype).sqrt()
        for _ in range(self.iters):
            x = torch.minimum(torch.maximum(x, lo), hi)
            norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            x = x * (torch.minimum(torch.maximum(norm, r_lo), r_hi) / norm)
        return torch.minimum(torch.maximum(x, lo), hi)

    def feasible(self, x: torch.Tensor, rtol: float = 1e-3) -> torch.Tensor:
        """``[B]``: every entry in the box and every power in range (relative tolerance ``rtol``)."""
        tol = rtol * (self.high - self.low)
        in_box = ((x >= self.low - tol) & (x <= self.high + tol)).flatten(1).all(1)
        p = (x * x).sum(-1)
        in_power = ((p >= self.p_min.T * (1 - rtol)) & (p <= self.p_max.T * (1 + rtol))).all(1)
        return in_box & in_power

    def init(self, restarts: int, seed: int) -> torch.Tensor:
        """Restart 0 at the box centre (projected into the power range); the others uniform in the box."""
        gen = torch.Generator().manual_seed(seed)
        x = self.low + (self.high - self.low) * torch.rand(restarts, *self.shape, generator=gen)
        x[0] = self.mean_forged
        return self.project(x)

    def step_scale(self, step_size: float) -> float:
        return step_size * float((self.high - self.low).mean()) / 2

    def sample(self, n: int, seed: int, power: torch.Tensor | None = None) -> torch.Tensor:
        """Uniform in the box, then projected (``power`` is ignored: the range decides)."""
        gen = torch.Generator().manual_seed(seed)
        return self.project(self.low + (self.high - self.low) * torch.rand(n, *self.shape, generator=gen))


class PilotGains(_MimoControlled):
    """``pilot``: one complex gain ``g = a + jb`` per attacker (``x [B, A, 2]``), ``|g|^2`` in
    ``[gain_min, gain_max]``; the base station sees ``g h_true``.

    Over a box the attackers' true entries are unknown (they lie in the box like everybody else's),
    so their reported entries are the intervals of ``Re(g h) = a Re h - b Im h``,
    ``Im(g h) = b Re h + a Im h`` (interval arithmetic per entry) and of
    ``log2(1 + |g|^2 ||h||^2)`` with ``||h||^2`` between the powers the true single-user-SE entry's
    interval and the channel entries' intervals allow: sound, differentiable in ``(a, b)``, and
    blind to the correlation of the two parts of one entry (a rotation of a box is covered by a
    larger box).

    Example:
        >>> ctl = PilotGains(torch.tensor([[2, 3]]), torch.tensor([0]), (0.25, 4.0), torch.tensor([[1.0, 0.0]]))
        >>> lo, up = ctl.values_box(torch.tensor([[[0.0, 2.0]]]), torch.tensor([1.0, 0.0, 0.5]), torch.tensor([1.0, 0.0, 1.5]))
        >>> lo[0, :2].tolist(), up[0, :2].tolist()   # g = 2j: Re = -2 Im h = 0, Im = 2 Re h = 2
        ([0.0, 2.0], [0.0, 2.0])
    """

    def __init__(self, ch_idx: torch.Tensor, se_idx: torch.Tensor, gain: tuple[float, float],
                 mean_true: torch.Tensor) -> None:
        self._set_layout(ch_idx, se_idx)
        self.gain_min, self.gain_max = float(gain[0]), float(gain[1])
        self.mean_true = mean_true.float()  # [A, 2M] the normaliser's mean of each attacker's true entries
        self.shape = (int(ch_idx.shape[0]), 2)

    def _split(self, v: torch.Tensor, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        A, D = self.ch_idx.shape
        return v[..., : A * D].reshape(B, A, D), v[..., A * D :].reshape(B, A)

    def _rotate(self, x: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
        M = ch.shape[-1] // 2
        a, b = x[..., 0:1], x[..., 1:2]
        re, im = ch[..., :M], ch[..., M:]
        return torch.cat([a * re - b * im, b * re + a * im], -1)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The reported entries if the true channels were the normaliser's mean ones."""
        ch = self._rotate(x, self.mean_true.to(x.dtype).expand(x.shape[0], -1, -1))
        return torch.cat([ch.reshape(x.shape[0], -1), forged_se(ch)], 1)

    def values_box(self, x: torch.Tensor, lo: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = x.shape[0]
        ch_lo, se_lo = self._split(lo.to(x.dtype), 1)
        ch_up, se_up = self._split(up.to(x.dtype), 1)
        M = ch_lo.shape[-1] // 2
        c, r = (ch_lo + ch_up) / 2, (ch_up - ch_lo) / 2
        a, b = x[..., 0:1], x[..., 1:2]
        re_c, im_c, re_r, im_r = c[..., :M], c[..., M:], r[..., :M], r[..., M:]
        out_c = torch.cat([a * re_c - b * im_c, b * re_c + a * im_c], -1)
        out_r = torch.cat([a.abs() * re_r + b.abs() * im_r, b.abs() * re_r + a.abs() * im_r], -1)
        min_sq = torch.where((ch_lo <= 0) & (ch_up >= 0), torch.zeros_like(ch_lo), torch.minimum(ch_lo**2, ch_up**2))
        p_lo = torch.maximum(min_sq.sum(-1), torch.exp2(se_lo) - 1).clamp_min(0)
        p_up = torch.minimum(torch.maximum(ch_lo**2, ch_up**2).sum(-1), torch.exp2(se_up) - 1)
        p_up = torch.maximum(p_up, p_lo)
        g2 = (x * x).sum(-1)  # [B, A]
        s_lo, s_up = torch.log2(1 + g2 * p_lo), torch.log2(1 + g2 * p_up)
        lo_v = torch.cat([(out_c - out_r).reshape(B, -1), s_lo], 1)
        up_v = torch.cat([(out_c + out_r).reshape(B, -1), s_up], 1)
        return lo_v, up_v

    def apply(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        ch = obs[:, self.ch_idx.flatten()].reshape(B, *self.ch_idx.shape)
        rep = self._rotate(x.to(obs.dtype), ch)
        vals = torch.cat([rep.reshape(B, -1), forged_se(rep)], 1)
        return obs.index_put((torch.arange(B)[:, None], self.indices[None, :]), vals)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        target = torch.clamp(norm, math.sqrt(self.gain_min), math.sqrt(self.gain_max))
        return x * (target / norm)

    def init(self, restarts: int, seed: int) -> torch.Tensor:
        """Restart 0 at the honest pilot ``g = 1`` (projected into the range); the others random."""
        x = self.sample(restarts, seed)
        x[0] = self.project(torch.tensor([[1.0, 0.0]]).expand(self.shape[0], -1).unsqueeze(0))[0]
        return x

    def step_scale(self, step_size: float) -> float:
        return step_size * math.sqrt(self.gain_max)

    def sample(self, n: int, seed: int, power: torch.Tensor | None = None) -> torch.Tensor:
        """Gains log-uniform in power over the range, phases uniform (``power`` is ignored)."""
        gen = torch.Generator().manual_seed(seed)
        lg = math.log(self.gain_min) + (math.log(self.gain_max) - math.log(self.gain_min)) * torch.rand(
            n, self.shape[0], generator=gen)
        phi = 2 * math.pi * torch.rand(n, self.shape[0], generator=gen)
        c = torch.exp(lg / 2)
        return self.project(torch.stack([c * torch.cos(phi), c * torch.sin(phi)], -1))

    def reports(self, x1: torch.Tensor) -> list[Report]:
        v = x1.detach().double().numpy()
        return [Report("pilot", np.array([v[a, 0] + 1j * v[a, 1]])) for a in range(v.shape[0])]


class ForgedEnv(MuMimoEnv):
    """:class:`~fggm.mimo.env.MuMimoEnv` in which attackers report per :class:`Report` every TTI.

    ``fixed`` reports replace the column of the reported channels, ``pilot`` reports scale and
    rotate the TRUE column (so they fade with it), ``silent`` users report a zero column and send
    no data (their true column is zero for the physics and the reward's normaliser).
    :meth:`set_now` overrides one user's report for the current TTI only (the white-box oracle).

    Example:
        >>> env = ForgedEnv({"num_antennas": 4, "num_users": 3, "max_scheduled": 2}, {1: Report("pilot", np.array([2.0]))})
        >>> _ = env.reset(seed=0)
        >>> bool(np.allclose(env.reported_channel[:, 1], 2 * env.true_channel[:, 1]))
        True
    """

    def __init__(self, config: Any = None, reports: Mapping[int, Report] | None = None) -> None:
        super().__init__(config)
        self.reports: dict[int, Report] = {}
        for u, r in (reports or {}).items():
            if not 0 <= int(u) < self.K:
                raise ValueError(f"user {u} outside [0, {self.K})")
            self.reports[int(u)] = r

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        silent = [u for u, r in self.reports.items() if r.kind == "silent"]
        if silent:
            self.H_true[:, :, silent] = 0.0  # type: ignore[index]
            self.su_true = single_user_se(self.H_true)
            self._refresh_reports()
            obs = self._obs()
        return obs, info

    def _refresh_reports(self) -> None:
        assert self.H_true is not None
        H_rep = self.H_true.copy()
        for u, h in self._overrides.items():
            H_rep[:, :, u] = h[None, :]
        for u, r in getattr(self, "reports", {}).items():
            H_rep[:, :, u] = r.reported(self.H_true[:, :, u])
        self.H_rep = H_rep
        self.su_rep = single_user_se(H_rep)  # [T, K]
        Ht = np.swapaxes(H_rep, 1, 2).reshape(self.T, self.K * self.M)  # user-major
        self._obs_ch = np.concatenate([Ht.real, Ht.imag], axis=1).astype(np.float32)
        self._table_cache = None

    def set_now(self, user: int, h: np.ndarray) -> None:
        """Make ``user`` report ``h [M]`` for the current TTI only."""
        self._require_reset()
        t = min(self.t, self.T - 1)
        self.H_rep[t, :, int(user)] = np.asarray(h, dtype=complex).reshape(self.M)
        self.su_rep[t] = single_user_se(self.H_rep[t])
        row = self.H_rep[t].T.reshape(-1)
        self._obs_ch[t] = np.concatenate([row.real, row.imag]).astype(np.float32)
        self._table_cache = None

    def observation(self) -> np.ndarray:
        """The current observation (after any :meth:`set_now`)."""
        return self._obs()
