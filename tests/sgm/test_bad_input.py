"""Bad input on the `sgm` command line: one `error:` line, exit code 2, no traceback, checked before the
expensive work; invalid glasses are refused on load and on fit; runs whose replies are mostly empty are flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from safety_glasses.cli import app
from safety_glasses.glasses import Glasses, GlassesConfig, GlassesError
from safety_glasses.models import UnitSite

FIX = Path(__file__).parent / "fixtures" / "eval"
runner = CliRunner()


def _one_error_line(res: Any, needle: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safety_glasses.concepts import ConceptSet
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.testing import tiny_concept_rows, tiny_vlm

    root = tmp_path_factory.mktemp("bad")
    model, proc = tiny_vlm("llava", seed=0)
    model.save_pretrained(root / "model")
    proc.save_pretrained(root / "model")
    rows = tiny_concept_rows(8)
    fit_glasses(model, proc, rows, progress=False).save_pretrained(root / "glasses")
    ConceptSet.from_rows(rows).to_jsonl(root / "concepts.jsonl")
    (root / "a-file").write_text("not a folder")
    return {"root": root, "model": root / "model", "glasses": root / "glasses", "concepts": root / "concepts.jsonl",
            "file": root / "a-file"}


def _copy_glasses(src: Path, dst: Path, change: Any = None) -> Path:
    import shutil

    shutil.copytree(src, dst)
    if change is not None:
        tensors = load_file(str(dst / "glasses.safetensors"))
        change(tensors)
        save_file(tensors, str(dst / "glasses.safetensors"))
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_invalid_alphas_are_refused_on_load_and_by_the_cli(saved: dict[str, Path], tmp_path: Path,
                                                           value: float) -> None:
    def spoil(tensors: dict[str, torch.Tensor]) -> None:
        key = next(k for k in tensors if k.startswith("alpha."))
        tensors[key][3] = value

    bad = _copy_glasses(saved["glasses"], tmp_path / "g", spoil)
    with pytest.raises(GlassesError, match=r"alpha of .*\[3\] is .*: alphas must be finite and >= 0"):
        Glasses.from_pretrained(bad)
    _one_error_line(runner.invoke(app, ["inspect", str(bad)]), "alphas must be finite")
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "never-loaded"), "--bench", str(FIX / "bench.jsonl"), "--out",
                              str(tmp_path / "out"), "--glasses", str(bad), "--defense", "sgm"])
    _one_error_line(res, "alphas must be finite")
    assert not (tmp_path / "out").exists()


def test_glasses_constructor_refuses_invalid_alphas() -> None:
    site = UnitSite("m.down_proj", 0, "act", 2, "input")
    with pytest.raises(GlassesError, match="finite"):
        Glasses(GlassesConfig(strategy="aura", sites=[site]), {"m.down_proj": torch.tensor([float("nan"), 1.0])})
    with pytest.raises(GlassesError, match="AUROC"):
        Glasses(GlassesConfig(strategy="aura", sites=[site]), {"m.down_proj": torch.ones(2)},
                {"m.down_proj": torch.tensor([0.5, 1.5])})
    g = Glasses(GlassesConfig(strategy="aura", sites=[site], clamp=False), {"m.down_proj": torch.tensor([1.3, 0.0])})
    assert g.n_experts == 2  # amplifying alphas are valid


def test_truncated_or_corrupt_glasses_files(saved: dict[str, Path], tmp_path: Path) -> None:
    cut = _copy_glasses(saved["glasses"], tmp_path / "cut")
    data = (cut / "glasses.safetensors").read_bytes()
    (cut / "glasses.safetensors").write_bytes(data[: len(data) // 2])
    for args in (["inspect", str(cut)],
                 ["generate", "--model", str(saved["model"]), "--prompt", "hi", "--glasses", str(cut)],
                 ["export", "--model", str(saved["model"]), "--glasses", str(cut), "--out", str(tmp_path / "x")],
                 ["eval", "--model", str(saved["model"]), "--bench", str(FIX / "bench.jsonl"), "--out",
                  str(tmp_path / "e"), "--glasses", str(cut)]):
        _one_error_line(runner.invoke(app, args), "truncated or corrupt")
    empty = _copy_glasses(saved["glasses"], tmp_path / "empty")
    (empty / "glasses.safetensors").write_bytes(b"")
    _one_error_line(runner.invoke(app, ["inspect", str(empty)]), "truncated or corrupt")
    broken = _copy_glasses(saved["glasses"], tmp_path / "json")
    (broken / "glasses_config.json").write_text('{"strategy": "aura", "si')
    _one_error_line(runner.invoke(app, ["inspect", str(broken)]), "not valid JSON")
    assert not (tmp_path / "x").exists() and not (tmp_path / "e").exists()


def test_truncated_model_weights(saved: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = shutil.copytree(saved["model"], tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    res = runner.invoke(app, ["fit", "--model", str(model), "--concepts", str(saved["concepts"]), "--out",
                              str(tmp_path / "g")])
    _one_error_line(res, "cannot load a model")
    assert not (tmp_path / "g").exists()
    res = runner.invoke(app, ["generate", "--model", str(model), "--prompt", "hi"])
    _one_error_line(res, "cannot load a model")


@pytest.mark.parametrize("command", ["fit", "eval", "export", "demo", "organism-train"])
def test_out_that_is_a_file_or_under_a_file(saved: dict[str, Path], command: str) -> None:
    for out, needle in ((saved["file"], "is a file, not a folder"), (saved["file"] / "sub", "is a file")):
        args = {
            "fit": ["fit", "--model", str(saved["model"]), "--concepts", str(saved["concepts"])],
            "eval": ["eval", "--model", str(saved["model"]), "--bench", str(FIX / "bench.jsonl")],
            "export": ["export", "--model", str(saved["model"]), "--glasses", str(saved["glasses"])],
            "demo": ["demo", "--quick"],
            "organism-train": ["organism", "train", "--quick"],
        }[command]
        _one_error_line(runner.invoke(app, [*args, "--out", str(out)]), needle)


def test_export_into_a_foreign_folder_is_refused_before_work(saved: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["export", "--model", str(saved["model"]), "--glasses", str(saved["glasses"]),
                              "--out", str(tmp_path / "busy")])
    _one_error_line(res, "is not an export of this project")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    ok = runner.invoke(app, ["export", "--model", str(saved["model"]), "--glasses", str(saved["glasses"]),
                             "--out", str(tmp_path / "new")])
    assert ok.exit_code == 0 and not list(tmp_path.glob(".new.partial-*"))
    again = runner.invoke(app, ["export", "--model", str(saved["model"]), "--glasses", str(saved["glasses"]),
                                "--out", str(tmp_path / "new")])
    assert again.exit_code == 0  # a previous export is replaced


def test_a_run_whose_replies_are_mostly_empty_is_flagged(saved: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    mute = tmp_path / "mute"
    model = AutoModelForImageTextToText.from_pretrained(saved["model"])
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()  # every logit 0: the pad token, decoded as ""
    model.save_pretrained(mute)
    import shutil

    for f in saved["model"].iterdir():
        if not (mute / f.name).exists():
            shutil.copy(f, mute / f.name)
    res = runner.invoke(app, ["eval", "--model", str(mute), "--bench", str(FIX / "bench.jsonl"), "--out",
                              str(tmp_path / "run"), "--max-new-tokens", "3", "--n-boot", "20", "--no-progress",
                              "--no-perplexity", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "warning: none: 100% of 5 replies are empty" in res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["by_defense"]["none"]["empty_replies"] == 1.0
    assert any("replies are empty" in w for w in results["warnings"])
    assert "replies are empty" in (tmp_path / "run" / "report.md").read_text()


def test_read_only_out_is_refused_before_the_model_loads(saved: dict[str, Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out in (locked, locked / "new"):
            res = runner.invoke(app, ["fit", "--model", str(tmp_path / "never-loaded"), "--concepts", str(saved["concepts"]),
                                      "--out", str(out)])
            _one_error_line(res, "is not writable")
    finally:
        locked.chmod(0o755)
