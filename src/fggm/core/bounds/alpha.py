"""``crown`` and alpha-CROWN: optimise the free lines of every layer for every bound.

alpha-CROWN (Xu et al., ICLR 2021) keeps CROWN's backward passes but lets the lines of each
relaxation move within the sound family (ReLU lower slopes, the bends of a clip, the tangent
points of tanh).  As in auto_LiRPA, each bound that needs a backward pass -- every unstable
pre-activation of every layer, and the output -- has its own parameters for every layer it passes
through (``[batch, n_i, 2, R]``: per neuron, per bounded row, per side).  All of them are
optimised jointly by Adam on the width of the output interval, the gradient flowing through the
intermediate bounds into their own parameters; each intermediate bound is intersected with
CROWN's, so it never gets looser.  The parameters of the pass with the narrowest output interval
(per example) are kept, and the result is never looser than CROWN's.

Gradients: with respect to the box corners, through every relaxation and intermediate bound;
in alpha-CROWN the optimised parameters are held fixed (the optimisation itself is not
differentiated).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fggm.core.bounds.backward import Engine, Thetas
from fggm.core.bounds.layers import check_box, parse, spec_op

__all__ = ["crown"]

LR_DECAY = 0.98  # per step, as auto_LiRPA's default


def crown(net: nn.Sequential, lower: Tensor, upper: Tensor, *, alpha: bool = False,
          alpha_steps: int = 20, alpha_lr: float = 0.1, C: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CROWN (DeepPoly-style backward linear) bounds of ``net`` over ``[lower, upper]``.

    ``lower``/``upper`` have shape ``[batch, in]`` and may require grad; the returned ``(lb, ub)``
    of shape ``[batch, out]`` are differentiable with respect to them, never looser than
    :func:`~fggm.core.bounds.ibp`, and rounded outward (``lb <= ub`` always).

    ``alpha=True`` runs alpha-CROWN: ``alpha_steps`` Adam steps (learning rate ``alpha_lr``,
    decaying by 0.98 a step) on the free lines of every layer, for every intermediate bound and
    the output; the result is never looser than plain CROWN's.

    ``C`` (``[S, out]``, or ``[batch, S, out]`` per example) bounds ``C @ net(x)`` directly,
    exactly as if a bias-free ``nn.Linear`` with weight ``C`` were appended to ``net``; the result
    has shape ``[batch, S]``.  A row such as ``e_i - e_j`` is bounded much more tightly than the
    difference of separate bounds.

    Example:
        >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> lo, up = -torch.ones(1, 3), torch.ones(1, 3)
        >>> lb, ub = crown(net, lo, up)
        >>> y = net(torch.zeros(1, 3))
        >>> bool(((lb <= y) & (y <= ub)).all())
        True
        >>> dl, du = crown(net, lo, up, C=torch.tensor([[1.0, -1.0]]))  # y0 - y1 directly
        >>> bool((du - dl <= (ub[0, 0] - lb[0, 1]) - (lb[0, 0] - ub[0, 1])).all())
        True
    """
    check_box(net, lower, upper)
    if alpha_steps < 0 or not alpha_lr > 0:
        raise ValueError(f"alpha_steps must be >= 0 and alpha_lr > 0; got {alpha_steps}, {alpha_lr}")
    ops, width = parse(net, lower.shape[1], lower)
    if C is not None:
        ops.append(spec_op(C, width, lower.shape[0], lower))
    eng = Engine(ops, lower, upper)
    lb, ub = eng.run()
    if alpha and alpha_steps > 0 and eng.segs:
        lb, ub = _alpha_crown(eng, lb, ub, alpha_steps, alpha_lr)
    return _ordered(lb, ub)


def _ordered(lb: Tensor, ub: Tensor) -> tuple[Tensor, Tensor]:
    """Guard ``lb <= ub`` (the outward rounding already makes it hold)."""
    swap = lb > ub
    return torch.where(swap, ub, lb), torch.where(swap, lb, ub)


def _init_thetas(eng: Engine) -> dict[int, Thetas]:
    """Starting parameters (CROWN's lines) for every bound that has a backward pass."""
    n = len(eng.acts)
    sizes = {k: len(eng.rows[k]) for k in range(2, n + 1) if len(eng.rows[k])}
    if len(eng.segs) > n:  # the output's own backward pass
        sizes[n + 1] = eng.segs[-1].out
    thetas: dict[int, Thetas] = {}
    for k, R in sizes.items():
        per: Thetas = {}
        for i in range(1, min(k, n + 1)):
            rx = eng.relax[i - 1]
            B, ni = rx.theta_lower.shape
            tl = rx.theta_lower[..., None, None].expand(B, ni, 2, R).clone() if bool(rx.free_lower.any()) else None
            tu = rx.theta_upper[..., None, None].expand(B, ni, 2, R).clone() if bool(rx.free_upper.any()) else None
            if tl is not None or tu is not None:
                per[i] = (tl, tu)
        if per:
            thetas[k] = per
    return thetas


def _alpha_crown(eng: Engine, lb0: Tensor, ub0: Tensor, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    thetas = _init_thetas(eng)
    params = [t for per in thetas.values() for pair in per.values() for t in pair if t is not None]
    if not params:
        return lb0, ub0
    # the search runs on a detached copy without the rounding tally; intermediate bounds are
    # intersected with IBP only (intersecting with CROWN's would cut the gradient wherever the
    # starting lines tie with CROWN's, and the search would stall)
    work = Engine.__new__(Engine)
    work.__dict__.update(eng.__dict__)
    work.lo0, work.up0, work.c0, work.r0 = (t.detach() for t in (eng.lo0, eng.up0, eng.c0, eng.r0))
    work.ibp_pre = [(l.detach(), u.detach()) for l, u in eng.ibp_pre]
    work.rounding = False
    for p in params:
        p.requires_grad_()
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, LR_DECAY)
    best_loss = torch.full((lb0.shape[0],), float("inf"), dtype=lb0.dtype, device=lb0.device)
    best = {k: {i: tuple(t.detach().clone() if t is not None else None for t in pair) for i, pair in per.items()}
            for k, per in thetas.items()}
    with torch.enable_grad():
        for step in range(steps + 1):
            lb, ub = work.run(thetas)
            loss = (ub - lb).sum(1)
            with torch.no_grad():
                better = loss < best_loss
                if bool(better.any()):
                    best_loss = torch.where(better, loss, best_loss)
                    keep = better.view(-1, 1, 1, 1)
                    for k, per in thetas.items():
                        best[k] = {i: tuple(torch.where(keep, t, bt) if t is not None else None
                                            for t, bt in zip(pair, best[k][i])) for i, pair in per.items()}
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(0.0, 1.0)
    best_l, best_u = eng.run(best)  # the best parameters again: rounded outward, with a graph
    return torch.maximum(lb0, best_l), torch.minimum(ub0, best_u)
