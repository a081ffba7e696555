"""The knapsack problem: instances, subsets, decoding, exact/greedy/random solvers, the grid, the env, config."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fggm.knapsack import KnapsackConfig, KnapsackConfigError, KnapsackEnv, KnapsackEnvConfig, ProtoGrid
from fggm.knapsack.env import decode_scores, exact_solve, outcome, sample_instances, subset_masks, true_capacity
from fggm.knapsack.evaluate import apply_reports, evaluate_solvers
from fggm.knapsack.solvers import GreedySolver, make_solver


def test_subsets_by_size_then_lexicographic() -> None:
    m = subset_masks(4)
    assert m.shape == (16, 4) and len({tuple(r) for r in m}) == 16
    sizes = m.sum(1)
    assert (np.diff(sizes) >= 0).all()
    tuples = [tuple(np.flatnonzero(r)) for r in m]
    for s in range(5):
        block = [t for t in tuples if len(t) == s]
        assert block == sorted(block)


def test_exact_is_the_brute_force_optimum_and_beats_greedy_and_random() -> None:
    w, v = sample_instances(300, 7, 3)
    cap = np.full(300, 1.75)
    ex = exact_solve(w, v, cap)
    val, feas = outcome(ex, w, v, cap)
    assert feas.all()
    for b in range(20):  # independent brute force over itertools
        best = max(sum(v[b, list(c)]) for r in range(8) for c in itertools.combinations(range(7), r)
                   if sum(w[b, list(c)]) <= 1.75)
        assert val[b] == pytest.approx(best)
    greedy, _ = outcome(GreedySolver().solve(w, v, cap), w, v, cap)
    rnd, _ = outcome(make_solver("random", 0).solve(w, v, cap), w, v, cap)
    assert (greedy <= val + 1e-12).all() and rnd.mean() < greedy.mean() < val.mean()


def test_decode_scores_positive_only_best_first_while_it_fits() -> None:
    scores = np.array([[0.1, 0.9, -0.5, 0.5]])
    w = np.array([[0.3, 0.6, 0.1, 0.5]])
    # order 1 (0.6 fits), 3 (0.5 does not fit in 0.4 left), 0 (0.3 fits); 2 is negative
    assert decode_scores(scores, w, np.array([1.0])).tolist() == [[True, True, False, False]]


def test_outcome_uses_true_weights_so_a_forged_light_item_breaks_feasibility() -> None:
    cfg = KnapsackEnvConfig(n_items=3)
    w, v = np.array([[0.5, 0.5, 0.5]]), np.array([[0.5, 0.5, 0.5]])
    cap = true_capacity(cfg, w)  # 0.75
    w_rep, v_rep = apply_reports(w, v, {0: (0.0, 1.0)})
    sel = GreedySolver().solve(w_rep, v_rep, cap)
    assert sel.tolist() == [[True, True, False]]  # item 0 "weighs nothing", item 1 fits by the reports
    value, feasible = outcome(sel, w, v, cap)
    assert value.tolist() == [0.0] and feasible.tolist() == [False]


def test_env_check_reports_and_info() -> None:
    for head in ("scores", "proto"):
        check_env(KnapsackEnv(KnapsackEnvConfig(head=head)), skip_render_check=True)
    env = KnapsackEnv(KnapsackEnvConfig(n_items=4))
    w, v = np.array([0.9, 0.2, 0.3, 0.4]), np.array([0.1, 0.5, 0.6, 0.7])
    env.report_override(0, (0.05, 1.0))
    obs, _ = env.reset(options={"instance": (w, v)})
    assert obs.tolist() == pytest.approx([0.05, 0.2, 0.3, 0.4, 1.0, 0.5, 0.6, 0.7])
    _, reward, term, trunc, info = env.step(np.array([1.0, 0.9, -1.0, -1.0], dtype=np.float32))
    # items 0 and 1 chosen: reported weight 0.25 fits 1.0, true weight 1.1 does not
    assert info["selected"].tolist() == [True, True, False, False]
    assert info["reported_feasible"] and not info["feasible"] and reward == 0.0 and term and not trunc
    assert info["optimum"] == pytest.approx(0.5 + 0.6 + 0.7)
    with pytest.raises(KnapsackConfigError, match=r"report must lie in \[0, 1\]"):
        env.report_override(1, (1.5, 0.0))


def test_proto_grid_and_reachable_candidates_are_sound() -> None:
    cfg = KnapsackEnvConfig()
    g = ProtoGrid(cfg)
    assert g.points.shape == (1024, 5) and set(np.unique(g.points)) == {-1.0, np.float32(-1 / 3), np.float32(1 / 3), 1.0}
    assert (g.nearest(g.points) == np.arange(1024)).all()
    rng = np.random.default_rng(0)
    for _ in range(10):
        c = rng.uniform(-1, 1, 5)
        half = rng.uniform(0, 0.3, 5)
        lo, hi = np.clip(c - half, -1, 1), np.clip(c + half, -1, 1)
        reach = g.reachable(lo, hi)
        pts = lo + (hi - lo) * rng.random((200, 5))
        hit = np.unique(g.knn(pts))
        assert reach[hit].all(), "a k-NN candidate of a point in the box is missing from the reachable set"
        assert reach.sum() < 1024


def test_evaluate_solvers_rows() -> None:
    rows = evaluate_solvers(KnapsackEnvConfig(), [make_solver(b) for b in ("random", "greedy", "exact")], 400, seed=5)
    by = {r["solver"]: r for r in rows}
    assert by["exact"]["vs_optimum"] == 1.0 and by["exact"]["feasible_rate"] == 1.0
    assert 0.95 < by["greedy"]["vs_optimum"] < 1.0 and by["random"]["vs_optimum"] < 0.85
    assert len(by["greedy"]["selection_rate"]) == 10 and by["greedy"]["instances"] == 400
    forged = evaluate_solvers(KnapsackEnvConfig(), [make_solver("greedy")], 400, seed=5, forged={0: (0.0, 1.0)})[0]
    assert forged["selection_rate"][0] == 1.0 and forged["feasible_rate"] < 1.0 and forged["forged_items"] == [0]


@pytest.mark.parametrize("data, message", [
    ({"env": {"n_items": 0}}, "n_items must be"),
    ({"env": {"head": "pointer"}}, "head must be one of"),
    ({"env": {"capacity": "huge"}}, "capacity must be one of"),
    ({"env": {"head": "proto", "proto_dim": 2}}, "fewer than the"),
    ({"train": {"bogus": 1}}, "unknown key"),
    ({"model": {}}, "unknown config section"),
])
def test_bad_configs_give_one_sentence(data, message) -> None:
    with pytest.raises(KnapsackConfigError, match=message) as info:
        KnapsackConfig.from_dict(data)
    assert "\n" not in str(info.value)
