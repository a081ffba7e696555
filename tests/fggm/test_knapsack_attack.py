"""Knapsack solver checkpoints and the FGGM attack on them: soundness of what is certified, files, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fggm.cli import app
from fggm.core.threat import AttackError
from fggm.knapsack.attack import KnapsackAttack, KnapsackSetup, KnapsackThreat, KnapsackVictim, craft, goal_met
from fggm.knapsack.attack_eval import evaluate_attacks, victim_sweep
from fggm.knapsack.config import KnapsackConfig
from fggm.knapsack.evaluate import run_solver
from fggm.knapsack.train import load_solver, train

TINY = Path(__file__).resolve().parents[2] / "configs" / "knapsack_tiny.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knap") / "scores"
    r = runner.invoke(app, ["knapsack", "train", "--config", str(TINY), "--out", str(out), "--steps", "150", "--no-eval"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def proto_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knap") / "proto"
    cfg = KnapsackConfig.from_dict({"env": {"n_items": 6, "head": "proto", "proto_dim": 3, "knn_k": 8},
                                    "train": {"total_steps": 120, "net_arch": [32, 32], "learning_starts": 100,
                                              "batch_size": 16, "buffer_size": 500, "n_envs": 2, "log_interval": 60,
                                              "eval_instances": 100}})
    train(cfg, out, progress=False, final_eval=False)
    return out


def _box_samples(setup: KnapsackSetup, x: torch.Tensor, n: int = 1500) -> np.ndarray:
    lo, up = setup.problem.box(x)
    gen = torch.Generator().manual_seed(0)
    obs = lo + (up - lo) * torch.rand(n, lo.shape[1], generator=gen)
    obs[: n // 2] = lo + (up - lo) * (torch.rand(n // 2, lo.shape[1], generator=gen) < 0.5)  # vertices
    return obs.numpy().astype(np.float64)


def test_checkpoint_loads_and_is_compact(scores_dir: Path) -> None:
    model, vecnorm, cfg = load_solver(scores_dir)
    manifest = json.loads((scores_dir / "manifest.json").read_text())
    assert manifest["format"] == "fggm-knapsack-solver/1" and manifest["head"] == "scores" and manifest["complete"]
    assert cfg.env.n_items == 6 and not vecnorm.training
    assert model.actor.optimizer.state_dict()["state"] == {}  # Adam moments stripped
    # the attacker's view reproduces SB3's deterministic action
    victim = KnapsackVictim.load(scores_dir)
    obs = np.random.default_rng(0).random((50, 12)).astype(np.float32)
    act, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(np.tanh(victim.view(torch.tensor(obs)).detach().numpy()), act, atol=1e-5)


def test_certified_score_goals_hold_for_every_sampled_instance(scores_dir: Path, tmp_path: Path) -> None:
    victim = KnapsackVictim.load(scores_dir)
    solver = victim.solver()
    proved = []
    for goal, victims in [("exclude", (2,)), ("exclude", (3,)), ("exclude", (4,)), ("include", ())]:
        tm = KnapsackThreat(attackers=(0, 1), victims=victims, goal=goal, k=0.1, steps=30, restarts=4)
        res = craft(victim, tm, "fggm")
        for (w, v) in res.forged.values():  # within the stated bounds
            assert 0.0 <= w <= 1.0 and 0.0 <= v <= 1.0
        if res.certificate["certified_k"] > 0:
            proved.append(res)
    assert proved, "FGGM should certify some goal at k = 0.1 on the tiny solver"
    for res in proved:
        tm = replace(res.threat, k=res.certificate["certified_k"])
        setup = KnapsackSetup.build(victim, tm)
        obs = _box_samples(setup, setup.params_of(res.forged))
        n = victim.config.env.n_items
        sel = run_solver(victim.config.env, solver, obs[:, :n], obs[:, n:])["selected"]  # reports = forged entries
        assert goal_met(tm, sel).all(), f"certified {tm.goal} violated on {int((~goal_met(tm, sel)).sum())} instances"
    path = proved[0].save(tmp_path / "attack.json")
    back = KnapsackAttack.load(path)
    assert back.threat == proved[0].threat and back.forged == proved[0].forged
    assert {"forged", "certificate", "threat_model", "seed", "versions"} <= set(json.loads(path.read_text()))


def test_proto_candidate_set_contains_every_knn_candidate(proto_dir: Path) -> None:
    victim = KnapsackVictim.load(proto_dir)
    tm = KnapsackThreat(attackers=(0,), victims=(1,), goal="exclude", k=0.5, steps=10, restarts=2)
    res = craft(victim, tm, "fggm")
    c = res.certificate
    assert c["head"] == "proto" and 1 <= c["reachable_candidates"] <= 64
    setup = KnapsackSetup.build(victim, tm)
    obs = _box_samples(setup, setup.params_of(res.forged), 600)
    solver = victim.solver()
    act = solver.actions(obs[:, :6], obs[:, 6:])
    lo, hi = np.array(c["proto_box"][0]), np.array(c["proto_box"][1])
    assert (act >= lo - 1e-5).all() and (act <= hi + 1e-5).all(), "proto-action outside its certified box"
    reach = setup.grid.reachable(lo, hi)
    cand = setup.grid.knn(act)
    assert reach[np.unique(cand)].all()
    share = goal_met(tm, setup.grid.masks[reach]).mean()
    assert c["candidate_goal_share"] == pytest.approx(share)


def test_evaluation_rows_and_victim_sweep(scores_dir: Path) -> None:
    victim = KnapsackVictim.load(scores_dir)
    tm = KnapsackThreat(attackers=(0,), victims=(2,), goal="infeasible", k=3.0, steps=10, restarts=2)
    atts = {"none": None, "random": craft(victim, tm, "random"), "fggm": craft(victim, tm, "fggm")}
    rows, masks = evaluate_attacks(victim, tm, atts, instances=300)
    by = {r["attack"]: r for r in rows}
    assert [r["attack"] for r in rows] == ["none", "random", "fggm"]
    for key in ("victim_cut_pct", "value_cut_pct", "value_cut_ci95", "feasible_rate", "coverage", "certified_coverage",
                "certified", "certified_k", "attacker_selection_rate"):
        assert key in by["fggm"]
    assert by["fggm"]["coverage"] == 1.0  # k = 3 covers [0, 1] for every entry
    assert by["fggm"]["forged"]["0"][0] == 0.0  # infeasible: the weight is pinned at its lower bound
    assert masks["fggm"].shape == (300, 6)
    sweep = victim_sweep(victim, replace(tm, goal="exclude"), victims=(2, 3), methods=("random",), instances=200)
    assert sweep["summary"]["random"]["victims"] == [2, 3] and len(sweep["rows"]) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"attackers": (0, 2), "victims": (2,)}, "overlap in item"),
    ({"goal": "steal"}, "goal must be one of"),
    ({"weight_bounds": (0.5, 0.2)}, "weight_bounds must satisfy"),
    ({"k": -1.0}, "k must be a positive"),
    ({"victims": ()}, "at least one victim"),
])
def test_bad_threat_models(kwargs, message) -> None:
    with pytest.raises(AttackError, match=message):
        KnapsackThreat(**kwargs)


def test_cli_evaluate_attack_and_errors(scores_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["knapsack", "evaluate", "--solver", str(scores_dir), "--solver", "greedy", "--solver", "exact",
                            "--instances", "200", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    assert [x["solver"] for x in rows] == ["sac:scores", "greedy", "exact"] and rows[2]["vs_optimum"] == 1.0
    assert (tmp_path / "ev" / "evaluation.png").stat().st_size > 1000
    out = tmp_path / "a.json"
    r = runner.invoke(app, ["knapsack", "attack", "--solver", str(scores_dir), "--attackers", "0", "--victims", "2",
                            "--k", "0.5", "--steps", "5", "--restarts", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["format"] == "fggm-knapsack-attack/1"
    r = runner.invoke(app, ["knapsack", "evaluate", "--attack", str(out), "--instances", "100", "--out", str(tmp_path / "ae")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "ae" / "results.json").read_text())["rows"]
    assert [x["attack"] for x in rows] == ["none", "random", "fggm"]
    assert (tmp_path / "ae" / "knapsack_attacks.png").stat().st_size > 1000
    for args, msg in ((["attack", "--solver", str(scores_dir), "--attackers", "0", "--victims", "0"], "overlap"),
                      (["attack", "--solver", str(scores_dir), "--victims", "9"], "unknown item"),
                      (["attack", "--solver", str(scores_dir), "--goal", "steal"], "goal must be"),
                      (["attack", "--solver", str(scores_dir), "--weight-bounds", "0.5"], "--weight-bounds"),
                      (["evaluate", "--solver", "magic"], "unknown solver"),
                      (["evaluate", "--attack", str(tmp_path / "missing.json")], "attack file not found"),
                      (["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "t")], "not found")):
        r = runner.invoke(app, ["knapsack", *args, "--out", str(tmp_path / "x.json")] if args[0] == "attack"
                          else ["knapsack", *args])
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
        assert lines[-1].startswith("error: ")
    assert not (tmp_path / "x.json").exists()  # nothing half-written on failure
