"""Linear relaxations ``aL*z + bL <= act(z) <= aU*z + bU`` of ReLU, tanh and clip on ``[l, u]``.

Every line is a differentiable function of the pre-activation bounds ``l, u`` (shape
``[batch, n]``), so a bound built from them is differentiable in the box corners through the
intermediate bounds too.  Discrete choices (which case a neuron is in, which of two lines is
tighter) are piecewise constant and carry no gradient.

Optimisable lines (alpha-CROWN) are described by a parameter ``theta`` in ``[0, 1]`` per neuron
and per bounded row, for each of the lower and the upper line:

* ReLU, unstable: lower slope ``theta`` (upper line fixed: the chord).
* clip ``[a, b]``: a line through the bend ``(a, a)`` (lower) or ``(b, b)`` (upper) whose slope is
  ``theta`` times the steepest sound slope; the other line (chord) is fixed.
* tanh: a tangent at ``d = d_min + theta * (d_max - d_min)`` wherever the default line is a
  tangent (lower line where ``u <= 0`` or the interval crosses 0; upper line where ``l >= 0`` or
  it crosses 0), with ``[d_min, d_max]`` the tangent points whose tangent is sound on ``[l, u]``.

Example:
    >>> l, u = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    >>> lines = default_lines("relu", l, u)
    >>> [round(float(t), 4) for t in lines]  # aL, bL, aU, bU: y >= z, y <= 2/3 (z + 1)
    [1.0, 0.0, 0.6667, 0.6667]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fggm.core.bounds.layers import ZERO_WIDTH

__all__ = ["default_lines", "Relaxation"]

TANGENT_STEPS = 12  # at most, safeguarded Newton steps for tanh's tangent points (about 5 needed)

Lines = tuple[Tensor, Tensor, Tensor, Tensor]


def _safe(x: Tensor) -> Tensor:
    return torch.where(x > ZERO_WIDTH, x, torch.ones_like(x))


def _dtanh(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


def _tangent_bracket(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Bracket ``[left, right]`` of the point ``d`` in ``[0, u]`` whose tanh tangent passes through
    ``(l, tanh l)``, for ``l < 0 < u`` (where the chord is not a sound upper line).

    Tangents at ``d >= right`` pass above ``(l, tanh l)`` (sound upper lines on ``[l, u]``); the line
    through ``(l, tanh l)`` with slope ``tanh'(left)`` is also sound (its slope is at least the exact
    tangent's).  Safeguarded Newton on ``G(d) = tanh d - tanh l - tanh'(d) (d - l)`` (increasing in
    ``d``) brackets the root to a few ulps; the points carry the implicit derivative ``-G_l / G_d`` of
    the root, so the relaxation is differentiable (and continuous) in ``l``.
    """
    with torch.no_grad():
        ld, ud = l.detach(), u.detach()
        fl = torch.tanh(ld)
        eps = torch.finfo(ud.dtype).eps
        lo, hi = torch.zeros_like(ud), ud.clone()
        # the root is |l|/2 for small |l| and about log(2|l| + 2)/2 for large |l|: start there
        d = torch.minimum(torch.minimum(-ld / 2, 0.5 * torch.log(2 - 2 * ld)), ud)
        for _ in range(TANGENT_STEPS):
            fd = torch.tanh(d)
            sd = 1 - fd * fd
            g = fd - fl - sd * (d - ld)
            below = g <= 0
            lo, hi = torch.where(below, d, lo), torch.where(below, hi, d)
            if not bool((g.abs() > 4 * eps).any()):
                break
            step = d - g / (2 * fd * sd * (d - ld)).clamp_min(eps)
            d = torch.where((step >= lo) & (step <= hi), step, (lo + hi) / 2)

        def g_at(x: Tensor) -> Tensor:
            fx = torch.tanh(x)
            return fx - fl - (1 - fx**2) * (x - ld)

        # the root d is accurate to a few ulps; step just off it on each side and keep a step
        # that the sign of G confirms (else the last Newton bracket end, which G confirmed)
        delta = 64 * eps * (1 + d)
        left, right = d - delta, d + delta
        lo = torch.where((left >= lo) & (g_at(left) <= 0), left, lo)
        hi = torch.where((right <= hi) & (g_at(right) > 0), right, hi)
        root = d
        fr = torch.tanh(root)
        gd = (2 * fr * (1 - fr**2) * (root - ld)).clamp_min(eps)
    # a Newton step from the (fixed) root carries the root's implicit derivative -G_l / G_d
    move = -(fr - torch.tanh(l) - (1 - fr**2) * (root - l)) / gd
    move = move - move.detach()
    return lo + move, hi + move


@dataclass
class _TanhCases:
    neg: Tensor
    pos: Tensor
    cross: Tensor
    zero: Tensor
    secant_up: Tensor  # crossing, and the chord is a sound upper line
    secant_lo: Tensor  # crossing, and the chord is a sound lower line
    up_left: Tensor  # crossing upper tangent bracket: [up_right, u] are sound tangent points
    up_right: Tensor
    lo_left: Tensor  # mirrored: lower tangents at d <= -lo_right are sound
    lo_right: Tensor


def _tanh_cases(l: Tensor, u: Tensor) -> _TanhCases:
    width = u - l
    zero = width <= ZERO_WIDTH
    fl, fu = torch.tanh(l), torch.tanh(u)
    secant = (fu - fl) / _safe(width)
    neg, pos = u <= 0, l >= 0
    cross = ~neg & ~pos
    ones = torch.ones_like(l)
    # both tangent problems at once: the upper line's on (l, u), the lower line's mirrored (-u, -l)
    left, right = _tangent_bracket(torch.cat([torch.where(cross, l, -ones), torch.where(cross, -u, -ones)]),
                                   torch.cat([torch.where(cross, u, ones), torch.where(cross, -l, ones)]))
    (up_left, lo_left), (up_right, lo_right) = left.chunk(2), right.chunk(2)
    return _TanhCases(neg, pos, cross, zero, cross & (secant <= _dtanh(u)), cross & (secant <= _dtanh(l)),
                      up_left, up_right, lo_left, lo_right)


def _relax_tanh(l: Tensor, u: Tensor, k: _TanhCases | None = None) -> Lines:
    k = k if k is not None else _tanh_cases(l, u)
    fl, fu = torch.tanh(l), torch.tanh(u)
    secant = (fu - fl) / _safe(u - l)
    d = (l + u) / 2
    fd, dd = torch.tanh(d), _dtanh(d)
    # upper line: chord (convex part or chord sound), midpoint tangent (concave part), else the
    # line through (l, tanh l) with the slope of the bracket's left end
    chord_up = k.neg | k.secant_up
    aU = torch.where(chord_up, secant, torch.where(k.pos, dd, _dtanh(k.up_left)))
    bU = torch.where(k.pos, fd - dd * d, fl - aU * l)
    # lower line: the mirror image (tanh is odd)
    chord_lo = k.pos | k.secant_lo
    aL = torch.where(chord_lo, secant, torch.where(k.neg, dd, _dtanh(k.lo_left)))
    bL = torch.where(k.neg, fd - dd * d, fu - aL * u)
    zeros = torch.zeros_like(l)
    return (torch.where(k.zero, zeros, aL), torch.where(k.zero, fl, bL),
            torch.where(k.zero, zeros, aU), torch.where(k.zero, fu, bU))


@dataclass
class _ClipCases:
    below: Tensor
    above: Tensor
    inside: Tensor
    low_bend: Tensor
    high_bend: Tensor
    full: Tensor
    zero: Tensor


def _clip_cases(l: Tensor, u: Tensor, a: Tensor, b: Tensor) -> _ClipCases:
    return _ClipCases(u <= a, l >= b, (l >= a) & (u <= b), (l < a) & (u > a) & (u <= b),
                      (l >= a) & (l < b) & (u > b), (l < a) & (u > b), (u - l) <= ZERO_WIDTH)


def _clip_max_slopes(l: Tensor, u: Tensor, a: Tensor, b: Tensor, k: _ClipCases) -> tuple[Tensor, Tensor]:
    """Steepest sound slopes of the lower line through ``(a, a)`` and the upper line through ``(b, b)``."""
    ones = torch.ones_like(l)
    lo_max = torch.where(k.full, (b - a) / _safe(u - a), ones)
    up_max = torch.where(k.full, (b - a) / _safe(b - l), ones)
    return lo_max, up_max


def _relax_clip(l: Tensor, u: Tensor, a: Tensor, b: Tensor, k: _ClipCases | None = None) -> Lines:
    k = k if k is not None else _clip_cases(l, u, a, b)
    width = _safe(u - l)
    ones, zeros = torch.ones_like(l), torch.zeros_like(l)
    lo_max, up_max = _clip_max_slopes(l, u, a, b, k)
    # lower line: through the bend (a, a) where there is one (slope: the tighter of 0 and the
    # steepest), the chord from (l, l) to (u, b) when only the upper bend is crossed
    aL = torch.where(k.inside, ones, zeros)
    aL = torch.where(k.low_bend, (u - a >= a - l).to(l.dtype) * lo_max, aL)
    aL = torch.where(k.full, (u - a > a - l).to(l.dtype) * lo_max, aL)
    aL = torch.where(k.high_bend, (b - l) / width, aL)
    bL = torch.where(k.below, a, torch.where(k.above, b, zeros))
    bL = torch.where(k.low_bend | k.full, a * (1 - aL), bL)
    bL = torch.where(k.high_bend, l * (1 - aL), bL)
    # upper line: the mirror construction around (b, b)
    aU = torch.where(k.inside, ones, zeros)
    aU = torch.where(k.high_bend, (b - l >= u - b).to(l.dtype) * up_max, aU)
    aU = torch.where(k.full, (b - l > u - b).to(l.dtype) * up_max, aU)
    aU = torch.where(k.low_bend, (u - a) / width, aU)
    bU = torch.where(k.below, a, torch.where(k.above, b, zeros))
    bU = torch.where(k.high_bend | k.full, b * (1 - aU), bU)
    bU = torch.where(k.low_bend, a - aU * l, bU)
    cl, cu = torch.maximum(torch.minimum(l, b), a), torch.maximum(torch.minimum(u, b), a)
    return (torch.where(k.zero, zeros, aL), torch.where(k.zero, cl, bL),
            torch.where(k.zero, zeros, aU), torch.where(k.zero, cu, bU))


def _relax_relu(l: Tensor, u: Tensor) -> Lines:
    unstable = (l < 0) & (u > 0)
    active = (l >= 0).to(l.dtype)
    aU = torch.where(unstable, u / _safe(u - l), active)
    bU = torch.where(unstable, -l * aU, torch.zeros_like(l))
    aL = torch.where(unstable, (u >= -l).to(l.dtype), active)
    return aL, torch.zeros_like(l), aU, bU


def default_lines(kind: str, l: Tensor, u: Tensor, a: Tensor | None = None, b: Tensor | None = None) -> Lines:
    """CROWN's adaptive lines ``(aL, bL, aU, bU)``, each ``[batch, n]``, for pre-activation ``[l, u]``."""
    if kind == "relu":
        return _relax_relu(l, u)
    if kind == "tanh":
        return _relax_tanh(l, u)
    assert a is not None and b is not None
    return _relax_clip(l, u, a, b)


# --------------------------------------------------------------------------- optimisable lines


class Relaxation:
    """The relaxation of one activation layer on ``[l, u]``: default lines and free lines.

    ``lines`` are CROWN's adaptive lines ``(aL, bL, aU, bU)`` (``[batch, n]``); ``free_lower`` /
    ``free_upper`` (bool ``[batch, n]``) mark the neurons with an optimisable line and
    ``theta_lower`` / ``theta_upper`` the parameter that reproduces (or nearly) the default line.

    Example:
        >>> rx = Relaxation("relu", torch.tensor([[-1.0]]), torch.tensor([[2.0]]))
        >>> bool(rx.free_lower.item()), float(rx.theta_lower.item())
        (True, 1.0)
        >>> aL, bL, aU, bU = rx.with_theta(torch.full((1, 1, 2, 1), 0.25), None)
        >>> float(aL[0, 0, 0, 0])
        0.25
    """

    def __init__(self, kind: str, l: Tensor, u: Tensor, a: Tensor | None = None, b: Tensor | None = None) -> None:
        self.kind, self.l, self.u, self.a, self.b = kind, l, u, a, b
        ld, ud = l.detach(), u.detach()
        zeros = torch.zeros_like(ld)
        if kind == "relu":
            self.lines = _relax_relu(l, u)
            unstable = (ld < 0) & (ud > 0)
            self.free_lower, self.free_upper = unstable, torch.zeros_like(unstable)
            self.theta_lower, self.theta_upper = (ud >= -ld).to(ld.dtype), zeros
        elif kind == "tanh":
            k = _tanh_cases(l, u)
            self.lines = _relax_tanh(l, u, k)
            live = ~k.zero
            self.free_lower = live & (k.neg | (k.cross & ~k.secant_lo))
            self.free_upper = live & (k.pos | (k.cross & ~k.secant_up))
            # sound tangent points: lower d in [l, lo_hi], upper d in [up_lo, u]
            self._lo_hi = torch.where(k.cross, -k.lo_right, u)
            self._up_lo = torch.where(k.cross, k.up_right, l)
            # start at the sound tangent point nearest the midpoint (the midpoint itself in the
            # one-sided cases), which is where auto_LiRPA's smoothed relaxation puts it
            m = (ld + ud) / 2
            lo_hi, up_lo = self._lo_hi.detach(), self._up_lo.detach()
            self.theta_lower = ((torch.minimum(m, lo_hi) - ld) / _safe(lo_hi - ld)).clamp(0, 1)
            self.theta_upper = ((torch.maximum(m, up_lo) - up_lo) / _safe(ud - up_lo)).clamp(0, 1)
        else:
            assert a is not None and b is not None
            k = _clip_cases(ld, ud, a, b)
            self.lines = _relax_clip(l, u, a, b, k)
            live = ~k.zero
            self.free_lower = live & (k.low_bend | k.full)
            self.free_upper = live & (k.high_bend | k.full)
            self.theta_lower = torch.where(k.full, (ud - a > a - ld), (ud - a >= a - ld)).to(ld.dtype)
            self.theta_upper = torch.where(k.full, (b - ld > ud - b), (b - ld >= ud - b)).to(ld.dtype)
            self._lo_max, self._up_max = _clip_max_slopes(l, u, a, b, k)
        aL, _, aU, _ = self.lines
        self.live = ((aL != 0) | (aU != 0) | self.free_lower | self.free_upper).any(0).nonzero().flatten()

    def with_theta(self, theta_lower: Tensor | None, theta_upper: Tensor | None) -> Lines:
        """Lines with the free slopes set from ``theta`` (``[batch, n, 2, R]``, in ``[0, 1]``).

        Returns ``(aL, bL, aU, bU)`` broadcastable to ``[batch, n, 2, R]``; neurons whose line is
        not free keep the default line.
        """
        aL, bL, aU, bU = (t[..., None, None] for t in self.lines)
        if theta_lower is not None:
            m = self.free_lower[..., None, None]
            s, c = self._free_line(theta_lower, lower=True)
            aL, bL = torch.where(m, s, aL), torch.where(m, c, bL)
        if theta_upper is not None:
            m = self.free_upper[..., None, None]
            s, c = self._free_line(theta_upper, lower=False)
            aU, bU = torch.where(m, s, aU), torch.where(m, c, bU)
        return aL, bL, aU, bU

    def _free_line(self, theta: Tensor, lower: bool) -> tuple[Tensor, Tensor]:
        """Slope and intercept of the free line at ``theta`` (``[batch, n, 2, R]``)."""
        if self.kind == "relu":  # lower only: y >= theta * z
            return theta, torch.zeros((), dtype=theta.dtype, device=theta.device)
        if self.kind == "tanh":
            lo, hi = (self.l, self._lo_hi) if lower else (self._up_lo, self.u)
            d = lo[..., None, None] + theta * (hi - lo)[..., None, None]
            fd = torch.tanh(d)
            s = 1 - fd**2
            return s, fd - s * d
        assert self.a is not None and self.b is not None
        if lower:  # through (a, a)
            s = theta * self._lo_max[..., None, None]
            return s, self.a[:, None, None] * (1 - s)
        s = theta * self._up_max[..., None, None]  # through (b, b)
        return s, self.b[:, None, None] * (1 - s)
