"""Bounds v2: exact gradients, full alpha-CROWN, outward rounding, specification matrices."""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import os
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fggm.bounds
import fggm.core.bounds
from fggm.core import bounds
from fggm.core.bounds import Affine, Clip

DT = torch.float64
ACTS = ("relu", "tanh", "hardtanh")


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "hardtanh": nn.Hardtanh(-0.7, 0.4)}[name]


def _net(act: str, seed: int, n_in: int = 5, width: int = 10, depth: int = 3, n_out: int = 2,
         dtype: torch.dtype = DT, prefix: bool = False) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    if prefix:
        layers += [Affine(torch.rand(n_in, generator=gen, dtype=dtype) + 0.5, 0.1), Clip(-3.0, 3.0)]
    w = n_in
    for _ in range(depth):
        lin = nn.Linear(w, width).to(dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, w, generator=gen, dtype=dtype) * 1.5 / w**0.5)
            lin.bias.copy_(torch.randn(width, generator=gen, dtype=dtype) * 0.5)
        layers += [lin, _act(act)]
        w = width
    out = nn.Linear(w, n_out).to(dtype)
    with torch.no_grad():
        out.weight.copy_(torch.randn(n_out, w, generator=gen, dtype=dtype))
        out.bias.copy_(torch.randn(n_out, generator=gen, dtype=dtype))
    return nn.Sequential(*layers, out)


def _box(seed: int, n: int, radius: float, batch: int = 1, dtype: torch.dtype = DT):
    gen = torch.Generator().manual_seed(10_000 + seed)
    c = torch.randn(batch, n, generator=gen, dtype=dtype)
    r = torch.rand(batch, n, generator=gen, dtype=dtype) * radius
    return c - r, c + r


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("act", ACTS)
def test_crown_gradient_matches_finite_differences(act: str) -> None:
    """d(bounds)/d(corners) through every relaxation and intermediate bound, float64 central
    differences: relative error <= 1e-4 on each net (tanh was off by 0.1-1.4 before the fix)."""
    checked = 0
    for seed in range(6):
        net = _net(act, seed, prefix=seed % 2 == 1)
        lo0, up0 = _box(seed, 5, (0.3, 1.0, 2.0)[seed % 3])
        w = torch.randn(2, 2, generator=torch.Generator().manual_seed(seed), dtype=DT)

        def f(lo: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
            lb, ub = bounds.crown(net, lo, up)
            return (w[0] * lb).sum() + (w[1] * ub).sum()

        lo, up = lo0.clone().requires_grad_(), up0.clone().requires_grad_()
        g_lo, g_up = torch.autograd.grad(f(lo, up), (lo, up))
        eps = 1e-6
        fd_lo, fd_up = torch.zeros_like(lo0), torch.zeros_like(up0)
        with torch.no_grad():
            for k in range(5):
                e = torch.zeros_like(lo0)
                e[0, k] = eps
                # keep the box valid: move a corner only where it has room
                fd_lo[0, k] = (f(lo0 + e, up0) - f(lo0 - e, up0)) / (2 * eps) if bool(up0[0, k] - lo0[0, k] > 2 * eps) else g_lo[0, k]
                fd_up[0, k] = (f(lo0, up0 + e) - f(lo0, up0 - e)) / (2 * eps)
        g, fd = torch.cat([g_lo, g_up]), torch.cat([fd_lo, fd_up])
        # relative error, with a floor for nearly flat bounds (there central differences carry
        # ~1e-9 of rounding noise)
        rel = float((g - fd).norm() / max(float(fd.norm()), 1e-3))
        assert rel <= 1e-4, (act, seed, rel, g, fd)
        checked += float(fd.norm()) >= 1e-3
    assert checked >= 4


def test_alpha_crown_gradient_is_that_of_its_final_pass() -> None:
    """alpha-CROWN's gradient holds the optimised lines fixed: finite, and widening the box cannot
    narrow the certified interval."""
    net = _net("tanh", 3, depth=2)
    lo = torch.tensor([[-0.5, 0.1, -1.0, 0.0, 0.3]], dtype=DT, requires_grad=True)
    up = torch.tensor([[0.2, 0.4, -0.3, 0.6, 0.9]], dtype=DT, requires_grad=True)
    lb, ub = bounds.crown(net, lo, up, alpha=True, alpha_steps=5)
    (ub - lb).sum().backward()
    assert lo.grad is not None and up.grad is not None
    assert bool(torch.isfinite(lo.grad).all() and torch.isfinite(up.grad).all())
    assert bool((up.grad >= -1e-9).all() and (lo.grad <= 1e-9).all())


# --------------------------------------------------------------------------- soundness


@st.composite
def _cases(draw):
    act = draw(st.sampled_from(ACTS + ("relu6", "clip", "mixed")))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n_in, depth = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers += [Affine(torch.randn(n_in, generator=gen, dtype=DT), torch.randn(n_in, generator=gen, dtype=DT)),
                   Clip(-2.0, 2.0)]
    w = n_in
    for d in range(depth):
        out = draw(st.integers(1, 8))
        lin = nn.Linear(w, out).to(DT)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(out, w, generator=gen, dtype=DT) * draw(st.sampled_from([0.5, 1.0, 2.0])))
            lin.bias.copy_(torch.randn(out, generator=gen, dtype=DT))
        a = act if act != "mixed" else ACTS[d % 3]
        if a == "relu6":
            layers += [lin, nn.ReLU6()]
        elif a == "clip":
            low = -torch.rand(out, generator=gen, dtype=DT)
            layers += [lin, Clip(low, low + 2 * torch.rand(out, generator=gen, dtype=DT))]
        else:
            layers += [lin, _act(a)]
        w = out
    n_out = draw(st.integers(1, 3))
    layers.append(nn.Linear(w, n_out).to(DT))
    if draw(st.booleans()):
        layers.append(nn.Tanh())
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[-1 if not isinstance(net[-1], nn.Tanh) else -2].weight.normal_(generator=gen)
    batch = draw(st.integers(1, 2))
    c = torch.randn(batch, n_in, generator=gen, dtype=DT)
    r = torch.rand(batch, n_in, generator=gen, dtype=DT) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    r[torch.rand(batch, n_in, generator=gen, dtype=DT) < 0.25] = 0.0
    C = torch.randn(draw(st.integers(1, 3)), n_out, generator=gen, dtype=DT) if draw(st.booleans()) else None
    return net, c - r, c + r, C, gen


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_sampled_outputs_lie_inside_every_bound(case) -> None:
    net, lo, up, C, gen = case
    found = {"ibp": bounds.ibp(net, lo, up, C=C), "crown": bounds.crown(net, lo, up, C=C),
             "alpha": bounds.crown(net, lo, up, C=C, alpha=True, alpha_steps=8)}
    t = torch.rand(lo.shape[0], 400, lo.shape[1], generator=gen, dtype=DT)
    t[:, 200:] = (t[:, 200:] < 0.5).to(DT)  # half of them vertices
    x = lo.unsqueeze(1) + t * (up - lo).unsqueeze(1)
    with torch.no_grad():
        y = net(x)
        if C is not None:
            y = y @ C.T
    for name, (l, u) in found.items():
        assert bool((l <= u).all()), name
        assert int((y < l.unsqueeze(1) - 1e-9).sum() + (y > u.unsqueeze(1) + 1e-9).sum()) == 0, name
    (cl, cu), (al, au) = found["crown"], found["alpha"]
    assert bool((al >= cl).all() and (au <= cu).all())  # alpha-CROWN never looser than CROWN


def test_alpha_crown_optimises_every_layer() -> None:
    """On deep nets the intermediate bounds' own slopes matter: full alpha-CROWN is clearly tighter
    than CROWN for every activation, and more steps do not hurt."""
    for act in ACTS:
        net = _net(act, 5, n_in=6, width=16, depth=4)
        lo, up = _box(5, 6, 1.0)
        cl, cu = bounds.crown(net, lo, up)
        a5l, a5u = bounds.crown(net, lo, up, alpha=True, alpha_steps=5)
        a20l, a20u = bounds.crown(net, lo, up, alpha=True, alpha_steps=20)
        assert float((a20u - a20l).sum()) < 0.95 * float((cu - cl).sum()), act
        assert float((a20u - a20l).sum()) <= float((a5u - a5l).sum()) + 1e-9, act


def _auto_lirpa(tmp: Path):
    """auto_LiRPA 0.7.1 from $AUTO_LIRPA or shared/vendor above the repository, or skip."""
    env = os.environ.get("AUTO_LIRPA")
    root = Path(__file__).resolve().parents[2]
    cands = [Path(p) for p in env.split(os.pathsep) if p] if env else \
        [p / "shared" / "vendor" / "auto_LiRPA-0.7.1.tar.gz" for p in root.parents][:4]
    paths = []
    for c in cands:
        if c.is_file() and c.name.endswith(".tar.gz"):
            with tarfile.open(c) as tar:
                tar.extractall(tmp, filter="data")
            paths.append(str(tmp))
        elif c.is_dir():
            paths.append(str(c))
    if not paths:
        pytest.skip("auto_LiRPA source not found ($AUTO_LIRPA or shared/vendor)")
    sys.path[:0] = paths
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import auto_LiRPA
    except ImportError as e:
        pytest.skip(f"auto_LiRPA does not import here: {e}")
    finally:
        del sys.path[: len(paths)]
    return auto_LiRPA


def test_alpha_crown_cross_check_auto_lirpa(tmp_path: Path) -> None:
    """Within a few percent of auto_LiRPA's alpha-CROWN on deep ReLU nets (its CROWN equals ours)."""
    al = _auto_lirpa(tmp_path)
    logging.getLogger("auto_LiRPA").setLevel(logging.ERROR)
    ratios = []
    for seed in range(3):
        net = _net("relu", seed, n_in=6, width=16, depth=3, dtype=torch.float32)
        lo, up = _box(seed, 6, 0.6, dtype=torch.float32)
        x = (lo + up) / 2
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            model = al.BoundedModule(copy.deepcopy(net), torch.zeros_like(x), verbose=0)
            tl, tu = model.compute_bounds(x=(al.BoundedTensor(x, al.PerturbationLpNorm(x_L=lo, x_U=up)),),
                                          method="CROWN-Optimized")
        ol, ou = bounds.crown(net, lo, up, alpha=True)
        assert bool((ol <= tu).all() and (tl <= ou).all())  # both sound: the intervals overlap
        ratios.append(float((ou - ol).sum() / (tu - tl).sum()))
    assert max(ratios) <= 1.05, ratios


def test_batched_alpha_equals_single() -> None:
    net = _net("relu", 2, n_in=4, width=8, depth=2)
    lo, up = _box(2, 4, 0.7, batch=3)
    bl, bu = bounds.crown(net, lo, up, alpha=True, alpha_steps=6)
    for i in range(3):
        sl, su = bounds.crown(net, lo[i : i + 1], up[i : i + 1], alpha=True, alpha_steps=6)
        torch.testing.assert_close(bl[i : i + 1], sl, atol=1e-9, rtol=0)
        torch.testing.assert_close(bu[i : i + 1], su, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- outward rounding


def test_float32_point_boxes_are_ordered_and_contain_the_exact_value() -> None:
    """float32 CROWN used to return lb > ub by ~1e-7 on point boxes (CROWN's lower end above IBP's
    upper end after rounding); now every bound is widened by its rounding-error estimate."""
    for seed in range(20):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
        x = torch.randn(4, 8)
        lo, up = x.clone(), x.clone()
        lo[:, 0] -= 1e-7 * (seed % 3)
        with torch.no_grad():
            exact = copy.deepcopy(net).double()(x.double())
        for lb, ub in (bounds.crown(net, lo, up), bounds.ibp(net, lo, up)):
            assert lb.dtype == torch.float32
            assert bool((lb <= ub).all())
            assert bool((lb.double() <= exact).all() and (exact <= ub.double()).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), act=st.sampled_from(ACTS), radius=st.sampled_from([0.0, 1e-4, 0.1, 1.0]))
def test_float32_bounds_contain_float64_outputs(seed: int, act: str, radius: float) -> None:
    """float32 bounds hold for the exact (float64) outputs of the same float32 net, with no tolerance."""
    net = _net(act, seed % 1000, n_in=6, width=24, depth=3, dtype=torch.float32)
    lo, up = _box(seed % 1000, 6, radius, batch=2, dtype=torch.float32)
    net64 = copy.deepcopy(net).double()
    gen = torch.Generator().manual_seed(seed)
    x = lo.double().unsqueeze(1) + torch.rand(2, 300, 6, generator=gen, dtype=DT) * (up - lo).double().unsqueeze(1)
    x = x.float().double()  # points representable in float32
    with torch.no_grad():
        y = net64(x)
    for lb, ub in (bounds.crown(net, lo, up), bounds.crown(net, lo, up, alpha=True, alpha_steps=4), bounds.ibp(net, lo, up)):
        assert bool((lb <= ub).all())
        assert bool((y >= lb.double().unsqueeze(1)).all() and (y <= ub.double().unsqueeze(1)).all())


# --------------------------------------------------------------------------- specification matrix


def test_spec_matrix_equals_appended_linear_and_beats_differences() -> None:
    for act in ACTS:
        net = _net(act, 4, n_in=5, width=10, depth=2, n_out=3, prefix=True)
        net_tail = nn.Sequential(*net, nn.Tanh())  # a trailing activation is relaxed once C follows it
        lo, up = _box(4, 5, 0.8, batch=2)
        C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=DT)
        for base in (net, net_tail):
            lin = nn.Linear(3, 2, bias=False).to(DT)
            with torch.no_grad():
                lin.weight.copy_(C)
            appended = nn.Sequential(*base, lin)
            for kw in ({}, {"alpha": True, "alpha_steps": 5}):
                got = bounds.crown(base, lo, up, C=C, **kw)
                want = bounds.crown(appended, lo, up, **kw)
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            torch.testing.assert_close(bounds.ibp(base, lo, up, C=C), bounds.ibp(appended, lo, up), atol=1e-12, rtol=0)
        # bounding y0 - y1 directly vs subtracting separate bounds
        lb, ub = bounds.crown(net, lo, up)
        dl, du = bounds.crown(net, lo, up, C=C)
        sep = (ub[:, :2] - lb[:, [1, 2]]) - (lb[:, :2] - ub[:, [1, 2]])
        assert bool(((du - dl) <= sep + 1e-9).all()) and bool(((du - dl) < sep - 1e-6).any()), act


def test_spec_matrix_per_example() -> None:
    net = _net("relu", 6, n_in=4, width=8, depth=2, n_out=3)
    lo, up = _box(6, 4, 0.5, batch=2)
    C = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    lb, ub = bounds.crown(net, lo, up, C=C)
    assert lb.shape == (2, 4)
    for i in range(2):
        sl, su = bounds.crown(net, lo[i : i + 1], up[i : i + 1], C=C[i])
        torch.testing.assert_close(lb[i : i + 1], sl, atol=1e-10, rtol=0)
        torch.testing.assert_close(ub[i : i + 1], su, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="C must have shape"):
        bounds.crown(net, lo, up, C=torch.ones(2, 5, dtype=DT))
    with pytest.raises(ValueError, match="C must have shape"):
        bounds.ibp(net, lo, up, C=torch.ones(3, 2, 3, dtype=DT))


def test_public_names_and_signatures() -> None:
    assert fggm.bounds is fggm.core.bounds
    for name in ("ibp", "crown", "Affine", "Clip"):
        assert hasattr(fggm.core.bounds, name)
    params = inspect.signature(bounds.crown).parameters
    assert list(params)[:3] == ["net", "lower", "upper"]
    assert {"alpha", "alpha_steps", "alpha_lr", "C"} <= set(params)
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("alpha", "alpha_steps", "alpha_lr", "C"))
