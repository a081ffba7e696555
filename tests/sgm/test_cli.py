"""The ``sgm`` command line on a tiny Llava saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from safety_glasses import ConceptSet, Glasses
from safety_glasses.cli import app
from safety_glasses.generation import to_model_inputs
from safety_glasses.inputs import encode_rows
from safety_glasses.testing import tiny_image, tiny_vlm

from .helpers import plant_expert, planted_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model, proc = tiny_vlm("llava", seed=0)
    rows = planted_rows(16, seed=8)
    plant_expert(model, proc, rows, unit=5)
    model.save_pretrained(d / "model")
    proc.save_pretrained(d / "model")
    ConceptSet.from_rows(rows).to_jsonl(d / "concepts.jsonl", image_dir=d / "imgs")
    tiny_image(3).save(d / "img.png")
    return d


def _fit(workdir):
    out = workdir / "glasses"
    if not out.exists():
        r = runner.invoke(app, ["fit", "--model", str(workdir / "model"), "--concepts",
                                str(workdir / "concepts.jsonl"), "--out", str(out), "--batch-size", "4"])
        assert r.exit_code == 0, r.output
        assert "experts=" in r.output
    return out


def test_fit_and_inspect(workdir):
    out = _fit(workdir)
    g = Glasses.from_pretrained(out)
    assert float(g.alphas[g.sites[0].module_name][5]) < 0.05
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "auroc_by_layer.png").stat().st_size > 1000
    assert "mlp.down_proj" in r.output and "model.language_model.layers" in r.output


def test_generate_compare(workdir):
    out = _fit(workdir)
    r = runner.invoke(app, ["generate", "--model", str(workdir / "model"), "--glasses", str(out), "--image",
                            str(workdir / "img.png"), "--prompt", "describe", "--max-new-tokens", "4", "--compare"])
    assert r.exit_code == 0, r.output
    assert "without glasses" in r.output and "with glasses" in r.output


def test_export_merged_loads_with_plain_transformers(workdir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = _fit(workdir)
    r = runner.invoke(app, ["export", "--model", str(workdir / "model"), "--glasses", str(out),
                            "--out", str(workdir / "merged"), "--format", "merged"])
    assert r.exit_code == 0, r.output
    merged = AutoModelForImageTextToText.from_pretrained(workdir / "merged")
    proc = AutoProcessor.from_pretrained(workdir / "merged")
    base = AutoModelForImageTextToText.from_pretrained(workdir / "model")
    x = to_model_inputs(encode_rows(proc, ["hi"], [[tiny_image(1)]], None, model_config=base.config).inputs, base)
    with torch.no_grad(), Glasses.from_pretrained(out).apply(base):
        hooked = base(**x).logits
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, hooked, atol=1e-5)


def test_export_peft_ia3_reproduces_the_glasses(workdir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = _fit(workdir)
    r = runner.invoke(app, ["export", "--model", str(workdir / "model"), "--glasses", str(out),
                            "--out", str(workdir / "ia3"), "--format", "peft-ia3"])
    assert r.exit_code == 0, r.output
    base = AutoModelForImageTextToText.from_pretrained(workdir / "model")
    proc = AutoProcessor.from_pretrained(workdir / "model")
    x = to_model_inputs(encode_rows(proc, ["hi"], [[tiny_image(1)]], None, model_config=base.config).inputs, base)
    with torch.no_grad(), Glasses.from_pretrained(out).apply(base):
        hooked = base(**x).logits
    adapted = peft.PeftModel.from_pretrained(base, workdir / "ia3")
    with torch.no_grad():
        assert torch.allclose(adapted(**x).logits, hooked, atol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (["fit", "--model", "nowhere", "--concepts", "missing.jsonl", "--out", "x"], "missing.jsonl"),
    (["inspect", "not-a-folder"], "not a glasses folder"),
    (["export", "--model", "m", "--glasses", "g", "--out", "o", "--format", "onnx"], "--format"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_bad_concept_row_fails_before_loading_the_model(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": "a", "prompt": "p", "response": "r", "label": "toxic"}) + "\n"
                 + json.dumps({"id": "b", "prompt": "p", "response": "r", "label": "maybe"}) + "\n")
    r = runner.invoke(app, ["fit", "--model", "does-not-exist", "--concepts", str(p), "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "b" in r.output and "label" in r.output.lower()


def test_fit_with_device_map_auto_and_bf16(workdir, tmp_path):
    pytest.importorskip("accelerate")
    r = runner.invoke(app, ["fit", "--model", str(workdir / "model"), "--concepts", str(workdir / "concepts.jsonl"),
                            "--out", str(tmp_path / "g"), "--dtype", "bfloat16", "--device-map", "auto",
                            "--layers", "0", "--record-dir", str(tmp_path / "rec")])
    assert r.exit_code == 0, r.output
    g = Glasses.from_pretrained(tmp_path / "g")
    assert [s.layer for s in g.sites] == [0]
    assert float(g.aurocs[g.sites[0].module_name][5]) == 1.0  # the planted expert, found in bf16 too
    assert (tmp_path / "rec" / "recording.json").is_file()


def test_fit_clamp_selection_and_threshold_warnings(workdir, tmp_path):
    base = ["fit", "--model", str(workdir / "model"), "--concepts", str(workdir / "concepts.jsonl"),
            "--batch-size", "8", "--layers", "0", "--threads", "1"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--threshold", "0.3"])
    assert r.exit_code == 0 and "warning: threshold 0.3 has no effect with clamp=True" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--threshold", "0.3", "--no-clamp"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    g = Glasses.from_pretrained(tmp_path / "b")
    a = g.alphas[g.sites[0].module_name]
    au = g.aurocs[g.sites[0].module_name]
    amplify = (au > 0.3) & (au < 0.5)
    assert g.config.clamp is False and bool(amplify.any()) and bool((a[amplify] > 1).all())
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--strategy", "det0", "--threshold", "0.7"])
    assert r.exit_code == 0 and "warning: --threshold has no effect on det0 with --selection top-k" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--strategy", "det0", "--selection", "ml-aura"])
    assert r.exit_code == 0, r.output
    g = Glasses.from_pretrained(tmp_path / "d")
    au, a = g.aurocs[g.sites[0].module_name], g.alphas[g.sites[0].module_name]
    assert g.config.selection == "ml-aura" and torch.equal(a == 0, au > 0.5)
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "e"), "--selection", "nope"])
    assert r.exit_code == 2 and "selection must be one of" in r.output
