"""``fggm`` on damaged, crafted and wrong input: one line, exit 2, nothing written, no code run."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner

from fggm.cli import app, results_table
from fggm.mimo.safe_load import CheckpointError, load_sac, load_vecnormalize

runner = CliRunner()
SHIPPED = Path("data/schedulers/smart16")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "ckpt"
    res = runner.invoke(app, ["train", "--config", "configs/tiny.yaml", "--out", str(out), "--steps", "120",
                              "--seed", "2", "--no-eval"])
    assert res.exit_code == 0, res.output
    return out


def _one_line(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    return lines[0]


class _Boom:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy(ckpt: Path, dst: Path) -> Path:
    shutil.copytree(ckpt, dst)
    return dst


# --------------------------------------------------------------------------- pickles


def test_vecnormalize_pickle_calling_os_system_is_refused(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(CheckpointError, match="refusing to unpickle .*system"):
        load_vecnormalize(evil)
    assert not marker.exists()
    # the real files load, with the very statistics the standard unpickler reads
    for path in [ckpt / "vecnormalize.pkl", *([SHIPPED / "vecnormalize.pkl"] if SHIPPED.is_dir() else [])]:
        safe = load_vecnormalize(path)
        with open(path, "rb") as fh:
            plain = pickle.load(fh)
        np.testing.assert_array_equal(safe.obs_rms.mean, plain.obs_rms.mean)
        np.testing.assert_array_equal(safe.obs_rms.var, plain.obs_rms.var)
        assert safe.clip_obs == plain.clip_obs and safe.epsilon == plain.epsilon


def test_evaluate_attack_naming_a_crafted_scheduler_runs_no_code(ckpt: Path, tmp_path: Path) -> None:
    """A crafted attack.json names a folder whose vecnormalize.pkl calls os.system (it ran on main)."""
    attack = tmp_path / "attack.json"
    r = runner.invoke(app, ["attack", "--scheduler", str(ckpt), "--attackers", "0", "--victims", "1", "--k", "0.3",
                            "--steps", "2", "--restarts", "1", "--out", str(attack)])
    assert r.exit_code == 0, r.output
    evil = _copy(ckpt, tmp_path / "evil")
    marker = tmp_path / "PWNED"
    (evil / "vecnormalize.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    d = json.loads(attack.read_text())
    d["scheduler"] = str(evil)
    attack.write_text(json.dumps(d))
    msg = _one_line(["evaluate", "--attack", str(attack), "--ttis", "5", "--out", str(tmp_path / "ev")])
    assert "refusing to unpickle" in msg
    assert not marker.exists() and not (tmp_path / "ev").exists()


def test_sac_zip_pickled_entries_are_never_unpickled(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    import cloudpickle

    payload = base64.b64encode(cloudpickle.dumps(_Boom(marker))).decode()

    def rewrite(dst: Path, change) -> Path:
        with zipfile.ZipFile(ckpt / "sac.zip") as zin, zipfile.ZipFile(dst, "w") as zout:
            for item in zin.infolist():
                blob = zin.read(item.filename)
                if item.filename == "data":
                    data = json.loads(blob)
                    change(data)
                    blob = json.dumps(data).encode()
                zout.writestr(item, blob)
        return dst

    # a crafted policy_class: replaced by SACPolicy, so the model loads and nothing runs
    crafted = _copy(ckpt, tmp_path / "crafted")
    rewrite(crafted / "sac.zip.new", lambda d: d["policy_class"].update({":serialized:": payload}))
    (crafted / "sac.zip.new").replace(crafted / "sac.zip")
    r = runner.invoke(app, ["evaluate", "--scheduler", str(crafted), "--ttis", "5", "--out", str(tmp_path / "e1")])
    assert r.exit_code == 0, r.output
    assert not marker.exists()
    # an extra pickled value nobody can replace safely: refused
    extra = _copy(ckpt, tmp_path / "extra")
    rewrite(extra / "sac.zip.new", lambda d: d.update(evil={":type:": "x", ":serialized:": payload}))
    (extra / "sac.zip.new").replace(extra / "sac.zip")
    msg = _one_line(["evaluate", "--scheduler", str(extra), "--ttis", "5", "--out", str(tmp_path / "e2")])
    assert "evil" in msg and "running code" in msg
    assert not marker.exists() and not (tmp_path / "e2").exists()


def test_safe_loaders_give_the_same_policy(ckpt: Path) -> None:
    import torch
    from stable_baselines3 import SAC

    from fggm.mimo.policy import extract_policy, load_attacker_view

    view = load_attacker_view(ckpt)
    with open(ckpt / "vecnormalize.pkl", "rb") as fh:
        plain = extract_policy(SAC.load(ckpt / "sac.zip", device="cpu"), pickle.load(fh))
    x = torch.randn(7, view[2].in_features)
    torch.testing.assert_close(view(x), plain(x), atol=0, rtol=0)
    model = load_sac(ckpt / "sac.zip", plain_space := SAC.load(ckpt / "sac.zip").observation_space,
                     SAC.load(ckpt / "sac.zip").action_space)
    assert model.observation_space == plain_space


# --------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("which,how", [("vecnormalize.pkl", "empty"), ("vecnormalize.pkl", "truncated"),
                                       ("sac.zip", "empty"), ("sac.zip", "truncated"),
                                       ("manifest.json", "truncated")])
def test_damaged_checkpoint_files(ckpt: Path, tmp_path: Path, which: str, how: str) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    blob = (bad / which).read_bytes()
    (bad / which).write_bytes(b"" if how == "empty" else blob[: len(blob) // 2])
    msg = _one_line(["evaluate", "--scheduler", str(bad), "--ttis", "5", "--out", str(tmp_path / "ev")])
    assert which in msg or "manifest" in msg
    msg = _one_line(["attack", "--scheduler", str(bad), "--out", str(tmp_path / "a.json"), "--steps", "1"])
    assert not (tmp_path / "ev").exists() and not (tmp_path / "a.json").exists()


# --------------------------------------------------------------------------- outputs and configs


def test_out_that_is_a_file_or_under_a_file(ckpt: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cases = [
        ["train", "--config", "configs/tiny.yaml", "--steps", "5", "--no-eval", "--out", str(afile)],
        ["evaluate", "--scheduler", "greedy", "--ttis", "3", "--out", str(afile)],
        ["evaluate", "--scheduler", "greedy", "--ttis", "3", "--out", str(afile / "sub")],
        ["attack", "--scheduler", str(ckpt), "--steps", "1", "--out", str(afile / "a.json")],
        ["attack", "--scheduler", str(ckpt), "--steps", "1", "--out", str(tmp_path)],
        ["sweep", "--scheduler", str(ckpt), "--out", str(afile)],
        ["demo", "--scheduler", str(ckpt), "--out", str(afile)],
    ]
    for args in cases:
        msg = _one_line(args)
        assert "--out" in msg, (args, msg)
    assert afile.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "not writable" in _one_line(["evaluate", "--scheduler", "greedy", "--ttis", "3", "--out", str(ro / "e")])
        assert "not writable" in _one_line(["train", "--config", "configs/tiny.yaml", "--out", str(ro)])
    finally:
        ro.chmod(0o755)


def test_empty_config_is_refused(tmp_path: Path) -> None:
    """An empty config used to train the full default run silently."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = tmp_path / "run"
    assert "is empty" in _one_line(["train", "--config", str(empty), "--out", str(out), "--steps", "5"])
    assert not out.exists()
    assert "is empty" in _one_line(["evaluate", "--scheduler", "greedy", "--config", str(empty), "--ttis", "3"])


@pytest.mark.parametrize("value", [16.5, "16", True])
def test_non_integer_user_count(tmp_path: Path, value) -> None:
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["env"]["num_users"] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert "env.num_users must be an integer" in _one_line(["train", "--config", str(path), "--out", str(tmp_path / "o")])
    assert "env.num_users must be an integer" in _one_line(
        ["evaluate", "--scheduler", "greedy", "--config", str(path), "--ttis", "3", "--out", str(tmp_path / "e")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- attack files


def test_relative_scheduler_path_is_resolved_against_the_attack_file(ckpt: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """attack.json written with a relative --scheduler evaluates from any working directory."""
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    shutil.copytree(ckpt, work / "scheds" / "tiny")
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["attack", "--scheduler", "scheds/tiny", "--attackers", "0", "--victims", "1", "--k", "0.3",
                            "--steps", "2", "--restarts", "1", "--out", "runs/attack.json"])
    assert r.exit_code == 0, r.output
    assert json.loads((work / "runs" / "attack.json").read_text())["scheduler"] == os.path.join("..", "scheds", "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = runner.invoke(app, ["evaluate", "--attack", str(work / "runs" / "attack.json"), "--ttis", "5", "--out", "ev"])
    assert r.exit_code == 0, r.output
    # a file written before (path relative to the crafting directory) still works from there ...
    legacy = work / "runs" / "legacy.json"
    d = json.loads((work / "runs" / "attack.json").read_text())
    legacy.write_text(json.dumps(dict(d, scheduler="scheds/tiny")))
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["evaluate", "--attack", "runs/legacy.json", "--ttis", "5", "--out", "ev2"])
    assert r.exit_code == 0, r.output
    # ... and elsewhere it says where it looked (not a wrong "missing sac.zip")
    monkeypatch.chdir(elsewhere)
    msg = _one_line(["evaluate", "--attack", str(legacy), "--ttis", "5", "--out", "ev3"])
    assert "scheds/tiny" in msg and "pass --scheduler" in msg and "sac.zip" not in msg


# --------------------------------------------------------------------------- help and tables


def test_units_are_not_eaten_by_rich_markup() -> None:
    console = Console(record=True, width=200)
    console.print(results_table([{"scheduler": "pf", "mean_reward": 2.0, "sum_se": 30.0, "jain": 0.9}]))
    assert "sum SE [b/s/Hz]" in console.export_text()


def test_every_option_has_help_text() -> None:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")  # typer may vendor its own click: duck-type the classes

    def walk(cmd, path: str):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, cmd

    seen = 0
    for path, cmd in walk(group, "fggm"):
        assert (cmd.help or "").strip(), f"{path} has no help"
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option" and p.name != "help":
                assert (p.help or "").strip(), f"{path} {p.opts[0]} has no help text"
                seen += 1
    assert seen > 20
