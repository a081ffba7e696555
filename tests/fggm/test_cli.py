"""The ``fggm`` command line: train and evaluate end to end on the tiny config, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fggm.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    res = runner.invoke(app, ["train", "--config", "configs/tiny.yaml", "--out", str(out), "--steps", "200", "--seed", "1", "--no-eval"])
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_checkpoint(trained: Path) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["steps"] == 200 and manifest["seed"] == 1 and manifest["complete"] is True
    assert (trained / "sac.zip").is_file() and (trained / "vecnormalize.pkl").is_file()


def test_evaluate_checkpoint_and_baselines(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--scheduler", str(trained), "--scheduler", "round-robin", "--scheduler", "exhaustive",
            "--ttis", "60", "--seed", "4", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["scheduler"] for r in rows] == ["sac:ckpt", "round-robin", "exhaustive"]
    for r in rows:
        assert r["ttis"] == 60 and r["seed"] == 4 and len(r["per_user_throughput"]) == 4
    assert (out / "evaluation.png").stat().st_size > 1000
    assert "exhaustive" in res.output and "100.0%" in res.output


def _bad(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(trained: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["env"]["max_scheduled"] = 9
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert "exceeds the number of users" in _bad(["train", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert "unknown scheduler" in _bad(["evaluate", "--scheduler", "magic", "--ttis", "5"])
    big = yaml.safe_load(open("configs/tiny.yaml"))
    big["env"].update(num_users=6, num_antennas=6)
    big_path = tmp_path / "big.yaml"
    big_path.write_text(yaml.safe_dump(big))
    msg = _bad(["evaluate", "--scheduler", str(trained), "--config", str(big_path), "--ttis", "5", "--out", str(tmp_path / "e")])
    assert "num_antennas=4" in msg or "num_users=4" in msg
    assert "--ttis" in _bad(["evaluate", "--scheduler", "pf", "--ttis", "0"])


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "train" in res.output and "evaluate" in res.output


def test_usage_errors_are_one_line_and_exit_2(capsys) -> None:
    import pytest

    from fggm.cli import main

    for args, start in ((["evaluate", "--ttis", "abc"], "error: Invalid value for '--ttis'"),
                        (["knapsack", "attack", "--nope"], "error: No such option: --nope")):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(start) and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0 and "--ttis" in capsys.readouterr().out
