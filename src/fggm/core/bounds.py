"""Certified output bounds of small feed-forward policies over an input box.

Two abstract domains over a box ``[lower, upper]`` (shape ``[batch, in]``):

* :func:`ibp` -- interval bound propagation, layer by layer.
* :func:`crown` -- backward linear relaxation (DeepPoly/CROWN).  Every pre-activation bound
  is itself computed by a full backward pass to the input box, intersected with IBP, so the
  result is never looser than :func:`ibp`.  ``alpha=True`` additionally optimises the lower
  ReLU slopes of the final backward pass (alpha-CROWN) by projected gradient steps.

Supported layers: ``nn.Linear``, ``nn.ReLU``, ``nn.Tanh``, ``nn.Hardtanh`` (and so
``nn.ReLU6``), :class:`Clip`, :class:`Affine` (an element-wise ``x * scale + shift``, e.g. an
observation normaliser), ``nn.Identity``, ``nn.Flatten`` and nested ``nn.Sequential``.  Any
other layer raises ``TypeError`` naming it.

The corners may require grad: the bounds are differentiable with respect to them (not with
respect to the network's weights), which is what a gradient attack through a certificate
needs.  A coordinate with ``lower == upper`` is a point.

Implementation notes (what makes it fast): element-wise layers in front of the first
``Linear`` map a box to a box exactly, so they are applied to the corners instead of being
relaxed; consecutive affine layers are folded; only neurons that IBP cannot prove stable get
a backward pass; neurons with zero slopes on both relaxation lines are pruned from the
matrix products; input coordinates of zero width never enter the ``|A W|`` product; lower
and upper bounds share one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Affine", "Clip", "ibp", "crown", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = "Linear, ReLU, Tanh, Hardtanh, Clip, Affine, Identity, Flatten, Sequential"
_ACTS = ("relu", "tanh", "clip")
_BISECTION_STEPS = 10  # as bound-propagation: identical relaxations, so results agree
_ZERO_WIDTH = 1e-9


def _as_float(x: Tensor | float) -> Tensor:
    """A detached floating tensor; keeps a floating tensor's dtype, else the default dtype."""
    t = torch.as_tensor(x).detach()
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


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


# --------------------------------------------------------------------------- layer parsing


@dataclass(frozen=True)
class _Op:
    kind: str  # "linear" | "affine" | "relu" | "tanh" | "clip"
    a: Tensor | None = None  # weight | scale | clip low
    b: Tensor | None = None  # bias | shift | clip high


def _parse(net: nn.Module, n_in: int, like: Tensor) -> tuple[list[_Op], int]:
    """Flatten ``net`` into element-wise/linear ops with tensors on ``like``'s device/dtype."""
    ops: list[_Op] = []
    width = n_in

    def vec(x: Tensor | float, n: int) -> Tensor:
        t = torch.as_tensor(x).detach().to(device=like.device, dtype=like.dtype)
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
            b = (m.bias.detach().to(like) if m.bias is not None else torch.zeros(w.shape[0]).to(like))
            ops.append(_Op("linear", w, b))
            width = m.out_features
        elif isinstance(m, Affine):
            ops.append(_Op("affine", vec(m.scale, width), vec(m.shift, width)))
        elif isinstance(m, nn.ReLU):
            ops.append(_Op("relu"))
        elif isinstance(m, nn.Tanh):
            ops.append(_Op("tanh"))
        elif isinstance(m, nn.Hardtanh):
            ops.append(_Op("clip", vec(m.min_val, width), vec(m.max_val, width)))
        elif isinstance(m, Clip):
            ops.append(_Op("clip", vec(m.low, width), vec(m.high, width)))
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


def _check_box(net: nn.Module, lower: Tensor, upper: Tensor) -> None:
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a torch.nn.Sequential, got {type(net).__name__}")
    if lower.dim() != 2 or lower.shape != upper.shape:
        raise ValueError(
            f"box corners must both have shape [batch, in]; got {tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    if bool((lower > upper).any()):
        raise ValueError("box has lower > upper in some coordinate")


# --------------------------------------------------------------------------- interval maps


def _act(kind: str, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    if kind == "relu":
        return torch.relu(x)
    if kind == "tanh":
        return torch.tanh(x)
    assert lo is not None and hi is not None
    return torch.maximum(torch.minimum(x, hi), lo)


def _interval(op: _Op, lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Exact image of a box under an element-wise op, or IBP through a Linear."""
    if op.kind == "linear":
        assert op.a is not None and op.b is not None
        centre, radius = (up + lo) / 2, (up - lo) / 2
        mid = centre @ op.a.T + op.b
        dev = radius @ op.a.abs().T
        return mid - dev, mid + dev
    if op.kind == "affine":
        x1, x2 = lo * op.a + op.b, up * op.a + op.b
        return torch.minimum(x1, x2), torch.maximum(x1, x2)
    return _act(op.kind, lo, op.a, op.b), _act(op.kind, up, op.a, op.b)


def ibp(net: nn.Sequential, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bounds of ``net`` over the box ``[lower, upper]`` (shape ``[batch, in]``).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0]])); _ = net[0].bias.zero_()
        >>> ibp(net, torch.zeros(1, 2), torch.ones(1, 2))
        (tensor([[-1.]]), tensor([[1.]]))
    """
    _check_box(net, lower, upper)
    ops, _ = _parse(net, lower.shape[1], lower)
    lo, up = lower, upper
    for op in ops:
        lo, up = _interval(op, lo, up)
    return lo, up


# --------------------------------------------------------------------------- relaxations


@dataclass
class _Relax:
    """Linear lines ``aL*z + bL <= act(z) <= aU*z + bU`` per neuron, shape ``[batch, n]``."""

    aL: Tensor
    bL: Tensor
    aU: Tensor
    bU: Tensor
    live: Tensor  # indices of neurons with a non-zero slope in some batch element
    alpha_mask: Tensor | None = None  # unstable ReLUs (bool [batch, n]) whose lower slope is free


def _safe(x: Tensor) -> Tensor:
    return torch.where(x > _ZERO_WIDTH, x, torch.ones_like(x))


def _tanh_tangent_through_left(l: Tensor, u: Tensor) -> Tensor:
    """Slope of an upper line of tanh on [l, u] (l < 0 < u) through (l, tanh l).

    Bisection for the tangent point d in [0, u]; the left end of the bracket has a slope at
    least the exact tangent's (tanh' decreases on [0, inf)), so the line stays sound.
    """
    with torch.no_grad():
        l, u = l.detach(), u.detach()
        fl = torch.tanh(l)
        left, right = torch.zeros_like(u), u.clone()
        for _ in range(_BISECTION_STEPS):
            mid = (left + right) / 2
            g = (torch.tanh(mid) - fl) / (mid - l) - (1 - torch.tanh(mid) ** 2)
            go_right = g <= 0
            left = torch.where(go_right, mid, left)
            right = torch.where(go_right, right, mid)
        return 1 - torch.tanh(left) ** 2


def _relax_tanh(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    width = u - l
    zero = width <= _ZERO_WIDTH
    fl, fu = torch.tanh(l), torch.tanh(u)
    secant = (fu - fl) / _safe(width)
    d = (l + u) / 2
    fd = torch.tanh(d)
    dd = 1 - fd**2
    dl, du = 1 - fl**2, 1 - fu**2
    neg, pos = u <= 0, l >= 0
    cross = ~neg & ~pos
    # upper line
    up_tangent_slope = _tanh_tangent_through_left(torch.where(cross, l, -torch.ones_like(l)),
                                                  torch.where(cross, u, torch.ones_like(u)))
    cross_secant_up = cross & (secant <= du)
    aU = torch.where(neg | cross_secant_up, secant, torch.where(pos, dd, up_tangent_slope))
    bU = torch.where(neg | cross_secant_up | (cross & ~cross_secant_up), fl - aU * l, fd - dd * d)
    # lower line (tanh is odd: mirror the upper construction)
    lo_tangent_slope = _tanh_tangent_through_left(torch.where(cross, -u, -torch.ones_like(u)),
                                                  torch.where(cross, -l, torch.ones_like(l)))
    cross_secant_lo = cross & (secant <= dl)
    aL = torch.where(pos | cross_secant_lo, secant, torch.where(neg, dd, lo_tangent_slope))
    bL = torch.where(pos | cross_secant_lo | (cross & ~cross_secant_lo), fu - aL * u, fd - dd * d)
    zeros = torch.zeros_like(l)
    return (torch.where(zero, zeros, aL), torch.where(zero, fl, bL),
            torch.where(zero, zeros, aU), torch.where(zero, fu, bU))


def _relax_clip(l: Tensor, u: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    zero = (u - l) <= _ZERO_WIDTH
    width = _safe(u - l)
    ones, zeros = torch.ones_like(l), torch.zeros_like(l)
    below, above = u <= a, l >= b
    inside = (l >= a) & (u <= b)
    low_bend = (l < a) & (u > a) & (u <= b)
    high_bend = (l >= a) & (l < b) & (u > b)
    full = (l < a) & (u > b)
    # lower line: y >= aL*z + bL
    aL = torch.where(inside, ones, zeros)
    aL = torch.where(low_bend, (u - a >= a - l).to(l.dtype), aL)
    aL = torch.where(high_bend, (b - l) / width, aL)
    aL = torch.where(full, torch.where(u - a > a - l, (b - a) / _safe(u - a), zeros), aL)
    bL = torch.where(below, a, torch.where(above, b, zeros))
    bL = torch.where(low_bend | full, a * (1 - aL), bL)
    bL = torch.where(high_bend, l * (1 - aL), bL)
    # upper line: y <= aU*z + bU
    aU = torch.where(inside, ones, zeros)
    aU = torch.where(high_bend, (b - l >= u - b).to(l.dtype), aU)
    aU = torch.where(low_bend, (u - a) / width, aU)
    aU = torch.where(full, torch.where(b - l > u - b, (b - a) / _safe(b - l), zeros), aU)
    bU = torch.where(below, a, torch.where(above, b, zeros))
    bU = torch.where(high_bend | full, b * (1 - aU), bU)
    bU = torch.where(low_bend, a - aU * l, bU)
    cl, cu = torch.maximum(torch.minimum(l, b), a), torch.maximum(torch.minimum(u, b), a)
    return (torch.where(zero, zeros, aL), torch.where(zero, cl, bL),
            torch.where(zero, zeros, aU), torch.where(zero, cu, bU))


def _relax(op: _Op, l: Tensor, u: Tensor) -> _Relax:
    alpha_mask = None
    if op.kind == "relu":
        unstable = (l < 0) & (u > 0)
        aU = torch.where(unstable, u / _safe(u - l), (l >= 0).to(l.dtype))
        bU = torch.where(unstable, -l * aU, torch.zeros_like(l))
        aL = torch.where(unstable, (u >= -l).to(l.dtype), (l >= 0).to(l.dtype))
        bL = torch.zeros_like(l)
        alpha_mask = unstable
    elif op.kind == "tanh":
        aL, bL, aU, bU = _relax_tanh(l, u)
    else:
        assert op.a is not None and op.b is not None
        aL, bL, aU, bU = _relax_clip(l, u, op.a, op.b)
    live = ((aL != 0) | (aU != 0)).any(0).nonzero().flatten()
    return _Relax(aL, bL, aU, bU, live, alpha_mask)


def _needs_bounds(op: _Op, l: Tensor, u: Tensor) -> Tensor:
    """Neurons (any batch element) whose relaxation depends on how tight [l, u] is."""
    if op.kind == "relu":
        m = (l < 0) & (u > 0)
    elif op.kind == "tanh":
        m = (u - l) > _ZERO_WIDTH
    else:
        assert op.a is not None and op.b is not None
        m = ((l < op.a) & (u > op.a)) | ((l < op.b) & (u > op.b))
    return m.any(0)


# --------------------------------------------------------------------------- CROWN


@dataclass
class _Seg:
    """Affine map between activations: dense ``W x + b`` or diagonal ``s * x + t``."""

    W: Tensor | None
    b: Tensor
    s: Tensor | None = None

    def then(self, op: _Op) -> "_Seg":
        assert op.a is not None and op.b is not None
        if op.kind == "linear":
            if self.W is not None:
                return _Seg(op.a @ self.W, op.a @ self.b + op.b)
            assert self.s is not None
            return _Seg(op.a * self.s, op.a @ self.b + op.b)
        if self.W is not None:
            return _Seg(op.a[:, None] * self.W, op.a * self.b + op.b)
        assert self.s is not None
        return _Seg(None, op.a * self.b + op.b, op.a * self.s)

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Dense rows ``idx`` of the map: ``(W[idx], b[idx])``."""
        if self.W is not None:
            return self.W[idx], self.b[idx]
        assert self.s is not None
        dense = torch.zeros(len(idx), self.s.shape[0], dtype=self.b.dtype, device=self.b.device)
        dense[torch.arange(len(idx), device=idx.device), idx] = self.s[idx]
        return dense, self.b[idx]

    def interval(self, lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
        if self.W is not None:
            return _interval(_Op("linear", self.W, self.b), lo, up)
        assert self.s is not None
        return _interval(_Op("affine", self.s, self.b), lo, up)


def _identity(n: int, like: Tensor) -> _Seg:
    return _Seg(None, torch.zeros(n, dtype=like.dtype, device=like.device),
                torch.ones(n, dtype=like.dtype, device=like.device))


class _Crown:
    """One CROWN evaluation: canonical form box -> S0 -> act1 -> S1 -> ... -> SN -> trailing."""

    def __init__(self, ops: list[_Op], lower: Tensor, upper: Tensor) -> None:
        i = 0
        lo, up = lower, upper
        while i < len(ops) and ops[i].kind != "linear":  # exact element-wise prefix
            lo, up = _interval(ops[i], lo, up)
            i += 1
        j = len(ops)
        while j > i and ops[j - 1].kind in _ACTS:
            j -= 1
        self.trailing = ops[j:]
        self.segs: list[_Seg] = []
        self.acts: list[_Op] = []
        width = lower.shape[1]
        seg: _Seg | None = None
        # plain layer-by-layer IBP of every pre-activation, the bound CROWN is intersected with
        self.ibp_pre: list[tuple[Tensor, Tensor]] = []
        plo, pup = lo, up
        for op in ops[i:j]:
            if op.kind in _ACTS:
                self.segs.append(seg if seg is not None else _identity(width, lower))
                self.acts.append(op)
                self.ibp_pre.append((plo, pup))
                seg = None
            else:
                seg = (seg if seg is not None else _identity(width, lower)).then(op)
                width = seg.b.shape[0]
            plo, pup = _interval(op, plo, pup)
        if seg is not None:
            self.segs.append(seg)
        self.lo0, self.up0 = lo, up
        self.c0, self.r0 = (up + lo) / 2, (up - lo) / 2
        self.nz = (self.r0 > 0).any(0).nonzero().flatten()
        self.relax: list[_Relax] = []
        self._w0: Tensor | None = None

    # -- backward substitution ---------------------------------------------------------------
    # Coefficients are kept transposed, ``At`` of shape [batch, n, 2R]: column r < R is the
    # lower bound of output row r, column R + r its upper bound.  Pruning dead neurons is then
    # a cheap row gather, and both halves share every matrix product.
    def bound_rows(self, j: int, W: Tensor, b: Tensor,
                   alphas: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds of ``W @ y_j + b`` (``y_0`` the input box), ``[batch, R]``."""
        R = W.shape[0]
        At = torch.cat([W.T, W.T], 1).unsqueeze(0)  # [1, n, 2R]
        c = torch.cat([b, b], 0).unsqueeze(0)  # [1, 2R]
        upper_half = torch.tensor([0.0, 1.0], dtype=W.dtype, device=W.device).view(1, 1, 2, 1)
        sign = 1 - 2 * upper_half
        for i in range(j, 0, -1):  # act i (1-based) lives in self.relax[i-1], fed by segs[i-1]
            rx = self.relax[i - 1]
            B, n = max(At.shape[0], rx.aL.shape[0]), At.shape[1]
            aL4 = rx.aL[..., None, None]
            if alphas is not None and i in alphas:
                assert rx.alpha_mask is not None
                aL4 = torch.where(rx.alpha_mask[..., None], alphas[i], rx.aL[..., None]).view(B, n, 2, R)
            d4 = aL4 - rx.aU[..., None, None]
            base, delta = rx.aU[..., None, None] + d4 * upper_half, d4 * sign
            db = (rx.bL - rx.bU)[..., None]
            bbase, bdelta = rx.bU[..., None] + db * upper_half[..., 0], db * sign[..., 0]  # [B, n, 2]
            A4 = At.view(At.shape[0], n, 2, R)
            Ap4 = A4.clamp(min=0)
            c = c + (torch.einsum("bnhr,bnh->bhr", A4.expand(B, n, 2, R), bbase)
                     + torch.einsum("bnhr,bnh->bhr", Ap4.expand(B, n, 2, R), bdelta)).reshape(B, 2 * R)
            At = torch.addcmul(A4 * base, Ap4, delta).reshape(B, n, 2 * R)
            seg = self.segs[i - 1]
            if i == 1:
                return self._concretise(At, c, seg, rx.live, R)
            c = c + (seg.b @ At)
            if seg.W is not None:
                live = rx.live
                At = seg.W[live].T @ (At if len(live) == n else At[:, live])
            else:
                assert seg.s is not None
                At = At * seg.s[:, None]
        return self._concretise_input(At, c, R)

    def _concretise(self, At: Tensor, c: Tensor, seg: _Seg, live: Tensor, R: int) -> tuple[Tensor, Tensor]:
        """Bounds of ``A @ S0(x) + c`` over the box without materialising ``A @ W0`` on points."""
        if seg.W is None:
            assert seg.s is not None
            return self._concretise_input(At * seg.s[:, None], c + seg.b @ At, R)
        z_mid = self.c0 @ seg.W.T + seg.b  # [B, n1]
        val = c + (z_mid.unsqueeze(1) @ At).squeeze(1)
        if len(self.nz) == 0:
            return val[:, :R], val[:, R:]
        if self._w0 is None:
            self._w0 = seg.W.index_select(1, self.nz)
        full = len(live) == At.shape[1]
        M = (self._w0 if full else self._w0[live]).T @ (At if full else At[:, live])
        dev = (self.r0[:, self.nz].unsqueeze(1) @ M.abs()).squeeze(1)
        return val[:, :R] - dev[:, :R], val[:, R:] + dev[:, R:]

    def _concretise_input(self, At: Tensor, c: Tensor, R: int) -> tuple[Tensor, Tensor]:
        val = c + (self.c0.unsqueeze(1) @ At).squeeze(1)
        dev = (self.r0.unsqueeze(1) @ At.abs()).squeeze(1)
        return val[:, :R] - dev[:, :R], val[:, R:] + dev[:, R:]

    # -- forward over layers ------------------------------------------------------------------
    def intermediate(self) -> tuple[Tensor, Tensor]:
        """Tightest pre-activation bounds of every activation; returns the last layer's IBP box."""
        lo, up = self.lo0, self.up0
        for j, (seg, op) in enumerate(zip(self.segs, self.acts), start=1):
            if j == 1:
                zl, zu = seg.interval(lo, up)  # exact: a box through an affine map
            else:
                zl, zu = self.ibp_pre[j - 1]
                rows = _needs_bounds(op, zl, zu).nonzero().flatten()
                if len(rows):
                    cl, cu = self.bound_rows(j - 1, *seg.rows(rows))
                    zl = zl.index_copy(1, rows, torch.maximum(zl[:, rows], cl))
                    zu = zu.index_copy(1, rows, torch.minimum(zu[:, rows], cu))
                    zu = torch.maximum(zu, zl)  # guard float noise on near-degenerate neurons
            self.relax.append(_relax(op, zl, zu))
            lo, up = _act(op.kind, zl, op.a, op.b), _act(op.kind, zu, op.a, op.b)
        return lo, up

    def output(self, lo: Tensor, up: Tensor, alphas: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if not self.segs:  # no Linear at all: the prefix was exact
            out_l, out_u = lo, up
        else:
            last = self.segs[-1]
            il, iu = last.interval(lo, up)
            n = len(self.acts)
            W, b = last.rows(torch.arange(il.shape[1], device=il.device))
            cl, cu = self.bound_rows(n, W, b, alphas)
            out_l, out_u = torch.maximum(il, cl), torch.minimum(iu, cu)
        for op in self.trailing:
            out_l, out_u = _interval(op, out_l, out_u)
        return out_l, out_u


def crown(net: nn.Sequential, lower: Tensor, upper: Tensor, *, alpha: bool = False,
          alpha_steps: int = 20, alpha_lr: float = 0.1) -> tuple[Tensor, Tensor]:
    """CROWN (DeepPoly-style backward linear) bounds of ``net`` over ``[lower, upper]``.

    ``lower``/``upper`` have shape ``[batch, in]`` and may require grad; the returned
    ``(lb, ub)`` of shape ``[batch, out]`` are differentiable with respect to them and never
    looser than :func:`ibp`.  ``alpha=True`` runs ``alpha_steps`` Adam steps on the lower
    slopes of unstable ReLUs in the final backward pass (alpha-CROWN) and keeps, per output,
    the best bound seen (the plain CROWN slopes are the starting point, so it is never looser).

    Example:
        >>> torch.manual_seed(0); net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> lb, ub = crown(net, -torch.ones(1, 3), torch.ones(1, 3))
        >>> bool((lb <= net(torch.zeros(1, 3))).all() and (net(torch.zeros(1, 3)) <= ub).all())
        True
    """
    _check_box(net, lower, upper)
    ops, _ = _parse(net, lower.shape[1], lower)
    cr = _Crown(ops, lower, upper)
    lo, up = cr.intermediate()
    relu_acts = {i + 1: rx for i, rx in enumerate(cr.relax)
                 if rx.alpha_mask is not None and bool(rx.alpha_mask.any())}
    if not alpha or not relu_acts or alpha_steps <= 0 or not cr.segs:
        return cr.output(lo, up)
    return _alpha_crown(cr, lo, up, relu_acts, alpha_steps, alpha_lr)


def _alpha_crown(cr: _Crown, lo: Tensor, up: Tensor, relu_acts: dict[int, _Relax],
                 steps: int, lr: float) -> tuple[Tensor, Tensor]:
    R = cr.segs[-1].b.shape[0]
    detached = _Crown.__new__(_Crown)
    detached.__dict__.update(cr.__dict__)
    detached.c0, detached.r0 = cr.c0.detach(), cr.r0.detach()
    detached.relax = [_Relax(r.aL.detach(), r.bL.detach(), r.aU.detach(), r.bU.detach(), r.live,
                             r.alpha_mask) for r in cr.relax]
    lo_d, up_d = lo.detach(), up.detach()
    params = {i: rx.aL.detach().unsqueeze(-1).expand(-1, -1, 2 * R).clone().requires_grad_()
              for i, rx in relu_acts.items()}
    best = {i: p.detach().clone() for i, p in params.items()}
    best_l = best_u = None
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            l, u = detached.output(lo_d, up_d, params)
            if best_l is None or best_u is None:
                best_l, best_u = l.detach().clone(), u.detach().clone()
                better_l = better_u = torch.ones_like(l, dtype=torch.bool)
            else:
                better_l, better_u = l.detach() > best_l, u.detach() < best_u
                best_l, best_u = torch.where(better_l, l.detach(), best_l), torch.where(better_u, u.detach(), best_u)
            for i, p in params.items():
                better = torch.cat([better_l, better_u], 1).unsqueeze(1)  # [B, 1, 2R]
                best[i] = torch.where(better, p.detach(), best[i])
            if step == steps:
                break
            opt.zero_grad()
            (u.sum() - l.sum()).backward()
            opt.step()
            with torch.no_grad():
                for p in params.values():
                    p.clamp_(0.0, 1.0)
    return cr.output(lo, up, best)
