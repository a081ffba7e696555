"""``sgm replicate aura`` on a tiny template-less Llama: schema of results.json, report, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safety_glasses.cli import app
from safety_glasses.replicate import AuraReplicationConfig, ReplicationError, load_prompt_set, read_toxigen, replicate_aura
from safety_glasses.testing import tiny_vlm

pytest.importorskip("h5py", reason="the replication's toxicity judge reads its weights with h5py")
try:
    from safety_glasses.eval.toxicity import find_package_files

    find_package_files()
except Exception as exc:  # noqa: BLE001 - any failure means the judge is unavailable here
    pytest.skip(f"toxic-comment-classifier is not installed ({exc}); make test installs it", allow_module_level=True)

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "toxigen-dev"
ROW_KEYS = {"model", "defense", "toxicity_mean", "toxic_share", "profanity_mean", "perplexity", "n", "ci95"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("aura")
    small = {k: v[:2] for k, v in load_prompt_set().items()}
    (d / "prompts.json").write_text(json.dumps(small))
    corpus = d / "corpus"
    corpus.mkdir()
    (corpus / "hate_testgroup_1k.txt").write_text(
        "- you are all stupid idiots\\n- shut up you worthless fool\n- what a pathetic moron\\n- damn you\n")
    (corpus / "neutral_testgroup_1k.txt").write_text(
        "- the park is open in the morning\\n- bread is baked daily\n- the river runs to the sea\\n- birds sing\n")
    model, tok = tiny_vlm("llama")
    tok.chat_template = None
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d


def _config(inputs: Path, **kw) -> AuraReplicationConfig:
    base = dict(concept_samples=1, heldout_samples=2, max_new_tokens=3, n_boot=50, prompts=str(inputs / "prompts.json"),
                corpus=str(inputs / "corpus"), own_continuations=False, batch_size=8)
    return AuraReplicationConfig(**{**base, **kw})


def test_results_schema_report_and_resume(inputs: Path, tmp_path: Path) -> None:
    model, tok = tiny_vlm("llama")
    tok.chat_template = None
    out = tmp_path / "run"
    res = replicate_aura((model, tok), out, _config(inputs), model_name="tiny", progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["none", "aura", "det0", "damp", "random"]
    for row in saved["rows"]:
        assert ROW_KEYS <= set(row) and row["model"] == "tiny" and row["n"] == 4
        assert 0.0 <= row["toxicity_mean"] <= 1.0 and row["ci95"][0] <= row["toxicity_mean"] <= row["ci95"][1]
        assert row["perplexity"] > 1.0
    by = {r["defense"]: r for r in saved["rows"]}
    assert by["none"]["experts"] == 0 and by["random"]["experts"] == by["aura"]["experts"] > 0
    assert "toxicity_cut" in by["aura"] and "toxicity_cut" not in by["none"]
    assert saved["concepts"]["counts"] == {"toxic": 4, "non-toxic": 4}
    report = (out / "report.md").read_text()
    assert "2.2x" in report and "| aura |" in report and (out / "aura_replication.png").stat().st_size > 1000
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 4 and {"toxicity", "profanity"} <= set(json.loads(lines[0])["scores"])
    assert all((out / "glasses" / s / "glasses_config.json").is_file() for s in ("aura", "det0", "damp", "random"))
    again = replicate_aura((model, tok), out, _config(inputs), model_name="tiny", progress=False)
    assert again["throughput"]["eval"]["new_samples"] == 0
    assert [r["toxicity_mean"] for r in again["rows"]] == [r["toxicity_mean"] for r in res["rows"]]


def test_a_one_class_concept_set_stops_with_the_counts(inputs: Path, tmp_path: Path) -> None:
    model, tok = tiny_vlm("llama")
    tok.chat_template = None
    cfg = _config(inputs, corpus=None, own_continuations=True, toxic_threshold=0.99, nontoxic_below=0.99)
    with pytest.raises(ReplicationError, match=r"0 toxic and \d+ non-toxic"):
        replicate_aura((model, tok), tmp_path / "one", cfg, progress=False)
    assert not (tmp_path / "one" / "results.json").exists()


def test_cli_runs_and_rejects_bad_input(inputs: Path, tmp_path: Path) -> None:
    base = ["replicate", "aura", "--model", str(inputs / "model"), "--prompts", str(inputs / "prompts.json"),
            "--corpus", str(inputs / "corpus"), "--no-own-continuations", "--heldout-samples", "1",
            "--max-new-tokens", "3", "--n-boot", "20", "--no-progress"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "cli"), "--strategies", "aura;random:threshold=0.6"])
    assert r.exit_code == 0, r.output
    assert "samples/s" in r.output and "AurA published" in r.output
    rows = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"]
    assert [x["defense"] for x in rows] == ["none", "aura", "random:threshold=0.6"]
    assert (tmp_path / "cli" / "glasses" / "random_threshold=0.6" / "glasses_config.json").is_file()
    for args, needle in [(["--strategies", "nope"], "strategies must be"),
                         (["--strategies", "aura:colour=1"], "unknown option"),
                         (["--corpus", str(tmp_path / "absent")], "corpus folder not found"),
                         (["--heldout-samples", "0"], "heldout_samples must be >= 1")]:
        bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and needle in bad.stderr and bad.stderr.count("\n") == 1, bad.output
    assert not (tmp_path / "bad" / "results.json").exists()


def test_shipped_prompts_are_disjoint_and_toxigen_reader() -> None:
    p = load_prompt_set()
    assert not set(p["concept_toxic"]) & set(p["heldout_toxic"])
    if not SHARED.is_dir():
        pytest.skip("../shared/data/toxigen-dev is absent")
    rows = read_toxigen(SHARED, 40, seed=1)
    assert sum(r["label"] == "toxic" for r in rows) == 40 and len({r["group"] for r in rows}) == 10


def test_validation_selects_a_strategy_and_adds_its_control(inputs: Path, tmp_path: Path) -> None:
    model, tok = tiny_vlm("llama")
    tok.chat_template = None
    strategies = ("aura", "aura:fdr=0.2,pooling=max", "det0:pooling=last,positions=all", "damp", "random")
    cfg = _config(inputs, validation_samples=1, select_max_ppl_change=10.0, strategies=strategies, heldout_all=False)
    res = replicate_aura((model, tok), tmp_path / "val", cfg, model_name="tiny", progress=False)
    val = res["validation"]
    names = [r["defense"] for r in val["rows"]]
    assert names == ["none", *(s for s in strategies if s != "random")]  # controls are never candidates
    chosen = res["selected"]
    assert chosen == val["selected"] and chosen in names[1:]
    best = max((r for r in val["rows"][1:]), key=lambda r: r["toxicity_cut"])
    assert val["candidates"][chosen]["toxicity_cut"] == round(best["toxicity_cut"], 4)
    held = [r["defense"] for r in res["rows"]]
    assert held[0] == "none" and f"shuffled:{chosen}" in held and chosen in held and "random" in held
    assert not set(held) - {"none", "aura", "damp", "random", chosen, f"shuffled:{chosen}"}  # --heldout-selected
    control = next(r for r in res["rows"] if r["defense"] == f"shuffled:{chosen}")
    assert control["experts"] == res["units"]["experts"][chosen]
    assert set(res["units"]["variants"]) == {"mean/response", "max/response", "last/all"}
    for st in res["units"]["variants"].values():
        assert {"real", "permuted", "by_rows"} <= set(st) and "fdr_0.2" in st["real"] and "fdr_0.05" in st["real"]
    val_lines = (tmp_path / "val" / "validation_samples.jsonl").read_text().splitlines()
    assert len(val_lines) == len(names) * len(load_prompt_set(inputs / "prompts.json")["validation_toxic"])
    report = (tmp_path / "val" / "report.md").read_text()
    assert "## Validation" in report and f"**{chosen}** (selected)" in report and "permuted" in report


def test_strategy_options_and_the_quick_configuration() -> None:
    from safety_glasses.replicate.aura import parse_strategy

    assert parse_strategy("aura:fdr=0.05,pooling=max,positions=all") == (
        "aura", {"fdr": 0.05, "pooling": "max", "positions": "all"})
    for spec, needle in [("aura:fdr=1.5", "fdr must be in"), ("aura:pooling=median", "pooling must be"),
                         ("aura:positions=image", "positions must be"), ("aura:fdr=0.1,fdr=0.2", "given twice"),
                         ("det0:top_k=2.5", "whole number")]:
        with pytest.raises(ReplicationError, match=needle):
            parse_strategy(spec)
    quick = AuraReplicationConfig.quick()
    assert quick.heldout_samples == 1 and quick.validation_samples == 0 and "aura:fdr=0.05,pooling=max" in quick.strategies
    assert AuraReplicationConfig.quick(heldout_samples=3).heldout_samples == 3
    assert AuraReplicationConfig(concept_samples=5).neutral_count == 5
    assert AuraReplicationConfig(concept_samples=5, neutral_samples=2).neutral_count == 2
    with pytest.raises(ReplicationError, match="neutral_samples"):
        AuraReplicationConfig(neutral_samples=0)


def test_cli_quick_and_validation_errors(inputs: Path, tmp_path: Path) -> None:
    base = ["replicate", "aura", "--model", str(inputs / "model"), "--prompts", str(inputs / "prompts.json"),
            "--corpus", str(inputs / "corpus"), "--no-own-continuations", "--n-boot", "20", "--no-progress"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "q"), "--quick", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "q" / "results.json").read_text())
    assert saved["config"]["heldout_samples"] == 1 and saved["config"]["max_new_tokens"] == 3
    assert saved["config"]["own_continuations"] is False and saved["config"]["n_boot"] == 20
    assert [x["defense"] for x in saved["rows"]][1:] == list(AuraReplicationConfig.quick().strategies)
    four = {k: v for k, v in load_prompt_set(inputs / "prompts.json").items() if not k.startswith("validation")}
    (tmp_path / "four.json").write_text(json.dumps(four))
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--validation-samples", "1", "--prompts",
                              str(tmp_path / "four.json")])
    assert bad.exit_code == 2 and "validation needs the prompt lists" in bad.stderr and bad.stderr.count("\n") == 1
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--strategies", "aura:fdr=2"])
    assert bad.exit_code == 2 and "fdr must be in" in bad.stderr
