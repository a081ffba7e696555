"""The `sgm` command surface: every option has help text, every command takes --threads, and tables are
printed whole when piped (rich would otherwise assume 80 columns and cut names)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from safety_glasses.cli import app

runner = CliRunner()


def _leaves(group: object, prefix: str = "sgm") -> list[tuple[str, object]]:
    commands = getattr(group, "commands", None)  # a group (typer ships its own click)
    if commands:
        out = []
        for name, cmd in commands.items():
            out += _leaves(cmd, f"{prefix} {name}")
        return out
    return [(prefix, group)]


def _options(cmd: object) -> list[object]:
    return [p for p in cmd.params if getattr(p, "param_type_name", "") == "option"]


def test_every_option_has_help_text_and_every_command_takes_threads() -> None:
    commands = _leaves(typer.main.get_command(app))
    assert {"sgm fit", "sgm eval", "sgm demo", "sgm generate", "sgm export", "sgm inspect", "sgm compare",
            "sgm organism train", "sgm organism splits"} <= {n for n, _ in commands}
    missing = [f"{name} {p.opts[0]}" for name, cmd in commands for p in _options(cmd) if not (p.help or "").strip()]
    assert missing == []
    without_threads = [name for name, cmd in commands if not any("--threads" in p.opts for p in _options(cmd))]
    assert without_threads == []


def test_tables_are_whole_when_piped(tmp_path: Path) -> None:
    run = tmp_path / ("a-run-folder-with-a-long-descriptive-name-" + "x" * 60)
    run.mkdir()
    results = {"by_defense": {"aura+adashield-s+self-reminder": {
        "harmful_rate": {"overall": 0.25, "ci95": [0.1, 0.4], "by_condition": {"standard": {"rate": 0.25}},
                         "judge_id": "profanity"},
        "over_refusal": {"rate": 0.0}, "vqa_accuracy": {"rate": 0.5}, "perplexity": 3.2}}}
    (run / "results.json").write_text(json.dumps(results))
    res = runner.invoke(app, ["compare", str(run), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert run.name in res.output and "aura+adashield-s+self-reminder" in res.output
    assert "…" not in res.output


def test_usage_errors_are_one_line_and_exit_2(capsys) -> None:
    import pytest

    from safety_glasses._cli import run_app

    for args, start in ((["fit", "--threads", "x"], "error: Invalid value for '--threads'"),
                        (["fit", "--nope"], "error: No such option: --nope"),
                        (["fitt"], "error: No such command 'fitt'")):
        with pytest.raises(SystemExit) as exit_info:
            run_app(app, args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(start) and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        run_app(app, ["fit", "--help"])
    assert exit_info.value.code == 0 and "--concepts" in capsys.readouterr().out
