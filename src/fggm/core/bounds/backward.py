"""CROWN: backward linear bound propagation over a box, with outward rounding.

The net is put in a canonical form ``box -> prefix -> S0 -> act1 -> S1 -> ... -> actN -> SN ->
trailing``: the element-wise prefix in front of the first Linear maps a box to a box exactly,
consecutive affine layers are folded into the segments ``S_i`` (dense ``W x + b`` or diagonal
``s * x + t``), and element-wise layers after the last Linear are applied to its interval.

Every pre-activation bound comes from a backward pass to the input box, intersected with IBP
(and, in alpha-CROWN, with the plain CROWN bound).  Coefficients are kept transposed, ``At`` of
shape ``[batch, n, 2R]``: column ``r < R`` bounds row ``r`` from below, column ``R + r`` from
above, so both halves share every matrix product.

Outward rounding: each bound is widened by ``ROUNDING * eps * magnitude``, where the magnitude
adds up ``|coefficient| * |value|`` over every term that entered the bound (the values bounded by
the layers' IBP magnitudes).  It is an a-priori estimate of the floating-point error, not interval
arithmetic, but it dominates the observed error by orders of magnitude and makes ``lb <= ub``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fggm.core.bounds.layers import ACTS, ROUNDING, Op, act, eps_of, interval, linear_map
from fggm.core.bounds.relaxations import Lines, Relaxation

#: ``theta`` tensors of one backward pass: activation index (1-based) -> (lower, upper), each
#: ``[batch, n_i, 2, R]`` or ``None``.
Thetas = dict[int, tuple[Tensor | None, Tensor | None]]


@dataclass
class Seg:
    """Affine map between activations: dense ``W x + b`` (``W`` maybe per example) or ``s * x + b``."""

    W: Tensor | None
    b: Tensor
    s: Tensor | None = None

    def then(self, op: Op) -> "Seg":
        """This map followed by ``op`` (a Linear or an element-wise affine)."""
        assert op.a is not None and op.b is not None
        if op.kind == "linear":
            if self.W is not None:
                return Seg(torch.matmul(op.a, self.W), _apply(op.a, self.b) + op.b)
            assert self.s is not None
            return Seg(op.a * self.s, _apply(op.a, self.b) + op.b)
        if self.W is not None:
            return Seg(op.a[:, None] * self.W, op.a * self.b + op.b)
        assert self.s is not None
        return Seg(None, op.a * self.b + op.b, op.a * self.s)

    @property
    def out(self) -> int:
        return self.b.shape[-1]

    def dense(self) -> tuple[Tensor, Tensor]:
        """The whole map as dense ``(W, b)``."""
        if self.W is not None:
            return self.W, self.b
        return self.rows(torch.arange(self.out, device=self.b.device))

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Dense rows ``idx`` of the map: ``(W[..., idx, :], b[..., idx])``."""
        if self.W is not None:
            return self.W[..., idx, :], self.b[..., idx]
        assert self.s is not None
        dense = torch.zeros(len(idx), self.s.shape[0], dtype=self.b.dtype, device=self.b.device)
        dense[torch.arange(len(idx), device=idx.device), idx] = self.s[idx]
        return dense, self.b[idx]

    def interval(self, lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
        if self.W is not None:
            return interval(Op("linear", self.W, self.b), lo, up)
        assert self.s is not None
        return interval(Op("affine", self.s, self.b), lo, up)


def _apply(W: Tensor, b: Tensor) -> Tensor:
    """``W @ b`` for ``W [out, in]`` or ``[B, out, in]`` and ``b [in]`` or ``[B, in]``."""
    if W.dim() == 2 and b.dim() == 1:
        return W @ b
    return torch.matmul(W, b.unsqueeze(-1)).squeeze(-1)


def _identity(n: int, like: Tensor) -> Seg:
    return Seg(None, torch.zeros(n, dtype=like.dtype, device=like.device),
               torch.ones(n, dtype=like.dtype, device=like.device))


def _needs_bounds(op: Op, l: Tensor, u: Tensor) -> Tensor:
    """Neurons (any batch element) whose relaxation depends on how tight ``[l, u]`` is."""
    if op.kind == "relu":
        m = (l < 0) & (u > 0)
    elif op.kind == "tanh":
        m = (u - l) > 1e-9
    else:
        assert op.a is not None and op.b is not None
        m = ((l < op.a) & (u > op.a)) | ((l < op.b) & (u > op.b))
    return m.any(0)


def _magnitude(v: Tensor, At: Tensor) -> Tensor:
    """``sum_n v[b, n] * |At[b, n, :]|`` (detached), ``[batch, 2R]``."""
    with torch.no_grad():
        return torch.matmul(v.unsqueeze(1), At.detach().abs()).squeeze(1)


class Engine:
    """CROWN on one box: canonical form, then :meth:`run` for (alpha-)CROWN passes.

    Example:
        >>> from torch import nn
        >>> from fggm.core.bounds.layers import parse
        >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> lo, up = -torch.ones(1, 2), torch.ones(1, 2)
        >>> lb, ub = Engine(parse(net, 2, lo)[0], lo, up).run()
        >>> bool(lb <= ub)
        True
    """

    def __init__(self, ops: list[Op], lower: Tensor, upper: Tensor) -> None:
        i = 0
        lo, up = lower, upper
        while i < len(ops) and ops[i].kind != "linear":  # exact element-wise prefix
            lo, up = interval(ops[i], lo, up)
            i += 1
        j = len(ops)
        while j > i and ops[j - 1].kind in ACTS:
            j -= 1
        self.trailing = ops[j:]
        self.segs: list[Seg] = []
        self.acts: list[Op] = []
        width = lower.shape[1]
        seg: Seg | None = None
        # layer-by-layer IBP of every pre-activation (what CROWN is intersected with), and the
        # magnitudes |W| |y| + |b| of the terms of each pre-activation (for outward rounding)
        self.ibp_pre: list[tuple[Tensor, Tensor]] = []
        self.zmag: list[Tensor] = []
        self.ymag: list[Tensor] = []
        plo, pup = lo, up
        ymag = torch.maximum(lo.abs(), up.abs()).detach()
        zmag = ymag
        for op in ops[i:j]:
            if op.kind in ACTS:
                self.segs.append(seg if seg is not None else _identity(width, lower))
                self.acts.append(op)
                self.ibp_pre.append((plo, pup))
                self.zmag.append(zmag)
                seg = None
            else:
                seg = (seg if seg is not None else _identity(width, lower)).then(op)
                width = seg.out
            plo, pup = interval(op, plo, pup)
            with torch.no_grad():
                if op.kind in ACTS:
                    ymag = torch.maximum(plo.abs(), pup.abs()).detach()
                    self.ymag.append(ymag)
                    zmag = ymag
                elif op.kind == "linear":
                    assert op.a is not None and op.b is not None
                    zmag = linear_map(op.a.abs(), zmag) + op.b.abs()
                else:
                    assert op.a is not None and op.b is not None
                    zmag = zmag * op.a.abs() + op.b.abs()
        if seg is not None:
            self.segs.append(seg)
        self.lo0, self.up0 = lo, up
        self.c0, self.r0 = (up + lo) / 2, (up - lo) / 2
        self.nz = (self.r0 > 0).any(0).nonzero().flatten()
        self.rows: dict[int, Tensor] = {}  # act index (1-based, >= 2) -> rows needing a backward pass
        for k in range(2, len(self.acts) + 1):
            self.rows[k] = _needs_bounds(self.acts[k - 1], *self.ibp_pre[k - 1]).nonzero().flatten()
        self.relax: list[Relaxation] = []
        self._w0: Tensor | None = None
        self._eps = ROUNDING * eps_of(lower)
        self.rounding = True  # False inside alpha-CROWN's search (its final pass rounds)

    # -- backward substitution ---------------------------------------------------------------
    def bound_rows(self, j: int, W: Tensor, b: Tensor, thetas: Thetas | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds of ``W @ y_j + b`` (``y_0`` the box), ``[batch, R]``.

        ``W`` is ``[R, n_j]`` or per example ``[batch, R, n_j]``; ``thetas`` sets the free lines
        of the activations it names (alpha-CROWN), the others use CROWN's default lines.
        """
        R = W.shape[-2]
        At = torch.cat([W.transpose(-1, -2), W.transpose(-1, -2)], -1)
        if At.dim() == 2:
            At = At.unsqueeze(0)  # [1 or B, n, 2R]
        c = torch.cat([b, b], -1)
        c = c.unsqueeze(0) if c.dim() == 1 else c  # [1 or B, 2R]
        mag = torch.zeros_like(c).detach()
        for i in range(j, 0, -1):  # act i (1-based) lives in self.relax[i-1], fed by segs[i-1]
            rx = self.relax[i - 1]
            if self.rounding:
                mag = mag + _magnitude(self.ymag[i - 1], At)
            th = thetas.get(i) if thetas is not None else None
            lines = rx.with_theta(*th) if th is not None else rx.lines
            At, c = _relax_step(At, c, lines, R)
            if self.rounding:
                mag = mag + _magnitude(self.zmag[i - 1], At)
            seg = self.segs[i - 1]
            if i == 1:
                return self._concretise(At, c, seg, rx.live, R, mag)
            c = c + _seg_bias(seg.b, At)
            live = rx.live
            if seg.W is not None:
                Wl = seg.W[..., live, :] if len(live) != seg.W.shape[-2] else seg.W
                Al = At if len(live) == At.shape[1] else At[:, live]
                At = torch.matmul(Wl.transpose(-1, -2), Al)
            else:
                assert seg.s is not None
                At = At * seg.s[:, None]
        return self._concretise_input(At, c, R, mag)

    def _finish(self, val: Tensor, dev: Tensor, mag: Tensor, R: int) -> tuple[Tensor, Tensor]:
        if self.rounding:
            dev = dev + self._eps * (mag + val.detach().abs())
        return val[:, :R] - dev[:, :R], val[:, R:] + dev[:, R:]

    def _concretise(self, At: Tensor, c: Tensor, seg: Seg, live: Tensor, R: int,
                    mag: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds of ``A @ S0(x) + c`` over the box without materialising ``A @ W0`` on points."""
        if seg.W is None:
            assert seg.s is not None
            return self._concretise_input(At * seg.s[:, None], c + _seg_bias(seg.b, At), R, mag)
        z_mid = linear_map(seg.W, self.c0) + seg.b  # [B, n1]
        val = c + (z_mid.unsqueeze(1) @ At).squeeze(1)
        if len(self.nz) == 0:
            return self._finish(val, torch.zeros_like(val), mag, R)
        if seg.W.dim() == 3:  # per-example first map (a spec matrix straight after the prefix)
            M = torch.matmul(seg.W[:, :, self.nz].transpose(-1, -2), At)
        else:
            if self._w0 is None:
                self._w0 = seg.W.index_select(1, self.nz)
            full = len(live) == At.shape[1]
            M = (self._w0 if full else self._w0[live]).T @ (At if full else At[:, live])
        dev = (self.r0[:, self.nz].unsqueeze(1) @ M.abs()).squeeze(1)
        return self._finish(val, dev, mag, R)

    def _concretise_input(self, At: Tensor, c: Tensor, R: int, mag: Tensor) -> tuple[Tensor, Tensor]:
        val = c + (self.c0.unsqueeze(1) @ At).squeeze(1)
        dev = (self.r0.unsqueeze(1) @ At.abs()).squeeze(1)
        return self._finish(val, dev, mag, R)

    # -- one pass over the layers -------------------------------------------------------------
    def run(self, thetas: dict[int, Thetas] | None = None,
            reference: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
        """Bounds of the output: every pre-activation bound, then the output, in one pass.

        ``thetas[k]`` are the free lines used when bounding activation ``k``'s input (``k`` from 2)
        or, for ``k = len(acts) + 1``, the output.  ``reference`` holds bounds to intersect each
        pre-activation with (a previous CROWN pass).  The pre-activation bounds of this pass are
        left in ``self.pre``.
        """
        self.relax = []
        self.pre: list[tuple[Tensor, Tensor]] = []
        lo, up = self.lo0, self.up0
        for j, (seg, op) in enumerate(zip(self.segs, self.acts), start=1):
            if j == 1:
                zl, zu = seg.interval(lo, up)  # exact up to rounding: a box through an affine map
            else:
                zl, zu = reference[j - 1] if reference is not None else self.ibp_pre[j - 1]
                rows = self.rows[j]
                if len(rows):
                    cl, cu = self.bound_rows(j - 1, *seg.rows(rows), thetas.get(j) if thetas else None)
                    zl = zl.index_copy(1, rows, torch.maximum(zl[:, rows], cl))
                    zu = zu.index_copy(1, rows, torch.minimum(zu[:, rows], cu))
                    zu = torch.maximum(zu, zl)  # guard float noise on near-degenerate neurons
            self.pre.append((zl, zu))
            self.relax.append(Relaxation(op.kind, zl, zu, op.a, op.b))
            lo, up = act(op.kind, zl, op.a, op.b), act(op.kind, zu, op.a, op.b)
        return self.output(lo, up, thetas.get(len(self.acts) + 1) if thetas else None)

    def output(self, lo: Tensor, up: Tensor, thetas: Thetas | None = None) -> tuple[Tensor, Tensor]:
        if not self.segs:  # no Linear at all: the prefix was exact
            out_l, out_u = lo, up
        else:
            last = self.segs[-1]
            il, iu = last.interval(lo, up)
            cl, cu = self.bound_rows(len(self.acts), *last.dense(), thetas)
            out_l, out_u = torch.maximum(il, cl), torch.minimum(iu, cu)
        for op in self.trailing:
            out_l, out_u = interval(op, out_l, out_u)
        return out_l, out_u


def _seg_bias(b: Tensor, At: Tensor) -> Tensor:
    """``b @ At`` over the neuron axis: ``[B, 2R]``."""
    if b.dim() == 1:
        return b @ At
    return (b.unsqueeze(1) @ At).squeeze(1)


_HALF: dict[tuple[torch.dtype, torch.device], Tensor] = {}  # [0, 1] as [1, 1, 2, 1]: which half


def _relax_step(At: Tensor, c: Tensor, lines: Lines, R: int) -> tuple[Tensor, Tensor]:
    """Replace ``A y`` by the relaxation lines: lower half uses the lower line where ``A >= 0``."""
    aL, bL, aU, bU = lines
    n = At.shape[1]
    A4 = At.view(At.shape[0], n, 2, R)
    Ap = A4.clamp(min=0)
    key = (At.dtype, At.device)
    if key not in _HALF:
        _HALF[key] = torch.tensor([0.0, 1.0], dtype=At.dtype, device=At.device).view(1, 1, 2, 1)
    h = _HALF[key]
    if aL.dim() == 2:  # default lines: one per neuron
        B = max(A4.shape[0], aL.shape[0])
        da, db = (aL - aU)[..., None, None], (bL - bU)[..., None]
        base, delta = aU[..., None, None] + da * h, da * (1 - 2 * h)
        bbase, bdelta = bU[..., None] + db * h[..., 0], db * (1 - 2 * h[..., 0])
        c = c + (torch.einsum("bnhr,bnh->bhr", A4.expand(B, n, 2, R), bbase)
                 + torch.einsum("bnhr,bnh->bhr", Ap.expand(B, n, 2, R), bdelta)).reshape(B, 2 * R)
        return torch.addcmul(A4 * base, Ap, delta).reshape(B, n, 2 * R), c
    hb = h.bool()
    base_a, d_a = torch.where(hb, aL, aU), torch.where(hb, aU - aL, aL - aU)
    new = A4 * base_a + Ap * d_a
    B = new.shape[0]
    base_b, d_b = torch.where(hb, bL, bU), torch.where(hb, bU - bL, bL - bU)
    if base_b.shape[-1] == 1 and d_b.shape[-1] == 1:  # intercepts per neuron (ReLU): no [.., R] product
        Bb = max(B, base_b.shape[0])
        dc = (torch.einsum("bnhr,bnh->bhr", A4.expand(Bb, n, 2, R), base_b.expand(Bb, n, 2, 1)[..., 0])
              + torch.einsum("bnhr,bnh->bhr", Ap.expand(Bb, n, 2, R), d_b.expand(Bb, n, 2, 1)[..., 0]))
    else:
        dc = (A4 * base_b + Ap * d_b).sum(1)
    return new.reshape(B, n, 2 * R), c + dc.reshape(-1, 2 * R)
