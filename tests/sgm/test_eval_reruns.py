"""Reruns and integrity of `sgm eval`: an identical rerun with neuron baselines resumes (the fingerprint holds
content, not provenance), a killed run with a baseline resumes, stacked glasses are named automatically, and
glasses that do not fit the model fail before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safety_glasses.cli import app

FIX = Path(__file__).parent / "fixtures" / "eval"
runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safety_glasses.concepts import ConceptSet
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.testing import tiny_concept_rows, tiny_vlm

    root = tmp_path_factory.mktemp("reruns")
    model, proc = tiny_vlm("llava", seed=0)
    model.save_pretrained(root / "model")
    proc.save_pretrained(root / "model")
    rows = tiny_concept_rows(8)
    fit_glasses(model, proc, rows, progress=False).save_pretrained(root / "g1")
    fit_glasses(model, proc, tiny_concept_rows(8, seed=5), progress=False).save_pretrained(root / "g2")
    ConceptSet.from_rows(rows).to_jsonl(root / "concepts.jsonl")
    other, other_proc = tiny_vlm("gpt2", seed=0)  # another architecture: its glasses do not fit llava
    fit_glasses(other, other_proc, tiny_concept_rows(8, with_images=False), progress=False).save_pretrained(
        root / "gpt2-glasses")
    return {"model": root / "model", "g1": root / "g1", "g2": root / "g2", "concepts": root / "concepts.jsonl",
            "bad": root / "gpt2-glasses"}


def _eval(saved: dict[str, Path], out: Path, *extra: str, glasses: str = "g1") -> Any:
    return runner.invoke(app, ["eval", "--model", str(saved["model"]), "--bench", str(FIX / "bench.jsonl"),
                               "--out", str(out), "--glasses", str(saved[glasses]), "--max-new-tokens", "3",
                               "--n-boot", "20", "--no-progress", "--no-perplexity", "--threads", "1", *extra])


BASELINES = ("--defense", "sgm", "--defense", "random", "--defense", "det0", "--defense", "aura-text")


def _lines(out: Path) -> list[str]:
    return (out / "samples.jsonl").read_text().splitlines()


def test_identical_rerun_with_neuron_baselines_resumes(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _eval(saved, out, *BASELINES, "--concepts", str(saved["concepts"]))
    assert first.exit_code == 0, first.output
    n = len(_lines(out))
    assert n == 5 * 5  # 5 rows x (none, aura, random, det0, aura-text)
    again = _eval(saved, out, *BASELINES, "--concepts", str(saved["concepts"]))
    assert again.exit_code == 0, again.output
    assert len(_lines(out)) == n
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["defenses"]["random"][0]["source"].startswith("cached:")  # provenance is kept


def test_killed_run_with_a_baseline_resumes(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _eval(saved, out, "--defense", "sgm", "--defense", "damp").exit_code == 0
    full = _lines(out)
    (out / "samples.jsonl").write_text("\n".join(full[:6]) + "\n" + full[6][:20])  # killed mid-line
    res = _eval(saved, out, "--defense", "sgm", "--defense", "damp")
    assert res.exit_code == 0, res.output
    resumed = _lines(out)
    assert len(resumed) == len(full) and len({json.loads(x)["key"] for x in resumed}) == len(full)
    assert resumed[:6] == full[:6]


def test_stacked_glasses_are_named_automatically(saved: dict[str, Path], tmp_path: Path) -> None:
    twin = tmp_path / "other" / "g1"
    shutil.copytree(saved["g2"], twin)  # a second folder named g1
    spec = f"glasses:{saved['g1']}+glasses:{saved['g2']}+glasses:{twin}"
    res = _eval(saved, tmp_path / "run", "--defense", spec)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["by_defense"]) == ["none", "aura:g1+aura:g2+aura:g1#2"]
    named = _eval(saved, tmp_path / "run2", "--defense", f"glasses:{saved['g1']},name=a+glasses:{saved['g2']},name=b")
    assert named.exit_code == 0 and "a+b" in json.loads((tmp_path / "run2" / "results.json").read_text())["by_defense"]


def test_glasses_that_do_not_fit_fail_before_anything_is_written(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _eval(saved, out, "--defense", "sgm", glasses="bad")
    assert res.exit_code == 2 and "do not fit" in res.output
    assert not out.exists()  # no undefended baseline, no run.json: the corrected rerun is not refused
    res = _eval(saved, out, "--defense", f"glasses:{saved['bad']}")  # a defence's own glasses
    assert res.exit_code == 2 and "do not fit" in res.output
    assert not (out / "run.json").exists() and not (out / "samples.jsonl").exists()
    assert _eval(saved, out, "--defense", "sgm").exit_code == 0
