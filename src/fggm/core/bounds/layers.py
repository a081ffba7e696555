"""Layers, parsing into element-wise/linear ops, interval maps and IBP (with outward rounding).

A network is flattened into a list of :class:`Op`: ``linear`` (``W x + b``; ``W`` may carry a
batch dimension when it is a per-example specification matrix), ``affine`` (element-wise
``x * s + t``) and the monotone activations ``relu``, ``tanh`` and ``clip``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Affine", "Clip", "ibp", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = "Linear, ReLU, Tanh, Hardtanh, Clip, Affine, Identity, Flatten, Sequential"
ACTS = ("relu", "tanh", "clip")
ZERO_WIDTH = 1e-9  # an interval narrower than this is a point for the relaxations
#: Outward rounding: every linear bound is widened by ``ROUNDING * eps(dtype) * magnitude``, where
#: the magnitude sums the absolute values of all terms that entered it (see ``backward``).
ROUNDING = 64.0


def _as_float(x: Tensor | float) -> Tensor:
    """A detached floating tensor; keeps a floating tensor's dtype, else the default dtype."""
    t = torch.as_tensor(x).detach()
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def eps_of(t: Tensor) -> float:
    """Machine epsilon of ``t``'s floating dtype."""
    return float(torch.finfo(t.dtype).eps)


class Affine(nn.Module):
    """Element-wise ``x * scale + shift`` (an observation normaliser is one).

    Example:
        >>> Affine(torch.tensor([2.0]), torch.tensor([1.0]))(torch.tensor([[3.0]]))
        tensor([[7.]])
    """

    def __init__(self, scale: Tensor | float, shift: Tensor | float) -> None:
        super().__init__()
        self.register_buffer("scale", _as_float(scale))
        self.register_buffer("shift", _as_float(shift))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class Clip(nn.Module):
    """Element-wise clamp to ``[low, high]`` (scalars or per-feature tensors).

    Example:
        >>> Clip(-1.0, 1.0)(torch.tensor([[-3.0, 0.5, 2.0]]))
        tensor([[-1.0000,  0.5000,  1.0000]])
    """

    def __init__(self, low: Tensor | float, high: Tensor | float) -> None:
        super().__init__()
        low_t, high_t = _as_float(low), _as_float(high)
        if bool((low_t > high_t).any()):
            raise ValueError("Clip needs low <= high")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Op:
    """One flattened layer: ``kind`` in linear | affine | relu | tanh | clip."""

    kind: str
    a: Tensor | None = None  # weight [out, in] or [batch, out, in] | scale | clip low
    b: Tensor | None = None  # bias [out] or [batch, out] | shift | clip high


def parse(net: nn.Module, n_in: int, like: Tensor) -> tuple[list[Op], int]:
    """Flatten ``net`` into ops with tensors on ``like``'s device/dtype; returns ``(ops, out width)``."""
    ops: list[Op] = []
    width = n_in

    def vec(x: Tensor | float, n: int) -> Tensor:
        # a Python float goes straight to the box's dtype (not through float32: Hardtanh(-0.7)
        # would otherwise clip at -0.69999998807907 in float64)
        t = (x.detach() if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)).to(
            device=like.device, dtype=like.dtype)
        return t.expand(n).clone() if t.dim() == 0 else t.reshape(n)

    def visit(m: nn.Module, where: str) -> None:
        nonlocal width
        if isinstance(m, nn.Sequential):
            for i, child in enumerate(m):
                visit(child, f"{where}.{i}" if where else str(i))
        elif isinstance(m, nn.Linear):
            if m.in_features != width:
                raise ValueError(f"layer {where} (Linear) expects {m.in_features} inputs, gets {width}")
            w = m.weight.detach().to(device=like.device, dtype=like.dtype)
            b = m.bias.detach().to(w) if m.bias is not None else torch.zeros_like(w[:, 0])
            ops.append(Op("linear", w, b))
            width = m.out_features
        elif isinstance(m, Affine):
            ops.append(Op("affine", vec(m.scale, width), vec(m.shift, width)))
        elif isinstance(m, nn.ReLU):
            ops.append(Op("relu"))
        elif isinstance(m, nn.Tanh):
            ops.append(Op("tanh"))
        elif isinstance(m, nn.Hardtanh):
            ops.append(Op("clip", vec(m.min_val, width), vec(m.max_val, width)))
        elif isinstance(m, Clip):
            ops.append(Op("clip", vec(m.low, width), vec(m.high, width)))
        elif isinstance(m, nn.Identity):
            pass
        elif isinstance(m, nn.Flatten) and m.start_dim in (1, -1) and m.end_dim == -1:
            pass
        else:
            raise TypeError(
                f"unsupported layer {type(m).__name__} at position {where or 0}; "
                f"supported: {SUPPORTED_LAYERS}"
            )

    visit(net, "")
    return ops, width


def spec_op(C: Tensor, n_out: int, batch: int, like: Tensor) -> Op:
    """The bias-free linear op of a specification matrix ``C`` (``[S, out]`` or ``[batch, S, out]``)."""
    if not isinstance(C, Tensor):
        raise TypeError(f"C must be a tensor, got {type(C).__name__}")
    c = C.detach().to(device=like.device, dtype=like.dtype)
    if c.dim() == 2 and c.shape[1] == n_out:
        return Op("linear", c, torch.zeros_like(c[:, 0]))
    if c.dim() == 3 and c.shape[0] == batch and c.shape[2] == n_out:
        return Op("linear", c, torch.zeros_like(c[:, :, 0]))
    raise ValueError(
        f"C must have shape [S, {n_out}] or [{batch}, S, {n_out}] for this net and box; got {tuple(c.shape)}"
    )


def check_box(net: nn.Module, lower: Tensor, upper: Tensor) -> None:
    """Raise on a net that is not a Sequential or corners that are not a valid ``[batch, in]`` box."""
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a torch.nn.Sequential, got {type(net).__name__}")
    if lower.dim() != 2 or lower.shape != upper.shape:
        raise ValueError(
            f"box corners must both have shape [batch, in]; got {tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    if bool((lower > upper).any()):
        raise ValueError("box has lower > upper in some coordinate")


# --------------------------------------------------------------------------- interval maps


def act(kind: str, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    """The activation ``kind`` applied element-wise (``lo``/``hi``: a clip's limits)."""
    if kind == "relu":
        return torch.relu(x)
    if kind == "tanh":
        return torch.tanh(x)
    assert lo is not None and hi is not None
    return torch.maximum(torch.minimum(x, hi), lo)


def linear_map(W: Tensor, x: Tensor) -> Tensor:
    """``x @ W.T`` for ``x [B, in]`` and ``W [out, in]`` or per-example ``W [B, out, in]``."""
    if W.dim() == 2:
        return x @ W.T
    return torch.bmm(W, x.unsqueeze(-1)).squeeze(-1)


def interval(op: Op, lo: Tensor, up: Tensor, rounding: bool = True) -> tuple[Tensor, Tensor]:
    """Image of a box under an element-wise op (exact), or IBP through a Linear.

    With ``rounding`` a Linear's interval is widened by the floating-point error of its terms
    (``ROUNDING * eps * (|x| |W| + |b|)``), which also covers the relative rounding of the
    element-wise maps in front of it.
    """
    if op.kind == "linear":
        assert op.a is not None and op.b is not None
        centre, radius = (up + lo) / 2, (up - lo) / 2
        absW = op.a.abs()
        mid = linear_map(op.a, centre) + op.b
        if not rounding:
            dev = linear_map(absW, radius)
            return mid - dev, mid + dev
        both = linear_map(absW, torch.cat([radius, centre.abs() + radius], 0)) if op.a.dim() == 2 else \
            torch.cat([linear_map(absW, radius), linear_map(absW, centre.abs() + radius)], 0)
        dev, mag = both.split(lo.shape[0], 0)
        dev = dev + (ROUNDING * eps_of(lo)) * (mag + op.b.abs()).detach()
        return mid - dev, mid + dev
    if op.kind == "affine":
        x1, x2 = lo * op.a + op.b, up * op.a + op.b
        return torch.minimum(x1, x2), torch.maximum(x1, x2)
    return act(op.kind, lo, op.a, op.b), act(op.kind, up, op.a, op.b)


def ibp(net: nn.Sequential, lower: Tensor, upper: Tensor, *, C: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Interval bounds of ``net`` (or of ``C @ net``) over the box ``[lower, upper]`` (``[batch, in]``).

    ``C`` (``[S, out]``, or ``[batch, S, out]`` per example) bounds ``C @ net(x)``, exactly as if a
    bias-free ``nn.Linear`` with weight ``C`` were appended to ``net``.  Each Linear's interval is
    rounded outward by an estimate of its floating-point error, so ``lb <= ub`` always.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0]])); _ = net[0].bias.zero_()
        >>> lb, ub = ibp(net, torch.zeros(1, 2), torch.ones(1, 2))
        >>> round(lb.item(), 4), round(ub.item(), 4)
        (-1.0, 1.0)
    """
    check_box(net, lower, upper)
    ops, width = parse(net, lower.shape[1], lower)
    if C is not None:
        ops.append(spec_op(C, width, lower.shape[0], lower))
    lo, up = lower, upper
    for op in ops:
        lo, up = interval(op, lo, up)
    return lo, up
