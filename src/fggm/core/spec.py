"""Attack goals as specifications on the policy's output (problem-agnostic).

A specification is a disjunction of alternatives; the attack succeeds for an observation when
the policy's output satisfies at least one alternative, and is *certified* over a box when the
certified output bounds satisfy one alternative for the whole box.

* :class:`RunSpec` -- a scalar head whose squashed action is quantised on a uniform grid
  (``index = rint((tanh(y) + 1) / 2 * (N - 1))``): the acceptable indices form runs, each an
  interval of the pre-squash output ``y``.  The certified interval ``[lb, ub]`` must fit inside one run.
* :class:`MatrixSpec` -- a vector head: rows ``c_j . y > d_j`` grouped into alternatives (all rows
  of one group must hold).  It is bounded exactly as CROWN bounds a specification matrix: a
  bias-free ``Linear`` with weight ``C`` is appended to the network and the ``Sequential`` bounded.

Every spec gives the distance of certified bounds from a proof (:meth:`Spec.costs`, 0 = proved,
what the gradient loop minimises) and a signed margin of a point output
(:meth:`Spec.point_margin`, negative = satisfied with room; what the point baselines minimise).

Example:
    >>> spec = RunSpec.from_grid(np.array([False, True, True, False, False]))
    >>> spec.runs.tolist(), spec.which(-0.3, 0.1)
    ([[1, 2]], 0)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Spec", "RunSpec", "MatrixSpec", "RankSpec", "runs_of", "atanh_ends", "grid_action"]


def runs_of(free: np.ndarray) -> np.ndarray:
    """Maximal runs ``[start, end]`` of True in a boolean vector.

    Example:
        >>> runs_of(np.array([True, False, True, True])).tolist()
        [[0, 0], [2, 3]]
    """
    edges = np.diff(np.concatenate([[0], free.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return np.stack([starts, ends], 1) if len(starts) else np.zeros((0, 2), dtype=np.int64)


def atanh_ends(a: np.ndarray) -> np.ndarray:
    """arctanh with the grid's open ends (|a| >= 1) mapped to +-inf.

    Example:
        >>> atanh_ends(np.array([-1.0, 0.0, 1.0])).tolist()
        [-inf, 0.0, inf]
    """
    out = np.where(a <= -1, -np.inf, np.where(a >= 1, np.inf, 0.0))
    inner = np.abs(a) < 1
    out[inner] = np.arctanh(a[inner])
    return out


def grid_action(index: int, n: int) -> float:
    """Action of grid point ``index`` on the uniform grid of ``n`` points in ``[-1, 1]``.

    Example:
        >>> grid_action(2, 5)
        0.0
    """
    return 0.0 if n == 1 else -1.0 + 2.0 * int(index) / (n - 1)


class Spec(ABC):
    """A goal on the policy's output (see the module docstring).

    Example:
        >>> isinstance(MatrixSpec(torch.eye(2), torch.zeros(2)), Spec)
        True
    """

    @abstractmethod
    def network(self, view: nn.Module) -> nn.Module:
        """The network whose outputs the spec constrains (``view`` itself, or ``view`` then ``C``)."""

    @abstractmethod
    def costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` distance of certified bounds of :meth:`network` from proving each alternative."""

    @abstractmethod
    def point_margin(self, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` signed margin of point outputs of :meth:`network` (negative = satisfied, deeper)."""

    @abstractmethod
    def which(self, lb: torch.Tensor | float, ub: torch.Tensor | float) -> int | None:
        """The first alternative one sample's certified bounds prove, or ``None``."""


class RunSpec(Spec):
    """Scalar head: the pre-squash output must lie inside one of the intervals ``[run_lo[r], run_hi[r]]``.

    Example:
        >>> spec = RunSpec(torch.tensor([-1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64))
        >>> spec.costs(torch.tensor([[0.0]]), torch.tensor([[1.0]])).tolist()
        [[0.5, 2.0]]
    """

    def __init__(self, run_lo: torch.Tensor, run_hi: torch.Tensor, runs: np.ndarray | None = None) -> None:
        self.run_lo, self.run_hi = run_lo, run_hi
        self.runs = runs if runs is not None else np.zeros((0, 2), dtype=np.int64)

    @classmethod
    def from_grid(cls, acceptable: np.ndarray, margin: float = 0.01) -> "RunSpec":
        """Runs of acceptable indices of a uniform grid of ``N = len(acceptable)`` tanh-squashed
        actions, each shrunk by ``margin`` of a half grid step at inner ends (clear of rounding
        ties); the grid's outer ends are open (``+-inf``).

        Example:
            >>> RunSpec.from_grid(np.array([True, True, False])).run_lo.tolist()
            [-inf]
        """
        runs = runs_of(acceptable)
        n = len(acceptable)
        half = 1.0 / max(n - 1, 1)
        m = margin * half
        a_lo = np.array([-np.inf if s == 0 else grid_action(int(s), n) - half + m for s, _ in runs])
        a_hi = np.array([np.inf if e == n - 1 else grid_action(int(e), n) + half - m for _, e in runs])
        return cls(torch.tensor(atanh_ends(a_lo), dtype=torch.float64),
                   torch.tensor(atanh_ends(a_hi), dtype=torch.float64), runs)

    def network(self, view: nn.Module) -> nn.Module:
        return view

    def costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """``[B, R]``: ``relu(lo_r - lb) + relu(ub - hi_r)``."""
        lo, hi = self.run_lo.to(lb.dtype), self.run_hi.to(lb.dtype)
        return torch.relu(lo - lb) + torch.relu(ub - hi)

    def point_margin(self, mu: torch.Tensor) -> torch.Tensor:
        """``[B]``: ``min_r max(lo_r - mu, mu - hi_r)``."""
        lo, hi = self.run_lo.to(mu.dtype), self.run_hi.to(mu.dtype)
        inside = torch.maximum(lo - mu, mu - hi)  # [B, R]; -inf-safe for the end runs
        return inside.min(-1).values

    def which(self, lb: torch.Tensor | float, ub: torch.Tensor | float) -> int | None:
        lb, ub = float(lb), float(ub)
        for r in range(len(self.run_lo)):
            if float(self.run_lo[r]) <= lb and ub <= float(self.run_hi[r]):
                return r
        return None


class MatrixSpec(Spec):
    """Vector head: rows ``C[j] . y > d[j]``; alternative ``g`` holds when every row with
    ``groups[j] == g`` does.  ``costs`` sums ``relu(d_j - lb_j)`` per alternative.

    Example:
        >>> spec = MatrixSpec(torch.tensor([[1.0, -1.0]]), torch.tensor([0.1]))   # y0 > y1 + 0.1
        >>> y = spec.network(nn.Identity())(torch.tensor([[1.0, 0.5]]))   # C y = [[0.5]]
        >>> round(float(spec.point_margin(y)), 6)
        -0.4
    """

    def __init__(self, C: torch.Tensor, d: torch.Tensor, groups: torch.Tensor | Sequence[int] | None = None) -> None:
        C = torch.as_tensor(C, dtype=torch.float32)
        if C.dim() != 2 or C.shape[0] == 0:
            raise ValueError("a specification matrix needs shape [rows >= 1, outputs]")
        self.C = C
        self.d = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        if self.d.shape[0] != C.shape[0]:
            raise ValueError(f"{C.shape[0]} spec rows but {self.d.shape[0]} thresholds")
        g = torch.zeros(C.shape[0], dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
        _, self.groups = torch.unique(g, return_inverse=True)
        self.n_alternatives = int(self.groups.max()) + 1
        self._nets: dict[int, nn.Module] = {}

    @classmethod
    def boxes(cls, lo: torch.Tensor, hi: torch.Tensor) -> "MatrixSpec":
        """Alternatives "the output lies in box ``r``": ``lo[r] <= y <= hi[r]`` (infinite ends skipped).

        Example:
            >>> MatrixSpec.boxes(torch.tensor([[0.0, -np.inf]]), torch.tensor([[1.0, 2.0]])).C.tolist()
            [[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]]
        """
        lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
        rows, d, groups = [], [], []
        out = lo.shape[1]
        for r in range(lo.shape[0]):
            for c in range(out):
                for sign, bound in ((1.0, lo[r, c]), (-1.0, hi[r, c])):
                    if math.isfinite(float(bound)):
                        row = torch.zeros(out)
                        row[c] = sign
                        rows.append(row)
                        d.append(sign * float(bound))
                        groups.append(r)
        return cls(torch.stack(rows), torch.tensor(d), groups)

    def network(self, view: nn.Module) -> nn.Module:
        key = id(view)
        if key not in self._nets:
            ref = next((p for p in view.parameters()), None) if isinstance(view, nn.Module) else None
            dtype = ref.dtype if ref is not None else torch.float32
            lin = nn.Linear(self.C.shape[1], self.C.shape[0], bias=False).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(self.C.to(dtype))
            lin.requires_grad_(False)
            self._nets[key] = nn.Sequential(view, lin)
        return self._nets[key]

    def _per_group(self, per_row: torch.Tensor, reduce: str) -> torch.Tensor:
        B = per_row.shape[0]
        out = torch.full((B, self.n_alternatives), -torch.inf if reduce == "amax" else 0.0, dtype=per_row.dtype)
        idx = self.groups.unsqueeze(0).expand(B, -1)
        return out.scatter_reduce(1, idx, per_row, reduce=reduce, include_self=reduce == "sum")

    def costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        return self._per_group(torch.relu(self.d.to(lb.dtype) - lb), "sum")

    def point_margin(self, y: torch.Tensor) -> torch.Tensor:
        return self._per_group(self.d.to(y.dtype) - y, "amax").min(-1).values

    def which(self, lb: torch.Tensor | float, ub: torch.Tensor | float) -> int | None:
        lbt = torch.as_tensor(lb, dtype=torch.float64).reshape(1, -1)
        ok = (self.costs(lbt, lbt)[0] <= 0).nonzero()
        return int(ok[0, 0]) if len(ok) else None


class RankSpec(MatrixSpec):
    """Vector head read out as its ``S`` largest outputs (top-S): none of the ``protected``
    outputs may be among them.

    Rows ``y_t - y_v > margin`` for every other output ``t`` and protected ``v`` (the spec matrix
    ``C`` has ``(n - |V|) |V|`` rows, bounded directly by CROWN); the goal is proved over a box
    when at least ``S`` others exceed every protected output on the whole box.  The cost is the
    sum of the ``S`` smallest per-other deficits ``sum_v relu(margin - lb_{t,v})``, so the gradient
    loop works on the others closest to a proof.  With ``threshold`` (a pre-squash value) a
    second alternative is added, the threshold readout's: every protected output below
    ``threshold - margin`` and at least one other above them all.

    Example:
        >>> spec = RankSpec(n_outputs=4, protected=[0], top=2)
        >>> spec.C.shape[0], spec.which(torch.tensor([[0.5, 0.2, -1.0]]), None)
        (3, 0)
        >>> round(float(spec.point_margin(spec.network(nn.Identity())(torch.tensor([[0.0, 1.0, 2.0, -1.0]])))), 4)
        -0.99
    """

    def __init__(self, n_outputs: int, protected: Sequence[int], top: int, margin: float = 0.01,
                 threshold: float | None = None) -> None:
        prot = sorted({int(v) for v in protected})
        if not prot or min(prot) < 0 or max(prot) >= n_outputs:
            raise ValueError(f"protected outputs must be distinct ids in [0, {n_outputs}), got {list(protected)}")
        others = [t for t in range(n_outputs) if t not in prot]
        if not 1 <= top <= len(others):
            raise ValueError(f"top-{top} cannot exclude {len(prot)} of {n_outputs} outputs")
        self.protected, self.others, self.top = prot, others, int(top)
        self.margin, self.threshold = float(margin), threshold
        rows, d = [], []
        for t in others:
            for v in prot:
                r = torch.zeros(n_outputs)
                r[t], r[v] = 1.0, -1.0
                rows.append(r)
                d.append(self.margin)
        self.n_rank = len(rows)
        if threshold is not None:
            for v in prot:
                r = torch.zeros(n_outputs)
                r[v] = -1.0
                rows.append(r)
                d.append(-float(threshold) + self.margin)
        super().__init__(torch.stack(rows), torch.tensor(d))
        self.n_alternatives = 1 if threshold is None else 2

    def _deficit_per_other(self, deficit: torch.Tensor) -> torch.Tensor:
        """``[B, n_others]``: summed over the protected outputs (rank rows are other-major)."""
        return deficit[:, : self.n_rank].reshape(deficit.shape[0], len(self.others), len(self.protected)).sum(-1)

    def costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        deficit = torch.relu(self.d.to(lb.dtype) - lb)
        per_other = self._deficit_per_other(deficit)
        rank = torch.topk(per_other, self.top, dim=-1, largest=False).values.sum(-1, keepdim=True)
        if self.threshold is None:
            return rank
        below = deficit[:, self.n_rank :].sum(-1, keepdim=True) + per_other.min(-1, keepdim=True).values
        return torch.cat([rank, below], 1)

    def point_margin(self, y: torch.Tensor) -> torch.Tensor:
        m = self.d.to(y.dtype) - y  # negative where a row holds
        per_other = m[:, : self.n_rank].reshape(m.shape[0], len(self.others), len(self.protected)).amax(-1)
        rank = torch.topk(per_other, self.top, dim=-1, largest=False).values[:, -1]
        if self.threshold is None:
            return rank
        below = torch.maximum(m[:, self.n_rank :].amax(-1), per_other.min(-1).values)
        return torch.minimum(rank, below)

    def which(self, lb: torch.Tensor | float, ub: torch.Tensor | float) -> int | None:
        lbt = torch.as_tensor(lb, dtype=torch.float64).reshape(1, -1)
        ok = (self.costs(lbt, lbt)[0] <= 0).nonzero()
        return int(ok[0, 0]) if len(ok) else None

    def certified_others(self, lb: torch.Tensor) -> int:
        """How many others are certified above every protected output (``top`` or more = proved).

        Example:
            >>> RankSpec(3, [0], 1).certified_others(torch.tensor([[0.5, -0.2]]))
            1
        """
        lbt = torch.as_tensor(lb, dtype=torch.float64).reshape(1, -1)
        return int((self._deficit_per_other(torch.relu(self.d - lbt)) <= 0).sum())
