"""What the attackers know and control (problem-agnostic).

* :class:`NormaliserStats` -- the victim's observation normaliser (mean, variance, epsilon, clip),
  the attackers' only knowledge of the other observation entries: the box ``mean +- k sigma``
  intersected with the clip range and with the problem's physical limits.
* :class:`Controlled` -- the attackers' forged parameters ``x`` and the differentiable map from
  them to the observation entries they control (plus the projection onto the forgery
  constraint, the restarts and the step scale).  :class:`BoundedEntries` is the common case of
  parameters that ARE observation entries, each within bounds.
* :func:`check_search` / :func:`parse_ids` -- shared validation of threat models.

Example:
    >>> stats = NormaliserStats(np.array([0.5, 0.5]), np.array([1 / 12, 1 / 12]), 1e-8, 10.0)
    >>> lo, up = stats.box(1.0, phys_lo=np.zeros(2), phys_hi=np.ones(2))
    >>> np.round(lo, 3).tolist(), np.round(up, 3).tolist()
    ([0.211, 0.211], [0.789, 0.789])
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["AttackError", "DOMAINS", "STEP_RULES", "NormaliserStats", "Controlled", "BoundedEntries", "check_search",
           "parse_ids", "coverage"]

DOMAINS = ("crown", "ibp")
STEP_RULES = ("sign", "adam")


class AttackError(ValueError):
    """An invalid attack setting (one human-readable sentence)."""


def parse_ids(x: Any, what: str, noun: str = "user", error: type[Exception] = AttackError) -> tuple[int, ...]:
    """Sorted, distinct, non-negative ids from an int or an iterable (``what`` names the list).

    Example:
        >>> parse_ids([3, 1], "attackers")
        (1, 3)
    """
    if isinstance(x, (int, np.integer)):
        x = (x,)
    try:
        ids = tuple(int(u) for u in x)
    except (TypeError, ValueError):
        raise error(f"{what} must be a list of {noun} ids, got {x!r}") from None
    if not ids:
        raise error(f"give at least one {what[:-1]}")
    if len(set(ids)) != len(ids):
        raise error(f"{what} lists a {noun} twice: {list(ids)}")
    if min(ids) < 0:
        raise error(f"{what} must be {noun} ids >= 0, got {list(ids)}")
    return tuple(sorted(ids))


def check_search(k: float, domain: str, step_rule: str, steps: int, restarts: int, step_size: float,
                 error: type[Exception] = AttackError) -> None:
    """Validate the search settings every threat model shares (one sentence per problem).

    Example:
        >>> check_search(3.0, "crown", "sign", 60, 4, 0.2)
    """
    if not (math.isfinite(k) and k > 0):
        raise error(f"k must be a positive number of standard deviations, got {k}")
    if domain not in DOMAINS:
        raise error(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if step_rule not in STEP_RULES:
        raise error(f"step_rule must be one of {', '.join(STEP_RULES)}, got {step_rule!r}")
    if steps < 1 or restarts < 1:
        raise error("steps and restarts must be >= 1")
    if not step_size > 0:
        raise error(f"step_size must be positive, got {step_size}")


@dataclass(frozen=True)
class NormaliserStats:
    """An observation normaliser ``clip((x - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``.

    Example:
        >>> NormaliserStats(np.zeros(3), np.ones(3), 1e-8, 10.0).sigma.tolist()
        [1.0, 1.0, 1.0]
    """

    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip_obs: float

    @classmethod
    def from_vecnormalize(cls, vecnormalize: Any) -> "NormaliserStats":
        """The statistics of an SB3 ``VecNormalize``.

        Example:
            >>> # NormaliserStats.from_vecnormalize(vecnorm).mean.shape
        """
        return cls(np.asarray(vecnormalize.obs_rms.mean, dtype=np.float64),
                   np.asarray(vecnormalize.obs_rms.var, dtype=np.float64),
                   float(vecnormalize.epsilon), float(vecnormalize.clip_obs))

    @property
    def sigma(self) -> np.ndarray:
        """Standard deviations."""
        return np.sqrt(self.var)

    def box(self, k: float, phys_lo: np.ndarray | None = None, phys_hi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``[mean - k sigma, mean + k sigma]`` within the clip range, then clamped into the
        physical limits ``[phys_lo, phys_hi]`` (float64 arrays).

        Example:
            >>> NormaliserStats(np.zeros(1), np.ones(1), 0.0, 2.0).box(3.0)[1].tolist()
            [2.0]
        """
        mean, sigma = self.mean, self.sigma
        clip_half = self.clip_obs * np.sqrt(self.var + self.epsilon)
        lo = np.maximum(mean - k * sigma, mean - clip_half)
        up = np.minimum(mean + k * sigma, mean + clip_half)
        if phys_lo is not None:
            lo, up = np.maximum(lo, phys_lo), np.maximum(up, phys_lo)
        if phys_hi is not None:
            lo, up = np.minimum(lo, phys_hi), np.minimum(up, phys_hi)
        return lo, up

    def clip_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw-space edges ``mean -+ clip_obs * sqrt(var + epsilon)`` of the normaliser's clip: every raw
        value beyond an edge reaches the policy as that edge.

        Example:
            >>> NormaliserStats(np.zeros(1), np.ones(1), 0.0, 2.0).clip_range()[1].tolist()
            [2.0]
        """
        half = self.clip_obs * np.sqrt(self.var + self.epsilon)
        return self.mean - half, self.mean + half

    def sample(self, n: int, gen: torch.Generator, phys_lo: np.ndarray | None = None,
               phys_hi: np.ndarray | None = None) -> torch.Tensor:
        """``n`` observations from the normaliser's Gaussian ``N(mean, var)``, clipped into the
        physical limits (EOT-PGD's distribution), float32 ``[n, obs]``.

        Example:
            >>> s = NormaliserStats(np.zeros(2), np.ones(2), 1e-8, 10.0).sample(4, torch.Generator().manual_seed(0))
            >>> tuple(s.shape)
            (4, 2)
        """
        mean = torch.tensor(self.mean, dtype=torch.float64)
        obs = mean + torch.randn(n, len(self.mean), generator=gen, dtype=torch.float64) * torch.tensor(self.sigma)
        if phys_lo is not None:
            obs = torch.maximum(obs, torch.tensor(phys_lo, dtype=torch.float64))
        if phys_hi is not None:
            obs = torch.minimum(obs, torch.tensor(phys_hi, dtype=torch.float64))
        return obs.float()


def coverage(obs: np.ndarray, lo: np.ndarray, up: np.ndarray, controlled: np.ndarray | None = None,
             stats: "NormaliserStats | None" = None, rtol: float = 1e-5) -> float:
    """Share of observations ``[B, obs]`` whose entries, except the ``controlled`` ones (points the
    attackers set), all lie in ``[lo, up]`` (``[obs]``, or ``[B, obs]`` for one box per observation).

    With ``stats`` the test is made where the policy sees the observation: after the normaliser's
    clip.  A raw entry beyond the clip edge reaches the network as the edge itself, so it counts
    as inside whenever the box reaches that edge.  ``rtol`` absorbs float32 rounding.

    Example:
        >>> coverage(np.array([[0.5, 9.0], [2.0, 9.0]]), np.zeros(2), np.ones(2), np.array([1]))
        0.5
        >>> s = NormaliserStats(np.zeros(1), np.ones(1), 0.0, 2.0)
        >>> coverage(np.array([[5.0]]), *s.box(3.0)), coverage(np.array([[5.0]]), *s.box(3.0), stats=s)
        (0.0, 1.0)
    """
    o = np.asarray(obs, dtype=np.float64)
    if o.ndim != 2 or len(o) == 0:
        return 0.0
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), o.shape)
    up = np.broadcast_to(np.asarray(up, dtype=np.float64), o.shape)
    if stats is not None:
        c_lo, c_hi = stats.clip_range()
        o = np.clip(o, c_lo, c_hi)
        lo, up = np.clip(lo, c_lo, c_hi), np.clip(up, c_lo, c_hi)
    keep = np.ones(o.shape[1], dtype=bool)
    if controlled is not None:
        keep[np.asarray(controlled, dtype=int)] = False
    tol = rtol * (1.0 + np.abs(o[:, keep]))
    inside = (o[:, keep] >= lo[:, keep] - tol) & (o[:, keep] <= up[:, keep] + tol)
    return float(inside.all(1).mean())


class Controlled(ABC):
    """The attackers' forged parameters ``x [B, *shape]`` and what they put into the observation.

    Subclasses set ``indices`` (LongTensor ``[P]``: the observation entries written) and
    ``shape`` (one sample's parameter shape).

    Example:
        >>> ctl = BoundedEntries(torch.tensor([0, 3]), torch.zeros(2), torch.ones(2))
        >>> ctl.values(torch.full((1, 2), 0.5)).tolist()
        [[0.5, 0.5]]
    """

    indices: torch.Tensor
    shape: tuple[int, ...]

    @abstractmethod
    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable ``[B, P]`` values of the controlled entries for parameters ``x``."""

    def values_box(self, x: torch.Tensor, lo: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, P]`` lower and upper values of the controlled entries over the box.

        ``lo`` / ``up`` (``[P]``) are the box the entries would have if nobody controlled them:
        a forgery that transforms the attackers' own unknown true entries (e.g. a scaled pilot)
        maps that box through its transformation; the default (entries set outright) is the
        point :meth:`values` and ignores them.
        """
        v = self.values(x)
        return v, v

    def apply(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Observations ``obs [B, obs]`` as the policy sees them under parameters ``x [B, ...]``.

        ``obs`` holds the honest values of the controlled entries too (a sampled or real
        observation); the default overwrites them with :meth:`values`.
        """
        B = x.shape[0]
        vals = self.values(x).to(obs.dtype)
        return obs.index_put((torch.arange(B)[:, None], self.indices[None, :]), vals)

    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest parameters that satisfy the forgery constraint."""

    @abstractmethod
    def init(self, restarts: int, seed: int) -> torch.Tensor:
        """Starting points ``[restarts, *shape]`` (restart 0 at the normaliser mean)."""

    @abstractmethod
    def step_scale(self, step_size: float) -> float:
        """Per-coordinate step for a step of ``step_size`` (a fraction of the constraint's scale)."""

    @abstractmethod
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` random feasible parameters (the random baseline)."""


class BoundedEntries(Controlled):
    """Parameters that are the controlled observation entries themselves, each in ``[low, high]``.

    Example:
        >>> ctl = BoundedEntries(torch.tensor([1]), torch.zeros(1), torch.ones(1), start=torch.tensor([0.5]))
        >>> ctl.project(torch.tensor([[3.0]])).tolist(), ctl.init(2, 0)[0].tolist()
        ([[1.0]], [0.5])
    """

    def __init__(self, indices: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                 start: torch.Tensor | None = None) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        self.low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        if not (self.low.shape == self.high.shape == self.indices.shape):
            raise AttackError("indices, low and high of the controlled entries must have the same length")
        if bool((self.low > self.high).any()):
            raise AttackError("a controlled entry's lower bound exceeds its upper bound")
        self.shape = (int(self.indices.shape[0]),)
        mid = (self.low + self.high) / 2
        self.start = self.project(torch.as_tensor(start, dtype=torch.float32).reshape(1, -1))[0] \
            if start is not None else mid

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x, self.low.to(x.dtype)), self.high.to(x.dtype))

    def init(self, restarts: int, seed: int) -> torch.Tensor:
        x = self.sample(restarts, seed)
        x[0] = self.start
        return x

    def step_scale(self, step_size: float) -> float:
        width = self.high - self.low
        free = width[width > 0]
        return step_size * (float(free.mean()) if len(free) else 1.0)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return self.low + (self.high - self.low) * torch.rand(n, *self.shape, generator=gen)
