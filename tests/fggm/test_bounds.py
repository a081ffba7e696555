"""IBP and CROWN: closed forms, soundness (property-based), reference cross-check, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fggm import bounds
from fggm.bounds import Affine, Clip

DT = torch.float64


def _linear(n_in: int, n_out: int, gen: torch.Generator, scale: float = 1.0) -> nn.Linear:
    lin = nn.Linear(n_in, n_out).to(DT)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=DT) * scale)
        lin.bias.copy_(torch.randn(n_out, generator=gen, dtype=DT) * scale)
    return lin


def _act(name: str, width: int, gen: torch.Generator) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "hardtanh":
        return nn.Hardtanh(-0.7, 0.4)
    if name == "relu6":
        return nn.ReLU6()
    low = -torch.rand(width, generator=gen, dtype=DT)
    return Clip(low, low + 2 * torch.rand(width, generator=gen, dtype=DT))


def _box(gen: torch.Generator, batch: int, n: int, point_frac: float, width: float):
    centre = torch.randn(batch, n, generator=gen, dtype=DT)
    radius = torch.rand(batch, n, generator=gen, dtype=DT) * width
    radius[torch.rand(batch, n, generator=gen, dtype=DT) < point_frac] = 0.0  # forged coordinates
    return centre - radius, centre + radius


def _samples(lo: torch.Tensor, up: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n uniform points and n random vertices of each box: [batch, 2n, in]."""
    u = torch.rand(lo.shape[0], n, lo.shape[1], generator=gen, dtype=DT)
    v = (torch.rand(lo.shape[0], n, lo.shape[1], generator=gen, dtype=DT) < 0.5).to(DT)
    t = torch.cat([u, v], 1)
    return lo.unsqueeze(1) + t * (up - lo).unsqueeze(1)


@st.composite
def nets_and_boxes(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n_in = draw(st.integers(1, 6))
    acts = draw(st.lists(st.sampled_from(["relu", "tanh", "hardtanh", "relu6", "clip"]),
                         min_size=1, max_size=3))
    layers: list[nn.Module] = []
    prefix = draw(st.sampled_from(["none", "affine", "affine+clip", "tanh"]))
    if "affine" in prefix:
        layers.append(Affine(torch.randn(n_in, generator=gen, dtype=DT),
                             torch.randn(n_in, generator=gen, dtype=DT)))
    if "clip" in prefix:
        layers.append(Clip(-1.0, 1.0))
    if prefix == "tanh":
        layers.append(nn.Tanh())
    width = n_in
    for a in acts:
        out = draw(st.integers(1, 8))
        layers += [_linear(width, out, gen, scale=draw(st.sampled_from([0.5, 1.0, 2.0]))), _act(a, out, gen)]
        width = out
        if draw(st.booleans()):
            layers.append(Affine(torch.randn(width, generator=gen, dtype=DT), 0.3))
    n_out = draw(st.integers(1, 3))
    layers.append(_linear(width, n_out, gen))
    tail = draw(st.sampled_from(["none", "tanh", "hardtanh", "identity"]))
    if tail != "none":
        layers.append(_act(tail, n_out, gen) if tail != "identity" else nn.Identity())
    net = nn.Sequential(*layers)
    lo, up = _box(gen, draw(st.integers(1, 3)), n_in, draw(st.sampled_from([0.0, 0.3])),
                  draw(st.sampled_from([0.1, 1.0, 3.0])))
    return net, lo, up, gen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets_and_boxes())
def test_soundness_random_nets(case) -> None:
    net, lo, up, gen = case
    il, iu = bounds.ibp(net, lo, up)
    cl, cu = bounds.crown(net, lo, up)
    al, au = bounds.crown(net, lo, up, alpha=True, alpha_steps=5)
    x = _samples(lo, up, 600, gen)  # 1,200 points per box
    with torch.no_grad():
        y = net(x)
    tol = 1e-5
    for name, (l, u) in {"ibp": (il, iu), "crown": (cl, cu), "alpha": (al, au)}.items():
        assert int((y < l.unsqueeze(1) - tol).sum() + (y > u.unsqueeze(1) + tol).sum()) == 0, name
    # CROWN never looser than IBP; alpha-CROWN never looser than CROWN
    assert bool((cl >= il - 1e-9).all() and (cu <= iu + 1e-9).all())
    assert bool((al >= cl - 1e-9).all() and (au <= cu + 1e-9).all())


def test_linear_nets_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    l1, l2 = _linear(4, 5, gen), _linear(5, 2, gen)
    scale, shift = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=DT), torch.tensor([1.0, 0.0, -2.0, 0.5], dtype=DT)
    net = nn.Sequential(Affine(scale, shift), l1, nn.Identity(), l2, nn.Flatten())
    lo, up = _box(gen, 3, 4, 0.25, 1.0)
    # the whole net is x -> W (s*x + t) + b: exact bounds are W'c +- |W'| r
    W = (l2.weight @ l1.weight * scale).detach().numpy()
    b = (l2.weight @ (l1.weight @ shift + l1.bias) + l2.bias).detach().numpy()
    c, r = ((lo + up) / 2).numpy(), ((up - lo) / 2).numpy()
    exact_l, exact_u = c @ W.T + b - r @ np.abs(W).T, c @ W.T + b + r @ np.abs(W).T
    cl, cu = bounds.crown(net, lo, up)
    np.testing.assert_allclose(cl.numpy(), exact_l, atol=1e-10)
    np.testing.assert_allclose(cu.numpy(), exact_u, atol=1e-10)
    # IBP is exact for one layer, looser for two
    il, iu = bounds.ibp(nn.Sequential(l1), lo, up)
    W1, b1 = l1.weight.detach().numpy(), l1.bias.detach().numpy()
    np.testing.assert_allclose(il.numpy(), c @ W1.T + b1 - r @ np.abs(W1).T, atol=1e-10)
    np.testing.assert_allclose(iu.numpy(), c @ W1.T + b1 + r @ np.abs(W1).T, atol=1e-10)
    il, iu = bounds.ibp(net, lo, up)
    assert bool(((iu - il) > (cu - cl) + 1e-9).any())


def test_relu_single_neuron_hand_case() -> None:
    # y = relu(x1 - x2) on [0,1]^2: the exact range is [0, 1]
    lin = nn.Linear(2, 1).to(DT)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]], dtype=DT))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(1, 1).to(DT))
    with torch.no_grad():
        net[2].weight.fill_(2.0)
        net[2].bias.fill_(-1.0)
    lb, ub = bounds.crown(net, torch.zeros(1, 2, dtype=DT), torch.ones(1, 2, dtype=DT))
    assert lb.item() == pytest.approx(-1.0) and ub.item() == pytest.approx(1.0)


def test_batched_equals_single() -> None:
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(_linear(5, 9, gen), nn.ReLU(), _linear(9, 7, gen), nn.Tanh(), _linear(7, 2, gen))
    lo, up = _box(gen, 4, 5, 0.2, 1.0)
    bl, bu = bounds.crown(net, lo, up)
    for i in range(4):
        sl, su = bounds.crown(net, lo[i : i + 1], up[i : i + 1])
        torch.testing.assert_close(bl[i : i + 1], sl, atol=1e-10, rtol=0)
        torch.testing.assert_close(bu[i : i + 1], su, atol=1e-10, rtol=0)


def test_gradient_wrt_forged_coordinates_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(7)
    net = nn.Sequential(Affine(torch.rand(6, generator=gen, dtype=DT) + 0.5, 0.1), Clip(-3.0, 3.0),
                        _linear(6, 12, gen), nn.ReLU(), _linear(12, 12, gen), nn.ReLU(), _linear(12, 1, gen))
    centre = torch.randn(1, 6, generator=gen, dtype=DT)
    radius = torch.full((1, 6), 0.4, dtype=DT)
    forged_idx = torch.tensor([1, 4])

    def bound(forged: torch.Tensor, alpha: bool = False) -> torch.Tensor:
        lo, up = (centre - radius).clone(), (centre + radius).clone()
        lo[:, forged_idx] = forged
        up[:, forged_idx] = forged
        lb, ub = bounds.crown(net, lo, up, alpha=alpha, alpha_steps=3)
        return lb.sum() + 0.5 * ub.sum()

    x = torch.tensor([[0.3, -0.2]], dtype=DT, requires_grad=True)
    g = torch.autograd.grad(bound(x), x)[0]
    assert float(g.abs().sum()) > 0
    eps = 1e-6
    fd = torch.zeros_like(g)
    for k in range(2):
        e = torch.zeros_like(x)
        e[0, k] = eps
        with torch.no_grad():
            fd[0, k] = (bound(x + e) - bound(x - e)) / (2 * eps)
    torch.testing.assert_close(g, fd, atol=1e-5, rtol=1e-4)
    # gradient also flows through alpha-CROWN's final pass
    ga = torch.autograd.grad(bound(x, alpha=True), x)[0]
    assert torch.isfinite(ga).all() and float(ga.abs().sum()) > 0


def test_gradient_through_box_corners() -> None:
    gen = torch.Generator().manual_seed(11)
    net = nn.Sequential(_linear(3, 6, gen), nn.Tanh(), _linear(6, 1, gen))
    lo = torch.tensor([[-0.5, 0.1, -1.0]], dtype=DT, requires_grad=True)
    up = torch.tensor([[0.2, 0.4, -0.3]], dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: bounds.ibp(net, a, b)[0], (lo, up))
    lb, ub = bounds.crown(net, lo, up)
    (ub - lb).sum().backward()
    assert lo.grad is not None and up.grad is not None
    # widening the box cannot shrink the certified interval: d(width)/d(up) >= 0, d/d(lo) <= 0
    assert bool((up.grad >= -1e-9).all() and (lo.grad <= 1e-9).all())


def test_unsupported_layer_and_bad_box() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    with pytest.raises(TypeError, match="Sigmoid"):
        bounds.crown(net, torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(TypeError, match="Sigmoid"):
        bounds.ibp(net, torch.zeros(1, 2), torch.ones(1, 2))
    ok = nn.Sequential(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="lower > upper"):
        bounds.crown(ok, torch.ones(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shape"):
        bounds.crown(ok, torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="expects 2 inputs"):
        bounds.crown(ok, torch.zeros(1, 3), torch.ones(1, 3))


# --------------------------------------------------------------------- reference cross-check

bp = pytest.importorskip("bound_propagation")


def _theirs(net: nn.Sequential) -> nn.Sequential:
    """The same net in bound_propagation's vocabulary (Affine -> ElementWiseLinear, clip -> Clamp)."""
    layers: list[nn.Module] = []
    for m in net:
        if isinstance(m, Affine):
            layers.append(bp.ElementWiseLinear(m.scale, m.shift))
        elif isinstance(m, nn.Hardtanh):
            layers.append(bp.Clamp(m.min_val, m.max_val))
        else:
            layers.append(m)
    return nn.Sequential(*layers)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), depth=st.integers(1, 3), act=st.sampled_from(["relu", "tanh", "mixed"]),
       width=st.sampled_from([0.3, 1.0, 3.0]), points=st.sampled_from([0.0, 0.3]))
def test_cross_check_bound_propagation(seed: int, depth: int, act: str, width: float, points: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_in = 6
    # Same ReLU relaxations as bound-propagation's adaptive CROWN, so on ReLU nets the bounds must
    # agree or be tighter (ours also intersects the output with IBP).  Its tanh tangent points
    # come from 10 bisection steps, ours are exact (tighter lines, and continuous in the bounds so
    # the gradient is exact): with one tanh layer ours is tighter too; behind more layers a tighter
    # intermediate bound can flip a later adaptive choice, so there the bounds need only overlap
    # (both are sound) and agree on the whole (checked over many nets below).  The clip is kept
    # inactive: where it is active ours maps it exactly instead of relaxing it, which changes
    # downstream slope choices in either direction (soundness of that case is covered by the
    # property test).
    clip = 50.0
    layers: list[nn.Module] = [Affine(torch.rand(n_in, generator=gen, dtype=DT) + 0.2,
                                      torch.randn(n_in, generator=gen, dtype=DT)), nn.Hardtanh(-clip, clip)]
    w = n_in
    for d in range(depth):
        kind = act if act != "mixed" else ("relu", "tanh")[d % 2]
        layers += [_linear(w, 10, gen), nn.ReLU() if kind == "relu" else nn.Tanh()]
        w = 10
    layers.append(_linear(w, 2, gen))
    ours = nn.Sequential(*layers)
    ref = bp.BoundModelFactory(adaptive_relu=True).build(_theirs(ours))
    lo, up = _box(gen, 2, n_in, points, width)
    region = bp.HyperRectangle(lo, up)
    with torch.no_grad():
        ri = ref.ibp(region)
        rc = ref.crown(region).concretize()
    il, iu = bounds.ibp(ours, lo, up)
    torch.testing.assert_close(il, ri.lower, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(iu, ri.upper, atol=1e-9, rtol=1e-9)
    cl, cu = bounds.crown(ours, lo, up)
    if act == "relu" or depth == 1:
        assert bool((cl >= rc.lower - 1e-4).all()), (cl, rc.lower)
        assert bool((cu <= rc.upper + 1e-4).all()), (cu, rc.upper)
    else:
        assert bool((cl <= rc.upper + 1e-9).all() and (rc.lower <= cu + 1e-9).all())


def test_cross_check_bound_propagation_tanh_on_the_whole() -> None:
    """Deep tanh / mixed nets: ours (exact tangents) is at least as tight as bound-propagation's
    (bisected tangents) in total, and never far looser on one net."""
    ratios = []
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        w = 6
        for d in range(3):
            layers += [_linear(w, 10, gen), nn.Tanh() if seed % 2 == 0 or d % 2 else nn.ReLU()]
            w = 10
        layers.append(_linear(w, 2, gen))
        net = nn.Sequential(*layers)
        lo, up = _box(gen, 2, 6, 0.0, 1.0)
        with torch.no_grad():
            rc = bp.BoundModelFactory(adaptive_relu=True).build(net).crown(bp.HyperRectangle(lo, up)).concretize()
        cl, cu = bounds.crown(net, lo, up)
        ratios.append(float((cu - cl).sum() / (rc.upper - rc.lower).sum()))
    assert sum(ratios) / len(ratios) <= 1.0 and max(ratios) <= 1.2, ratios
