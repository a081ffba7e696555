"""Threat models (fixed, stealthy, pilot, silent), the forged environment, coverage, the rank spec,
the nested bootstrap and the every-victim sweep, on a tiny trained scheduler."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fggm.config import EnvConfig
from fggm.core import bounds
from fggm.core.attack import BoxProblem, prove_split
from fggm.core.spec import MatrixSpec
from fggm.core.spec import RankSpec
from fggm.core.stats import nested_drop, spread
from fggm.core.threat import BoundedEntries, NormaliserStats, coverage
from fggm.mimo import scheduled_se, single_user_se
from fggm.mimo.attack import AttackResult, AttackSetup, ThreatModel, ThreatModelError, Victim, craft
from fggm.mimo.attack_eval import evaluate_attacks
from fggm.mimo.evaluate import run_scheduler
from fggm.mimo.forgery import ForgedEnv, PilotGains, Report, StealthyChannels
from fggm.mimo.runner import Condition, OracleAttacker, run_conditions
from fggm.mimo.schedulers import PolicyScheduler
from fggm.mimo.setup import tight_box
from fggm.mimo.sweep import SweepSettings, attackers_for, run_sweep, victim_sets



# ------------------------------------------------------------------------- threat model


@pytest.mark.parametrize("kwargs, message", [
    ({"forgery": "spoof"}, "forgery must be one of fixed, stealthy, pilot, silent"),
    ({"box": "cube"}, "box must be one of sigma, tight"),
    ({"pilot_gain": (2.0, 1.0)}, "pilot_gain must be"),
    ({"pilot_gain": (0.0, 1.0)}, "pilot_gain must be"),
    ({"stealth_k": 0.0}, "stealth_k must be"),
    ({"horizon": 0}, "horizon must be"),
])
def test_bad_threat_models(kwargs, message) -> None:
    with pytest.raises(ThreatModelError, match=message) as info:
        ThreatModel(**kwargs)
    assert "\n" not in str(info.value)


def test_threat_model_round_trip_and_old_files() -> None:
    tm = ThreatModel(attackers=(1,), victims=(2,), forgery="pilot", pilot_gain=(0.5, 2.0), box="tight", horizon=20)
    assert ThreatModel.from_dict(json.loads(json.dumps(tm.to_dict()))) == tm
    old = {"attackers": [0], "victims": [1], "k": 3.0, "power_budget": None, "power_factor": 4.0, "domain": "crown",
           "step_rule": "sign", "steps": 60, "step_size": 0.2, "restarts": 4, "seed": 0}
    assert ThreatModel.from_dict(old).forgery == "fixed"


# ------------------------------------------------------------------------- forged environment


def test_pilot_reports_fade_with_the_true_channel_and_silent_users_vanish() -> None:
    cfg = EnvConfig(num_antennas=4, num_users=3, max_scheduled=2, episode_length=20)
    g = 0.6 * np.exp(0.7j)
    env = ForgedEnv(cfg, {1: Report("pilot", np.array([g])), 2: Report("silent")})
    obs, _ = env.reset(seed=3)
    for t in range(3):
        H, R = env.true_channel, env.reported_channel
        np.testing.assert_allclose(R[:, 1], g * H[:, 1])          # the base station sees c e^{j phi} h_true
        assert np.all(R[:, 2] == 0) and np.all(H[:, 2] == 0)      # silent: no pilot, no data
        assert obs[1] == pytest.approx(np.log2(1 + abs(g) ** 2 * np.sum(np.abs(H[:, 1]) ** 2)), rel=1e-5)
        assert obs[2] == 0.0
        # a silent user in the subset gets nothing and costs the other user nothing
        _, _, _, _, info = env.step_index(env.codec.subset_to_index((0, 2)))
        alone, _ = scheduled_se(H, H, [0])
        assert info["se"][2] == 0.0 and info["se"][0] == pytest.approx(alone[0], rel=1e-6)
        obs = env.observation()
    # the pilot's own physical rate is that of honest ZF (ZF does not care about a column's scale or phase)
    env2 = ForgedEnv(cfg, {1: Report("pilot", np.array([g]))})
    env2.reset(seed=3)
    honest = ForgedEnv(cfg)
    honest.reset(seed=3)
    a = env2.step_index(env2.codec.subset_to_index((0, 1)))[4]["se"]
    b = honest.step_index(honest.codec.subset_to_index((0, 1)))[4]["se"]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_lockstep_runner_matches_the_one_at_a_time_evaluation(victim: Victim) -> None:
    h = np.full(victim.env.num_antennas, 2.0 + 1.0j)
    traces = run_conditions(victim, [Condition("none"), Condition("fixed", {1: Report("fixed", h)})], 60, seed=9)
    for name, forged in (("none", {}), ("fixed", {1: h})):
        row = run_scheduler(victim.env, PolicyScheduler(victim.model, victim.vecnormalize), 60, 9, forged=forged)
        np.testing.assert_allclose(traces[name].se.mean(0), row["per_user_throughput"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- forgeries in the box


def test_pilot_interval_entries_contain_every_true_channel_in_the_box() -> None:
    gen = torch.Generator().manual_seed(0)
    M, A = 3, 2
    ch_idx = torch.arange(2 * M * A).reshape(A, 2 * M) + A
    se_idx = torch.arange(A)
    ctl = PilotGains(ch_idx, se_idx, (0.1, 4.0), torch.zeros(A, 2 * M))
    lo_full = torch.cat([torch.full((A,), 0.5), -torch.rand(2 * M * A, generator=gen) - 0.2])
    up_full = torch.cat([torch.full((A,), 6.0), torch.rand(2 * M * A, generator=gen) + 0.2])
    idx = ctl.indices
    x = ctl.sample(5, 1)
    v_lo, v_up = ctl.values_box(x, lo_full[idx], up_full[idx])
    for _ in range(200):
        obs = lo_full + (up_full - lo_full) * torch.rand(lo_full.shape, generator=gen)
        chp = obs[ch_idx.flatten()].reshape(A, 2 * M)
        obs[se_idx] = torch.log2(1 + (chp**2).sum(-1))  # a consistent true SE
        inside = (obs[se_idx] >= lo_full[se_idx]) & (obs[se_idx] <= up_full[se_idx])
        if not bool(inside.all()):
            continue
        got = ctl.apply(x, obs.expand(5, -1).clone())[:, idx]
        assert bool((got >= v_lo - 1e-5).all() and (got <= v_up + 1e-5).all())


def test_stealthy_projection_is_feasible() -> None:
    low, high = -torch.ones(2, 6), torch.ones(2, 6) * 2
    ctl = StealthyChannels(torch.arange(12).reshape(2, 6), torch.tensor([12, 13]), low, high,
                           torch.tensor([1.0, 2.0]), torch.tensor([4.0, 9.0]))
    x = ctl.project(torch.randn(50, 2, 6, generator=torch.Generator().manual_seed(1)) * 5)
    assert bool(ctl.feasible(x).all())
    assert bool((x >= low).all() and (x <= high).all())


@pytest.mark.parametrize("forgery", ["fixed", "stealthy", "pilot"])
def test_certificate_at_certified_k_holds_for_the_real_policy(victim: Victim, forgery: str) -> None:
    for target in (1, 3, 2):  # the first victim for which the tiny scheduler lets FGGM certify some box
        tm = ThreatModel(attackers=(0,), victims=(target,), k=0.2, steps=20, forgery=forgery)
        res = craft(victim, tm, "fggm")
        ck = res.certificate["certified_k"]
        if forgery == "stealthy":
            s = AttackSetup.build(victim, tm)
            assert bool(s.controlled.feasible(res.x()[0].unsqueeze(0)).all())  # type: ignore[attr-defined]
        if ck > 0:
            break
    assert ck > 0, f"{forgery}: nothing certified on the tiny scheduler"
    s = AttackSetup.build(victim, replace(tm, k=ck))
    gen = torch.Generator().manual_seed(0)
    # the box with the attackers' entries: points (fixed, stealthy) or, for the pilot, the intervals its
    # unknown true channel maps to (that every real one lands in them is the interval test above)
    lo, up = (t[0] for t in s.box(res.x()))
    obs = lo + (up - lo) * torch.rand(1500, lo.shape[0], generator=gen)
    obs[:500] = lo + (up - lo) * (torch.rand(500, lo.shape[0], generator=gen) < 0.5)   # vertices
    acts = victim.actions(obs.numpy())
    hit = [i for i, a in enumerate(acts) if target in s.codec.index_to_subset(victim.subset_index(a, obs[i].numpy(), s.codec))]
    assert len(obs) > 0 and not hit


def test_oracle_never_does_worse_than_its_start(victim: Victim) -> None:
    tm = ThreatModel(attackers=(0, 1), victims=(3,), k=0.5, steps=5, forgery="pilot")
    res = craft(victim, tm, "mean-pgd")
    setup = AttackSetup.build(victim, tm)
    oracle = OracleAttacker(setup, [res.x()[0]], steps=5)
    net = setup.problem.net
    for seed in range(5):
        obs = setup.problem.stats.sample(1, torch.Generator().manual_seed(seed), setup.problem.phys_lo)[0]
        best = oracle.best(obs.numpy())
        m_best = setup.point_margin(net(setup.point(best.unsqueeze(0), obs.unsqueeze(0))).double())
        m_init = setup.point_margin(net(setup.point(res.x(), obs.unsqueeze(0))).double())
        assert float(m_best) <= float(m_init) + 1e-6  # float32 projection of the start


# ------------------------------------------------------------------------- rank spec (scores head)


def test_rank_spec_is_sound_and_its_margin_matches_the_top_s_readout() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 24), nn.ReLU(), nn.Linear(24, 6))
    spec = RankSpec(6, protected=[1, 4], top=3)
    lo, up = -0.3 * torch.ones(1, 5), 0.3 * torch.ones(1, 5)
    x = lo + (up - lo) * torch.rand(3000, 5)
    y = net(x).detach()
    top = torch.topk(y, 3, dim=1).indices
    excluded = ~((top == 1) | (top == 4)).any(1)
    m = spec.point_margin(spec.network(net)(x).detach().double())
    assert bool(((m < 0) <= excluded).all())  # a negative margin means neither protected output is in the top 3
    assert bool(((m > 0.011) <= ~excluded).all())  # and a clearly positive one that one is
    for shift in np.linspace(-3, 3, 13):
        with torch.no_grad():
            net[2].bias[[0, 2, 3]] += float(shift)
        lb, ub = bounds.crown(spec.network(net), lo, up)
        y = net(x).detach()
        rows = y @ spec.C.T
        assert bool((rows >= lb - 1e-4).all())  # sound bounds of the spec matrix
        if spec.which(lb[0].double(), ub[0].double()) is not None:
            top = torch.topk(y, 3, dim=1).indices
            assert not bool(((top == 1) | (top == 4)).any())
        with torch.no_grad():
            net[2].bias[[0, 2, 3]] -= float(shift)


def test_scores_victim_setup_uses_the_rank_spec() -> None:
    torch.manual_seed(0)
    env = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2)
    view = nn.Sequential(nn.Linear(env.obs_dim, 16), nn.ReLU(), nn.Linear(16, 4))
    v = Victim(view, np.zeros(env.obs_dim), np.ones(env.obs_dim), 1e-8, 10.0, env, head="scores")
    res = craft(v, ThreatModel(attackers=(0, 1), victims=(3,), k=0.05, steps=30), "fggm")
    s = AttackSetup.build(v, res.threat)
    assert isinstance(s.spec, RankSpec) and s.spec.top == 2
    assert res.certificate["needed_above"] == 2 and 0.0 <= res.certificate["certified_share"] <= 1.0
    if res.certificate["proved"]:
        lo, up = s.box(res.x())
        pts = lo + (up - lo) * torch.rand(1000, lo.shape[1])
        top = torch.topk(view(pts), 2, dim=1).indices
        assert not bool((top == 3).any())


def test_input_splitting_proves_what_one_crown_pass_cannot() -> None:
    torch.manual_seed(1)
    view = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 1))
    stats = NormaliserStats(np.zeros(2), np.ones(2), 1e-8, 10.0)
    ctl = BoundedEntries(torch.tensor([0]), torch.tensor([0.0]), torch.tensor([0.0]))
    x = torch.zeros(1, 1)
    with torch.no_grad():  # the exact minimum over the box (one unknown entry in [-1, 1]) on a fine grid
        true_min = float(view(torch.stack([torch.zeros(20001), torch.linspace(-1, 1, 20001)], 1)).min())
    crown_lb = float(BoxProblem(view, stats, ctl, MatrixSpec(torch.ones(1, 1), torch.zeros(1)), 1.0)
                     .bound(x, "crown", torch.float64)[0])
    assert crown_lb < true_min - 1e-3
    d = true_min - 0.1 * (true_min - crown_lb)  # true on the box, beyond one CROWN pass
    p = BoxProblem(view, stats, ctl, MatrixSpec(torch.ones(1, 1), torch.tensor([d])), 1.0)
    assert p.spec.which(*p.bound(x, "crown", torch.float64)) is None
    proved, leaves = prove_split(p, x, max_leaves=64)
    assert proved and 1 < leaves <= 64
    false = BoxProblem(view, stats, ctl, MatrixSpec(torch.ones(1, 1), torch.tensor([true_min + 1e-3])), 1.0)
    assert prove_split(false, x, max_leaves=16) == (False, 16)  # never proves a false claim


# ------------------------------------------------------------------------- coverage, box, statistics


def test_coverage_counts_clipped_entries_and_tight_box_removes_no_real_observation(victim: Victim) -> None:
    s = NormaliserStats(np.zeros(2), np.ones(2), 0.0, 3.0)
    lo, up = s.box(10.0)
    assert coverage(np.array([[50.0, 0.0]]), lo, up, stats=s) == 1.0  # beyond the clip: the policy sees the edge
    assert coverage(np.array([[50.0, 0.0]]), lo, up) == 0.0
    traces = run_conditions(victim, [Condition("none")], 100, seed=4, record_obs=True)
    obs = traces["none"].obs
    M, K = victim.env.num_antennas, victim.env.num_users
    for k in (1.0, 3.0, 10.0):
        lo, up = victim.stats.box(k, np.r_[np.zeros(2 * K), np.full(victim.env.obs_dim - 2 * K, -np.inf)])
        tlo, tup = tight_box(lo, up, M, K, victim.env.episode_length)
        assert np.all(tlo >= lo) and np.all(tup <= up)
        inside = np.all((obs >= lo - 1e-6) & (obs <= up + 1e-6), axis=1)
        inside_t = np.all((obs >= tlo - 1e-4) & (obs <= tup + 1e-4), axis=1)
        assert np.array_equal(inside, inside_t)


def test_nested_bootstrap() -> None:
    rng = np.random.default_rng(0)
    base = 1 + rng.random((3, 20))
    att = base[:, None, :] * rng.uniform(0.2, 0.8, size=(3, 2, 20))
    d, lo, hi = nested_drop(base, att)
    assert lo <= d <= hi and 20 < d < 80
    assert nested_drop(base, att, att) == (0.0, 0.0, 0.0)  # paired: a method against itself
    _, glo, ghi = nested_drop(base, att, resample_groups=True)
    assert ghi - glo >= hi - lo - 1e-9
    assert spread([1.0, 2.0, 9.0]) == pytest.approx({"mean": 4.0, "min": 1.0, "median": 2.0, "max": 9.0,
                                                     "std": float(np.std([1, 2, 9], ddof=1))})
    with pytest.raises(ValueError, match="need base"):
        nested_drop(base, base)


# ------------------------------------------------------------------------- evaluation, sweep, CLI


def test_rows_report_both_sides_and_coverage(victim: Victim) -> None:
    tm = ThreatModel(attackers=(0,), victims=(2,), k=0.3, steps=10, forgery="stealthy")
    res = craft(victim, tm, "eot-pgd")
    sil = craft(victim, tm, "silent")
    rows, _ = evaluate_attacks(victim, tm, {"none": None, "eot-pgd": res, "silent": sil}, ttis=60, seeds=(3,),
                               oracle=True, oracle_inits=[res])
    by = {r["attack"]: r for r in rows}
    assert set(by) == {"none", "eot-pgd", "silent", "oracle-pgd"}
    assert by["silent"]["attacker_throughput"] == 0.0 and by["silent"]["attacker_drop"] == pytest.approx(100.0)
    assert by["silent"]["forgery"] == "silent" and by["eot-pgd"]["forgery"] == "stealthy"
    for r in (by["eot-pgd"], by["silent"]):
        assert 0.0 <= r["coverage"] <= 1.0 and 0.0 <= r["certified_coverage"] <= r["coverage"] + 1e-12
    assert by["none"]["attacker_throughput"] == by["eot-pgd"]["attacker_throughput_no_attack"]


def test_victim_sets_and_attackers() -> None:
    sets = victim_sets(6, "all", pairs=3, seed=1)
    assert [v for v, kind in sets if kind == "single"] == [(u,) for u in range(6)]
    pairs = [v for v, kind in sets if kind == "pair"]
    assert len(pairs) == len(set(pairs)) == 3
    assert victim_sets(6, "4,1", 0) == [((1, 4), "pair")]
    for vs, _ in sets:
        a = attackers_for(6, vs, 2)
        assert len(a) == 2 and not set(a) & set(vs)
    with pytest.raises(ThreatModelError, match="unknown user"):
        victim_sets(6, "7", 0)


def test_sweep_every_victim_resumes_and_writes_the_rows(victim: Victim, tmp_path: Path) -> None:
    settings = SweepSettings(victims="all", attacker_counts=(1,), pairs=1, methods=("silent", "mean-pgd", "fggm"),
                             craft_seeds=2, eval_seeds=(7,), ttis=50, steps=4, restarts=2, oracle_steps=2)
    out = tmp_path / "sweep"
    result = run_sweep(victim, settings, out_dir=out)
    rows = result["rows"]
    assert len(rows) == 5 * 3  # 4 single victims + 1 pair, three methods
    for key in ("method", "attackers", "victims", "forgery", "k", "victim_drop", "ci95", "attacker_drop", "coverage",
                "certified_coverage"):
        assert all(key in r for r in rows), key
    singles = {s["method"]: s for s in result["summary"] if s["victims"] == "single"}
    assert singles["fggm"]["victim_sets"] == 4
    per = [r["victim_drop"] for r in rows if r["method"] == "fggm" and r["kind"] == "single"]
    assert singles["fggm"]["victim_drop"] == pytest.approx(np.mean(per))
    assert singles["fggm"]["victim_drop_min"] == pytest.approx(min(per))
    assert {m["versus"] for m in result["margins"]} == {"mean-pgd"}
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))
    lines = (out / "configs.jsonl").read_text().splitlines()
    again = run_sweep(victim, settings, out_dir=out)  # resumes: nothing recomputed
    assert (out / "configs.jsonl").read_text().splitlines() == lines and again["rows"] == rows
    with pytest.raises(ThreatModelError, match="other settings"):
        run_sweep(victim, replace(settings, ttis=100), out_dir=out)


def test_cli_attack_pilot_and_sweep(sched_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fggm.cli import app

    runner = CliRunner()
    out = tmp_path / "attack.json"
    r = runner.invoke(app, ["attack", "--scheduler", str(sched_dir), "--attackers", "0", "--victims", "2",
                            "--forgery", "pilot", "--steps", "4", "--restarts", "2", "--eval-ttis", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["forgery"] == "pilot" and d["forged"]["0"]["report"] == "pilot"
    for key in ("coverage", "certified_coverage", "attacker_throughput", "victim_throughput"):
        assert d[key] is not None
    assert AttackResult.load(out).reports[0].kind == "pilot"
    r = runner.invoke(app, ["evaluate", "--attack", str(out), "--ttis", "50", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["sweep", "--scheduler", str(sched_dir), "--victims", "all", "--pairs", "0",
                            "--max-attackers", "1", "--methods", "silent,fggm", "--craft-seeds", "1", "--seeds", "1",
                            "--ttis", "50", "--steps", "2", "--out", str(tmp_path / "sw")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert {tuple(row["victims"]) for row in res["rows"]} == {(0,), (1,), (2,), (3,)}
    for args, msg in ((["attack", "--forgery", "bogus"], "forgery must be one of"),
                      (["attack", "--pilot-gain", "1"], "--pilot-gain must be two"),
                      (["sweep", "--forgery", "silent"], "silent is a method"),
                      (["sweep", "--methods", "fggm,magic"], "unknown method"),
                      (["sweep", "--victims", "9"], "unknown user")):
        r = runner.invoke(app, [args[0], "--scheduler", str(sched_dir), *args[1:], "--out", str(tmp_path / "x")])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    r = runner.invoke(app, ["attack", "--scheduler", str(sched_dir), "--method", "magic", "--out", str(tmp_path / "m.json")])
    assert r.exit_code == 2 and "method must be one of" in r.output, r.output
    assert "step" not in r.output and not (tmp_path / "m.json").exists(), "refused before any work starts"


def test_cli_attacks_the_shipped_v2_scores_victim_through_the_rank_spec(tmp_path: Path) -> None:
    """``fggm attack --scheduler data/schedulers/smart16-scores`` (refused before issue 13): the
    scores head is attacked through the rank specification, the certificate counts non-victims
    certified above the victim, and the real-TTI check measures both sides."""
    from typer.testing import CliRunner

    from fggm.cli import app

    sched = Path(__file__).resolve().parents[2] / "data" / "schedulers" / "smart16-scores"
    if not (sched / "manifest.json").is_file():
        pytest.skip("the shipped v2 scores checkpoint is absent")
    out = tmp_path / "attack.json"
    r = CliRunner().invoke(app, ["attack", "--scheduler", str(sched), "--attackers", "0,1", "--victims", "2",
                                 "--steps", "2", "--restarts", "1", "--eval-ttis", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    cert = d["certificate"]
    assert cert["needed_above"] == 4 and 0 <= cert["certified_above"] <= 15
    assert cert["proved"] == (cert["alternative"] is not None)
    assert d["forgery"] == "fixed" and 0.0 <= d["certified_coverage"] <= d["coverage"] <= 1.0
    assert d["victim_throughput_no_attack"] > 0 and d["attacker_throughput_no_attack"] > 0
    res = AttackResult.load(out)
    setup = AttackSetup.build(Victim.load(sched), res.threat)
    assert isinstance(setup.spec, RankSpec) and setup.spec.protected == [2]
