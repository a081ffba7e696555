"""fggm.core on its own: specifications, the box, the controlled map, the ladder, statistics, and the layering."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fggm.core import bounds
from fggm.core.attack import BoxProblem, certify, eot_search, ladder_search, mean_point_search
from fggm.core.spec import MatrixSpec, RunSpec
from fggm.core.stats import bootstrap_mean, bootstrap_mean_drop
from fggm.core.threat import AttackError, BoundedEntries, NormaliserStats, check_search, coverage, parse_ids

SRC = Path(__file__).resolve().parents[2] / "src" / "fggm"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_layering_core_knows_no_problem_and_problems_not_each_other() -> None:
    for f in (SRC / "core").glob("*.py"):
        bad = {m for m in _imports(f) if m.startswith(("fggm.mimo", "fggm.knapsack"))}
        assert not bad, f"{f.name} imports a problem: {bad}"
    for f in (SRC / "mimo").glob("*.py"):
        assert not {m for m in _imports(f) if m.startswith("fggm.knapsack")}, f.name
    allowed = {"fggm.mimo.train", "fggm.mimo.policy"}  # SB3-generic helpers, imported for now
    for f in (SRC / "knapsack").glob("*.py"):
        assert {m for m in _imports(f) if m.startswith("fggm.mimo")} <= allowed, f.name


def _net(seed: int, n_in: int = 4, n_out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, n_out))


def test_matrix_spec_bounds_are_sound_and_tighter_than_interval_arithmetic() -> None:
    net = _net(0)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [2.0, 0.5, -3.0]])
    spec = MatrixSpec(C, torch.zeros(3))
    lo, up = -torch.ones(1, 4), torch.ones(1, 4)
    lb, ub = bounds.crown(spec.network(net), lo, up)
    x = lo + (up - lo) * torch.rand(5000, 4, generator=torch.Generator().manual_seed(1))
    y = net(x) @ C.T
    assert bool((y >= lb - 1e-5).all() and (y <= ub + 1e-5).all())
    # C applied to the output's own interval bounds is looser: the spec matrix enters the backward pass
    ol, ou = bounds.crown(net, lo, up)
    naive_lb = (C.clamp(min=0) * ol).sum(1) + (C.clamp(max=0) * ou).sum(1)
    assert bool((lb[0] >= naive_lb - 1e-6).all()) and bool((lb[0] > naive_lb + 1e-4).any())


def test_matrix_spec_costs_margin_and_groups() -> None:
    # alternative 0: y0 > 1 and y1 > 1; alternative 1: y2 > 0
    spec = MatrixSpec(torch.eye(3), torch.tensor([1.0, 1.0, 0.0]), groups=[0, 0, 1])
    lb = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    assert spec.costs(lb, lb).tolist() == [[0.5, 1.0]]
    assert spec.which(lb, lb) is None
    assert spec.which(torch.tensor([[0.0, 0.0, 0.3]]), None) == 1
    y = torch.tensor([[3.0, 2.0, -5.0], [0.0, 0.0, 0.2]])
    assert spec.point_margin(y).tolist() == pytest.approx([-1.0, -0.2])
    box = MatrixSpec.boxes(torch.tensor([[0.0, -np.inf]]), torch.tensor([[1.0, 2.0]]))
    assert box.C.tolist() == [[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]]  # rows: y0 >= 0, -y0 >= -1, -y1 >= -2
    assert box.which(torch.tensor([[0.5, -0.6, -1.5]]), None) == 0
    assert box.which(torch.tensor([[0.5, -1.2, -1.5]]), None) is None  # y0 may exceed 1


def test_run_spec_from_grid_matches_the_quantiser() -> None:
    rng = np.random.default_rng(0)
    free = rng.random(41) < 0.5
    spec = RunSpec.from_grid(free)
    n = len(free)
    for mu in np.linspace(-4, 4, 3001):
        idx = int(np.rint((np.tanh(mu) + 1) / 2 * (n - 1)))
        r = spec.which(mu, mu)
        if r is not None:  # inside a run's interval: the grid maps it into that run
            s, e = spec.runs[r]
            assert s <= idx <= e and free[idx]
    m = spec.point_margin(torch.tensor([[0.0]], dtype=torch.float64))
    assert (float(m) < 0) == (spec.which(0.0, 0.0) is not None)


def test_box_coverage_and_validation() -> None:
    stats = NormaliserStats(np.array([0.5, 0.5, 0.5]), np.full(3, 1 / 12), 1e-8, 10.0)
    lo, up = stats.box(3.0, np.zeros(3), np.ones(3))
    assert lo.tolist() == [0.0, 0.0, 0.0] and up.tolist() == [1.0, 1.0, 1.0]
    lo, up = stats.box(1.0, np.zeros(3), np.ones(3))
    assert lo[0] == pytest.approx(0.5 - np.sqrt(1 / 12))
    obs = np.array([[0.5, 0.5, 9.0], [0.0, 0.5, 0.5]])
    assert coverage(obs, lo, up, np.array([2])) == 0.5
    samples = stats.sample(500, torch.Generator().manual_seed(0), np.zeros(3), np.ones(3))
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    with pytest.raises(AttackError, match="k must be"):
        check_search(0.0, "crown", "sign", 1, 1, 0.1)
    with pytest.raises(AttackError, match="lists a item twice"):
        parse_ids([1, 1], "attackers", "item")


def _toy_problem(k: float) -> BoxProblem:
    # y = [tanh(x0 - x1 - x2), tanh(0)]: the attacker controls x0 in [-5, 5]; x1, x2 lie in the box
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
        lin.bias.zero_()
    view = nn.Sequential(lin, nn.Tanh())
    stats = NormaliserStats(np.zeros(3), np.ones(3), 1e-8, 10.0)
    ctl = BoundedEntries(torch.tensor([0]), torch.tensor([-5.0]), torch.tensor([5.0]))
    spec = MatrixSpec(torch.tensor([[1.0, -1.0]]), torch.tensor([0.5]))  # y0 > y1 + 0.5
    return BoxProblem(view, stats, ctl, spec, k, phys_lo=None, phys_hi=None)


def test_ladder_proves_a_reachable_goal_and_the_certificate_holds() -> None:
    problem = _toy_problem(k=2.0)  # x1 + x2 <= 4 in the box: x0 >= 4 + atanh(0.5) proves it
    s = ladder_search(problem, problem.controlled.init(3, 0), steps=200, step_size=0.05)
    cert = certify(problem, s.x, s.loss)
    assert cert.proved and cert.certified_k == 2.0
    x0 = float(cert.x[0, 0])
    assert x0 >= 4 + np.arctanh(0.5) - 1e-4
    lo, up = problem.box(cert.x)
    pts = lo + (up - lo) * torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
    y = problem.view(pts)
    assert bool((y[:, 0] - y[:, 1] > 0.5 - 1e-5).all())
    # with k = 3 the box needs x0 >= 6.55: out of reach; the largest k x0 = 5 proves is (5 - atanh 0.5) / 2
    big = _toy_problem(k=3.0)
    s = ladder_search(big, big.controlled.init(3, 0), steps=200, step_size=0.05)
    cert = certify(big, s.x, s.loss)
    assert not cert.proved and 2.0 <= cert.certified_k <= (5 - np.arctanh(0.5)) / 2 + 1e-3


def test_point_baselines_optimise_the_point_margin() -> None:
    problem = _toy_problem(k=1.0)
    x0 = torch.tensor([[-4.0], [-3.0]])
    for fn in (mean_point_search, eot_search):
        s = fn(problem, x0, 40, "sign", 0.1)
        assert float(s.loss.min()) < -0.4 and float(s.x.max()) > 4.0  # tanh(x0 - x1 - x2) near 1: margin near -0.5
        assert all(b <= a + 1e-12 for a, b in zip(s.history, s.history[1:]))


def test_bootstrap_statistics() -> None:
    m, lo, hi = bootstrap_mean(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and lo <= m <= hi
    base = np.ones((3, 50))
    att = np.stack([np.zeros(50), np.ones(50), np.r_[np.zeros(25), np.ones(25)]])
    point, lo, hi = bootstrap_mean_drop(base, att)
    assert point == pytest.approx((100 + 0 + 50) / 3) and lo <= point <= hi
