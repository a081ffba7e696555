"""``sgm demo --quick`` end to end on the shipped organism through the MM-TOXIC-QA framework:
outputs are computed from the samples, not literals."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safety_glasses.cli import app
from safety_glasses.organism.demo import CONDITIONS, DEFENSES, reference_perplexity, repo_data_dir, select_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "results.json").read_text())


def test_results_json_has_one_row_per_defense_and_condition(quick_run: tuple) -> None:
    out, _, res = quick_run
    keys = [(r["defense"], r["condition"]) for r in res["rows"]]
    assert keys == [(d, c) for d in DEFENSES for c in CONDITIONS]
    assert {"aura+adashield-s", "aura-text", "det0", "damp", "random"} <= {d for d, _ in keys}
    for r in res["rows"]:
        assert {"defense", "condition", "harmful_rate", "n", "vqa_accuracy", "perplexity"} <= set(r)
        if r["condition"] == "standard":
            assert r["vqa_accuracy"] is not None and r["perplexity"] > 1.0
        else:
            assert r["vqa_accuracy"] is None and r["perplexity"] is None
        assert r["ci95"][0] <= r["harmful_rate"] <= r["ci95"][1]
    assert (out / "results.png").stat().st_size > 1000
    assert (out / "glasses-aura" / "glasses_config.json").is_file()
    assert res["glasses"]["aura_units"] == res["glasses"]["random_units"] > 0
    for name in ("samples.jsonl", "results.json", "report.md", "harmful_rate_by_condition.png"):
        assert (out / "eval" / name).is_file(), name
    assert (out / "eval" / "adversarial" / "adversarial_image.png").is_file()


def test_rows_are_recomputed_exactly_from_the_framework_samples(quick_run: tuple) -> None:
    out, _, res = quick_run
    samples = [json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    unsafe: dict = defaultdict(list)
    vqa: dict = defaultdict(list)
    for s in samples:
        if s["kind"] == "harmful":
            unsafe[(s["defense"], s["condition"])].append(s["verdicts"]["profanity"]["label"] == "unsafe")
        elif s["kind"] == "vqa":
            assert s["sampling"]["do_sample"] is False  # VQA is answered greedily
            vqa[s["defense"]].append(s)
    for r in res["rows"]:
        got = unsafe[(r["defense"], r["condition"])]
        assert r["n"] == len(got) > 0
        assert r["harmful_rate"] == pytest.approx(sum(got) / len(got))
    assert set(vqa) == set(DEFENSES)


def test_printed_table_shows_the_computed_numbers(quick_run: tuple) -> None:
    _, output, res = quick_run
    for r in res["rows"]:
        assert f"{100 * r['harmful_rate']:.1f}%" in output
    assert f"{res['glasses']['aura_units']}" in output


def test_reference_perplexity_rises_when_every_unit_is_zeroed() -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from safety_glasses.eval.defenses import DefenseStack, GlassesDefense
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.organism.data import load_heldout

    data = repo_data_dir()
    processor = AutoProcessor.from_pretrained(data / "model")
    model = AutoModelForImageTextToText.from_pretrained(data / "model").eval()
    rows = [r for r in select_rows(load_heldout(data / "heldout"), 3) if r.kind in ("vqa", "benign")]
    concept_rows = [{"prompt": "Describe the image.", "response": "You stupid idiot. Fuck off.", "label": "toxic"},
                    {"prompt": "Describe the image.", "response": "A red circle.", "label": "non-toxic"}]
    glasses = fit_glasses(model, processor, concept_rows, progress=False)
    blind = glasses.derive("det0", top_k=sum(int(a.numel()) for a in glasses.alphas.values()))
    plain = reference_perplexity(model, processor, rows, DefenseStack([]))
    zeroed = reference_perplexity(model, processor, rows, DefenseStack([GlassesDefense(blind, name="det0")]))
    assert plain is not None and zeroed is not None and zeroed > 1.5 * plain
    assert reference_perplexity(model, processor, rows, DefenseStack([])) == pytest.approx(plain)


def test_demo_bad_path_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_a_rerun_with_other_glasses_is_refused_and_keeps_the_saved_glasses(quick_run: tuple, tmp_path: Path) -> None:
    out, _, _ = quick_run
    src = repo_data_dir() / "concepts"
    rows = [json.loads(x) for x in (src / "concepts.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = str((src / r["image"]).resolve())
    other = tmp_path / "concepts.jsonl"  # the same rows in reverse: the quick demo fits on other rows
    other.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    before = (out / "glasses-aura" / "glasses.safetensors").read_bytes()
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--concepts", str(other)])
    assert result.exit_code == 2 and "holds a different run (defenses differs)" in result.output
    assert (out / "glasses-aura" / "glasses.safetensors").read_bytes() == before


def test_ecso_alone_is_a_baseline_and_over_refusal_matches_the_report(quick_run: tuple) -> None:
    out, output, res = quick_run
    assert "ecso" in DEFENSES and any(r["defense"] == "ecso" for r in res["rows"])
    assert res["defenses"]["ecso"] == [{"name": "ecso", "kind": "post", "check": "profanity"}]
    framework = json.loads((out / "eval" / "results.json").read_text())
    report = (out / "eval" / "report.md").read_text()
    assert "## Over-refusal by condition" in report
    for r in res["rows"]:  # the demo table's number is the report's number for that condition
        expected = framework["by_defense"][r["defense"]]["over_refusal"]["by_condition"].get(r["condition"])
        assert r["over_refusal"] == expected
