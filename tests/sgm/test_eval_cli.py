"""End to end: ``sgm eval`` on a tiny saved model with glasses, then ``sgm compare``; bad input gives one
``error:`` line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safety_glasses.cli import app

FIX = Path(__file__).parent / "fixtures" / "eval"
runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.testing import tiny_concept_rows, tiny_vlm

    root = tmp_path_factory.mktemp("cli")
    model, proc = tiny_vlm("llava", seed=0)
    model.save_pretrained(root / "model")
    proc.save_pretrained(root / "model")
    fit_glasses(model, proc, tiny_concept_rows(8), progress=False).save_pretrained(root / "glasses")
    return root / "model", root / "glasses"


def _eval(model: Path, glasses: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["eval", "--model", str(model), "--bench", str(FIX / "bench.jsonl"), "--out", str(out),
                               "--glasses", str(glasses), "--max-new-tokens", "4", "--n-boot", "100", "--no-progress",
                               *extra])


def test_eval_end_to_end_and_compare(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, glasses = saved
    out = tmp_path / "run"
    res = _eval(model, glasses, out, "--defense", "sgm", "--defense", "sgm+adashield-s",
                "--conditions", "standard,typographic", "--limit", "3", "--judge", "profanity", "--judge", "refusal")
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    hr = results["metrics"]["harmful_rate"]
    assert {"overall", "ci95", "by_condition", "by_category"} <= set(hr)
    assert set(hr["by_condition"]) == {"standard", "typographic"}
    assert {"over_refusal", "vqa_accuracy", "perplexity", "toxicity"} <= set(results["metrics"])
    assert list(results["by_defense"]) == ["none", "aura", "aura+adashield-s"]
    assert results["primary_defense"] == "aura" and results["versions"]["torch"]
    assert results["config"]["judges"] == ["profanity", "refusal"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * (3 + 3)  # 3 rows standard + 3 derived typographic, x 3 configurations
    rates = {(r["defense"], r["condition"]): r["harmful_rate"] for r in results["rows"]}
    for (d, c), rate in rates.items():
        part = [s for s in samples if s["defense"] == d and s["condition"] == c and s["kind"] == "harmful"]
        assert rate == pytest.approx(sum(s["verdicts"]["profanity"]["label"] == "unsafe" for s in part) / len(part))
    assert (out / "report.md").read_text().startswith("# MM-TOXIC-QA report")
    assert (out / "harmful_rate_by_condition.png").stat().st_size > 1000
    assert "harmful rate" in res.output

    again = _eval(model, glasses, out, "--defense", "sgm", "--defense", "sgm+adashield-s",
                  "--conditions", "standard,typographic", "--limit", "3", "--judge", "profanity", "--judge", "refusal")
    assert again.exit_code == 0 and len((out / "samples.jsonl").read_text().splitlines()) == len(samples)

    cmp = runner.invoke(app, ["compare", str(out), str(out / "results.json"), "--out", str(tmp_path / "c.png")])
    assert cmp.exit_code == 0, cmp.output
    assert "harmful rate % by run and defence" in cmp.output and (tmp_path / "c.png").stat().st_size > 1000
    from safety_glasses.eval.report import compare_rows

    rows = compare_rows([out, out / "results.json"])
    assert [r["defense"] for r in rows] == ["none", "aura", "aura+adashield-s"] * 2
    assert rows[1]["harmful_rate"] == results["by_defense"]["aura"]["harmful_rate"]["overall"]


@pytest.mark.parametrize(("args", "message"), [
    (["--bench", "/no/such/bench.jsonl"], "error: benchmark path not found"),
    (["--judge", "nope"], "error: unknown judge 'nope'"),
    (["--defense", "sgm", "--glasses", "/no/glasses"], "error: not a glasses folder"),
    (["--conditions", "weird"], "error: unknown condition 'weird'"),
    (["--defense", "sgm"], "error: defence 'sgm' needs --glasses DIR"),
])
def test_bad_input_is_one_error_line(saved: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    model, _ = saved
    base = {"--model": str(model), "--bench": str(FIX / "bench.jsonl"), "--out": str(tmp_path / "o")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv] + ["--no-progress", "--max-new-tokens", "2"]
    res = runner.invoke(app, ["eval", *flat])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith(message) and sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in res.output


def test_compare_rejects_a_folder_without_results(tmp_path: Path) -> None:
    res = runner.invoke(app, ["compare", str(tmp_path)])
    assert res.exit_code == 2 and "error: no results.json" in res.output


def test_eval_greedy_vqa_and_threads_options(saved: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    model, glasses = saved
    before = torch.get_num_threads()
    try:
        res = _eval(model, glasses, tmp_path / "g", "--defense", "sgm", "--sample", "--num-samples", "2",
                    "--greedy-vqa", "--threads", "1")
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    samples = [json.loads(line) for line in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    vqa = [s for s in samples if s["kind"] == "vqa"]
    assert vqa and all(s["sample"] == 0 and not s["sampling"]["do_sample"] for s in vqa)
    assert {s["sample"] for s in samples if s["kind"] != "vqa"} == {0, 1}
    assert json.loads((tmp_path / "g" / "results.json").read_text())["config"]["greedy_kinds"] == ["vqa"]
    bad = _eval(model, glasses, tmp_path / "h", "--threads", "0")
    assert bad.exit_code == 2 and "error:" in bad.output


def test_rerun_into_a_folder_of_another_model_or_glasses_is_refused(saved: tuple[Path, Path], tmp_path: Path) -> None:
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.testing import tiny_concept_rows, tiny_vlm

    import shutil

    model, glasses = shutil.copytree(saved[0], tmp_path / "model"), saved[1]
    out = tmp_path / "run"
    args = ("--defense", "sgm", "--conditions", "standard", "--limit", "2")
    assert _eval(model, glasses, out, *args).exit_code == 0
    assert _eval(model, glasses, out, *args).exit_code == 0  # same run: resumes, nothing new
    other, proc = tiny_vlm("llava", seed=1)  # same architecture, other weights, saved to the same path
    other.save_pretrained(model)
    res = _eval(model, glasses, out, *args)
    assert res.exit_code == 2 and "weights_digest differs" in res.output
    refit = tmp_path / "glasses"
    fit_glasses(other, proc, tiny_concept_rows(8, seed=3), progress=False).save_pretrained(refit)
    res = _eval(model, refit, tmp_path / "run2", *args)
    assert res.exit_code == 0, res.output
    res = _eval(model, glasses, tmp_path / "run2", *args)
    assert res.exit_code == 2 and "defenses differs" in res.output
