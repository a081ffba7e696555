"""``sgm concepts build`` on a tiny Llava: the model's own replies, judged, balanced per category."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safety_glasses import ConceptSet
from safety_glasses.cli import app
from safety_glasses.eval.concept_build import ConceptBuildConfig, ConceptBuildError, build_concept_set
from safety_glasses.eval.judges import JudgeSample, Verdict
from safety_glasses.eval.loaders import load_benchmark
from safety_glasses.testing import tiny_vlm

runner = CliRunner()
BENCH = Path(__file__).parent / "fixtures" / "eval" / "bench.jsonl"


class AlternatingJudge:
    """A test judge: unsafe, safe, unsafe, ... in call order (replies to a harmful row as asked come first)."""

    judge_id, kind, measures = "alternating", "safety", "call order (a test double)"

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, samples: Sequence[JudgeSample]) -> list[Verdict]:
        out = []
        for _ in samples:
            out.append(Verdict("unsafe" if self.calls % 2 == 0 else "safe", float(self.calls % 2 == 0), self.judge_id))
            self.calls += 1
        return out


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    d = tmp_path_factory.mktemp("cb")
    model, proc = tiny_vlm("llava", seed=2)
    model.save_pretrained(d / "model")
    proc.save_pretrained(d / "model")
    return model, proc, d


def test_build_balances_per_category_and_keeps_the_verdicts(llava, tmp_path: Path) -> None:
    model, proc, _ = llava
    rows = load_benchmark(BENCH)
    out = tmp_path / "concepts"
    cfg = ConceptBuildConfig(max_new_tokens=4, batch_size=4)
    summary = build_concept_set(model, proc, rows, AlternatingJudge(), out, config=cfg, progress=False)
    cs = ConceptSet.load(out / "concepts.jsonl")
    assert cs.class_counts() == summary["counts"] == {"toxic": 2, "non-toxic": 2}
    records = [json.loads(line) for line in (out / "concepts.jsonl").read_text().splitlines()]
    for cat in ("violence", "harassment"):
        labels = sorted(r["label"] for r in records if r["category"] == cat)
        assert labels == ["non-toxic", "toxic"]
    toxic = [r for r in records if r["label"] == "toxic"]
    assert all(r["source"] == "harmful" and r["judge"]["alternating"]["label"] == "unsafe" for r in toxic)
    assert all(r["source"] == "safety-prompt" for r in records if r["label"] == "non-toxic")
    assert all((out / r["image"]).is_file() for r in records)  # images travel with the set
    assert all("safety" not in r["prompt"].lower() for r in records)  # the original question is recorded
    replies = (out / "replies.jsonl").read_text().splitlines()
    assert len(replies) == 2 * 2 + 1  # two harmful rows x (as asked, safety instruction) + one benign row
    assert json.loads((out / "build.json").read_text())["found"]["per_category"]["violence"]["toxic"] == 1


def test_one_class_stops_with_the_counts_and_writes_nothing(llava, tmp_path: Path) -> None:
    model, proc, _ = llava
    rows = load_benchmark(BENCH)
    out = tmp_path / "one"
    # benign only as the non-toxic source: calls go harmful(unsafe), harmful(safe), benign(unsafe) -> 0 non-toxic
    with pytest.raises(ConceptBuildError, match=r"found 1 toxic and 0 non-toxic replies \(of 3\)"):
        build_concept_set(model, proc, rows, AlternatingJudge(), out, progress=False,
                          config=ConceptBuildConfig(nontoxic_from=("benign",), max_new_tokens=3))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_builds_or_stops_with_one_line(llava, tmp_path: Path) -> None:
    _, _, d = llava
    base = ["concepts", "build", "--model", str(d / "model"), "--bench", str(BENCH), "--max-new-tokens", "3",
            "--no-progress"]
    r = runner.invoke(app, [*base, "--judge", "profanity:threshold=0.99", "--out", str(tmp_path / "x")])
    last = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 2 and last.startswith("error: the judge found 0 toxic") and "nothing was written" in last
    assert not (tmp_path / "x").exists()
    for args, needle in [(["--judge", "refusal"], "safety judge is needed"),
                         (["--judge", "nope"], "unknown judge"),
                         (["--nontoxic-from", "elsewhere"], "nontoxic_from must name")]:
        bad = runner.invoke(app, [*base, *args, "--out", str(tmp_path / "y")])
        assert bad.exit_code == 2 and needle in bad.stderr, bad.output
