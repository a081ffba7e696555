"""FGGM on a tiny trained scheduler: threat-model validation, box, certificate, attack effect."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fggm.attack import (AttackResult, AttackSetup, ThreatModel, ThreatModelError, Victim, forged_se,
                         mean_point_pgd, random_forged, run_fggm)
from fggm.attack_eval import bootstrap_drop, evaluate_attacks
from fggm.config import ConfigError, EnvConfig
from fggm.mimo import single_user_se



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------- threat model


@pytest.mark.parametrize("kwargs, message", [
    ({"attackers": (0, 1), "victims": (1,)}, "overlap in user"),
    ({"k": 0.0}, "k must be a positive"),
    ({"k": -1.0}, "k must be a positive"),
    ({"victims": ()}, "at least one victim"),
    ({"attackers": (0, 0)}, "lists a user twice"),
    ({"domain": "zonotope"}, "domain must be one of"),
    ({"step_rule": "newton"}, "step_rule must be one of"),
    ({"power_budget": -3.0}, "power_budget must be positive"),
])
def test_bad_threat_models_give_one_clear_error(kwargs, message) -> None:
    with pytest.raises(ThreatModelError, match=message) as info:
        ThreatModel(**kwargs)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_unknown_users_and_size_mismatch(victim: Victim) -> None:
    with pytest.raises(ThreatModelError, match=r"unknown user\(s\) \[7\]"):
        AttackSetup.build(victim, ThreatModel(attackers=(0,), victims=(7,)))
    wrong_env = replace(victim, env=EnvConfig(num_antennas=8, num_users=4, max_scheduled=2))
    with pytest.raises(ThreatModelError, match="checkpoint/environment mismatch"):
        AttackSetup.build(wrong_env, ThreatModel(attackers=(0,), victims=(2,)))


def test_threat_model_round_trip() -> None:
    tm = ThreatModel(attackers=(3, 1), victims=(2,), k=2.5, domain="ibp", step_rule="adam")
    assert tm.attackers == (1, 3)
    assert ThreatModel.from_dict(json.loads(json.dumps(tm.to_dict()))) == tm


# ------------------------------------------------------------------------- box and forged entries


def test_forged_se_matches_the_environment() -> None:
    h = np.array([1 + 2j, -0.5 + 0.1j, 3.0 - 1j, 0.2j])
    x = torch.tensor(np.concatenate([h.real, h.imag]), dtype=torch.float64)
    assert float(forged_se(x)) == pytest.approx(float(single_user_se(h[:, None])[0]), rel=1e-12)


def test_box_layout(victim: Victim) -> None:
    tm = ThreatModel(attackers=(1,), victims=(2,), k=2.0)
    s = AttackSetup.build(victim, tm)
    x = torch.randn(2, 1, 8)
    lo, up = s.box(x)
    idx = torch.cat([s.ch_idx.flatten(), s.se_idx])
    # attackers' entries are points: the forged Re/Im values and the SE they imply
    assert torch.equal(lo[:, idx], up[:, idx])
    torch.testing.assert_close(lo[:, s.ch_idx[0]], x[:, 0])
    torch.testing.assert_close(lo[:, s.se_idx[0]], forged_se(x[:, 0]))
    # every other entry: mean +- k sigma, SE and cumulative SE clipped at 0
    rest = torch.ones(lo.shape[1], dtype=torch.bool)
    rest[idx] = False
    mean, sd = torch.tensor(victim.mean, dtype=torch.float32), torch.tensor(np.sqrt(victim.var), dtype=torch.float32)
    expect_lo = mean - 2.0 * sd
    expect_lo[:8] = expect_lo[:8].clamp_min(0)
    torch.testing.assert_close(lo[0, rest], expect_lo[rest])
    torch.testing.assert_close(up[0, rest], torch.maximum(mean + 2.0 * sd, torch.zeros(1))[rest])
    # projection keeps every forged channel within the power budget
    big = s.project(torch.full((1, 1, 8), 1e3))
    assert float((big**2).sum()) == pytest.approx(s.budget, rel=1e-5)


# ------------------------------------------------------------------------- FGGM


def test_claimed_certificate_holds_on_sampled_observations(victim: Victim, tmp_path: Path) -> None:
    proved = []
    for victims in [(2,), (1,), (3,)]:
        tm = ThreatModel(attackers=(0,), victims=victims, k=0.1, steps=40)
        res = run_fggm(victim, tm)
        if res.certificate["proved"]:
            proved.append(res)
        # within each rung of the k ladder the search never makes its objective worse
        for rung in res.ladder:
            h = res.history[rung["start"] : rung["start"] + rung["steps"] + 1]
            assert all(b <= a + 1e-12 for a, b in zip(h, h[1:]))
        # certified_k is consistent with the ladder: every certified rung is within it
        ks = [r["k"] for r in res.ladder if r["certified"]]
        assert res.certificate["certified_k"] >= (max(ks) if ks else 0.0) * (1 - 1e-3)
    assert proved, "FGGM should certify at least one victim at k = 0.1 on the tiny scheduler"
    for res in proved:
        s = AttackSetup.build(victim, res.threat)
        x = torch.tensor(np.stack([np.concatenate([h.real, h.imag]) for h in res.forged.values()]),
                         dtype=torch.float32).unsqueeze(0)
        lo, up = s.box(x)
        gen = torch.Generator().manual_seed(0)
        obs = lo + (up - lo) * torch.rand(2000, lo.shape[1], generator=gen)
        obs[:1000] = lo + (up - lo) * (torch.rand(1000, lo.shape[1], generator=gen) < 0.5)  # vertices
        # what the real SB3 policy does on these observations
        actions, _ = victim.model.predict(victim.vecnormalize.normalize_obs(obs.numpy()), deterministic=True)
        subsets = [s.codec.index_to_subset(s.codec.action_to_index(a)) for a in actions]
        hit = [v for sub in subsets for v in sub if v in res.threat.victims]
        assert not hit, f"certified attack scheduled a victim on {len(hit)} sampled observations"
        # and the certificate survives a save/load round trip
        path = res.save(tmp_path / "attack.json")
        back = AttackResult.load(path)
        assert back.certificate["proved"] and back.threat == res.threat
        for u in res.forged:
            np.testing.assert_allclose(back.forged[u], res.forged[u])
        d = json.loads(path.read_text())
        assert {"forged", "certificate", "threat_model", "seed", "versions"} <= set(d)
        assert d["certificate"]["domain"] == "crown"


def test_fggm_lowers_the_victims_scheduling_rate(victim: Victim) -> None:
    tm = ThreatModel(attackers=(0,), victims=(2,), k=0.3, steps=30)
    res = run_fggm(victim, tm)
    rows, per_tti = evaluate_attacks(victim, tm, {"none": None, "fggm": res}, ttis=100, seeds=(5,))
    by = {r["attack"]: r for r in rows}
    assert by["fggm"]["victim_scheduled_rate"] < by["none"]["victim_scheduled_rate"]
    assert by["fggm"]["victim_throughput"] < by["none"]["victim_throughput"]
    assert by["fggm"]["victim_drop_pct"] > 0
    assert len(per_tti["fggm"]) == 100
    for key in ("attack", "attackers", "victims", "victim_throughput", "victim_drop_pct", "ci95", "sum_se", "certified"):
        assert key in by["fggm"]


def test_baselines_respect_the_budget(victim: Victim) -> None:
    tm = ThreatModel(attackers=(0, 1), victims=(3,), k=0.3, steps=10, power_budget=50.0)
    for res in (mean_point_pgd(victim, tm), random_forged(victim, tm), run_fggm(victim, replace(tm, step_rule="adam"))):
        for h in res.forged.values():
            assert float(np.sum(np.abs(h) ** 2)) <= 50.0 * (1 + 1e-5)
        assert res.budget == 50.0


def test_bootstrap_drop() -> None:
    base = np.array([2.0, 4.0, 6.0, 8.0])
    point, lo, hi = bootstrap_drop(base, base * 0.25)
    assert point == pytest.approx(75.0) and lo == pytest.approx(75.0) and hi == pytest.approx(75.0)
    point, lo, hi = bootstrap_drop(base, np.array([2.0, 1.0, 6.0, 1.0]))
    assert lo <= point <= hi and hi > lo


def test_cli_attack_then_evaluate(sched_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fggm.cli import app

    runner = CliRunner()
    out = tmp_path / "attack.json"
    r = runner.invoke(app, ["attack", "--scheduler", str(sched_dir), "--attackers", "0", "--victims", "2",
                            "--k", "0.3", "--steps", "5", "--restarts", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["threat_model"]["victims"] == [2]
    r = runner.invoke(app, ["evaluate", "--attack", str(out), "--ttis", "30", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    assert [row["attack"] for row in rows] == ["none", "random", "fggm"]
    assert (tmp_path / "ev" / "attack_drop.png").stat().st_size > 0
    # bad input: one line on stderr, non-zero exit, no traceback
    for args, msg in ((["--attackers", "0,2", "--victims", "2"], "overlap"), (["--victims", "9"], "unknown user"),
                      (["--k", "-1"], "k must be")):
        r = runner.invoke(app, ["attack", "--scheduler", str(sched_dir), *args, "--out", str(tmp_path / "x.json")])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["evaluate", "--attack", str(tmp_path / "missing.json")])
    assert r.exit_code != 0 and "attack file not found" in r.output
