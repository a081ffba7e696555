"""Runner: one line per generation, resume after a kill with no lost and no duplicated samples,
recorded sampling settings, perplexity of replies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from safety_glasses.eval.defenses import DefenseContext, parse_defenses
from safety_glasses.eval.judges import make_judge
from safety_glasses.eval.runner import (
    RunConfig,
    RunError,
    SamplingConfig,
    read_samples,
    response_nll,
    run_generations,
)
from safety_glasses.eval.schema import load_bench
from safety_glasses.testing import tiny_image, tiny_vlm

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def llava() -> tuple[Any, Any]:
    return tiny_vlm("llava", seed=0)


@pytest.fixture(scope="module")
def judges() -> list[Any]:
    return [make_judge("profanity"), make_judge("refusal")]


def _run(llava: tuple[Any, Any], judges: list[Any], out: Path, **kw: Any) -> Any:
    model, proc = llava
    rows = load_bench(FIX / "bench.jsonl")
    stacks = [parse_defenses(d, DefenseContext()) for d in ("none", "adashield-s")]
    config = kw.pop("config", RunConfig(batch_size=3, sampling=SamplingConfig(max_new_tokens=4)))
    return run_generations(model, proc, rows, stacks, judges, out, config=config, progress=False, **kw)


def test_resume_after_kill_gives_exact_sample_set(tmp_path: Path, llava: Any, judges: list[Any]) -> None:
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    stats = _run(llava, judges, full_dir)
    full = read_samples(full_dir / "samples.jsonl")
    assert stats.new == stats.total == len(full) == 10
    assert len({s["key"] for s in full}) == 10

    shutil.copytree(full_dir, killed_dir)
    path = killed_dir / "samples.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # killed mid-write of line 5
    assert len(read_samples(path)) == 4

    again = _run(llava, judges, killed_dir)
    assert again.new == 6 and again.total == 10
    raw = path.read_text().splitlines()
    resumed = [json.loads(line) for line in raw]  # every line is complete JSON
    assert len(raw) == 10 and {s["key"] for s in resumed} == {s["key"] for s in full}
    by_key = {s["key"]: s for s in full}
    for s in resumed:  # greedy decoding: the resumed samples equal the uninterrupted ones
        assert s["response"] == by_key[s["key"]]["response"]
        assert s["verdicts"] == by_key[s["key"]]["verdicts"]
    assert _run(llava, judges, killed_dir).new == 0

    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + b"{garbage\n" + b"".join(lines[2:]))
    with pytest.raises(RunError, match="line 3 is corrupt"):
        read_samples(path)


def test_lines_carry_the_contract_fields(tmp_path: Path, llava: Any, judges: list[Any]) -> None:
    config = RunConfig(batch_size=4, perplexity=False,
                       sampling=SamplingConfig(max_new_tokens=3, do_sample=True, num_samples=2, seed=7))
    _run(llava, judges, tmp_path, config=config)
    samples = read_samples(tmp_path / "samples.jsonl")
    assert len(samples) == 5 * 2 * 2
    s = samples[0]
    for key in ("id", "category", "condition", "kind", "defense", "prompt", "response", "sampling", "seed", "verdicts"):
        assert key in s
    assert set(s["verdicts"]) == {"profanity", "refusal"}
    assert s["verdicts"]["profanity"]["label"] in ("safe", "unsafe")
    assert s["sampling"]["temperature"] == 1.0 and s["sampling"]["seed"] == 7 and isinstance(s["seed"], int)
    assert s["nll"] is None
    shield = [x for x in samples if x["defense"] == "adashield-s"]
    assert all(x["prompt"].startswith(x["question"]) and len(x["prompt"]) > len(x["question"]) for x in shield)
    assert {x["sample"] for x in samples} == {0, 1}
    with pytest.raises(RunError, match="different run"):
        _run(llava, judges, tmp_path)  # greedy settings differ from the sampled run in this folder


def test_response_nll_matches_a_manual_forward(llava: Any) -> None:
    from safety_glasses.inputs import encode_rows

    model, proc = llava
    imgs = [[tiny_image(1)], []]
    got = response_nll(model, proc, ["Describe it.", "Hi"], imgs, ["a cat sits", ""])
    assert got[1] == (None, 0) and got[0][1] > 0
    enc = encode_rows(proc, ["Describe it."], [imgs[0]], ["a cat sits"], model_config=model.config)
    with torch.no_grad():
        logits = model(**enc.inputs).logits[0]
    ids, mask = enc.inputs["input_ids"][0], enc.masks["response"][0]
    pos = mask.nonzero().flatten()
    manual = -sum(float(torch.log_softmax(logits[p - 1], -1)[ids[p]]) for p in pos)
    assert got[0][0] == pytest.approx(manual, rel=1e-4) and got[0][1] == len(pos)


def test_sampling_config_validation() -> None:
    with pytest.raises(ValueError, match="needs do_sample"):
        SamplingConfig(num_samples=2)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig(batch_size=0)


class _FakeLLMJudge:
    judge_id, kind = "llm-judge:fake", "safety"

    def judge(self, samples: Any) -> list[Any]:
        from safety_glasses.eval.judges import Verdict

        return [Verdict("safe", 0.0, self.judge_id) for _ in samples]

    def fluency(self, responses: Any) -> list[float]:
        return [7.0 for _ in responses]

    def grade_vqa(self, items: Any) -> list[float]:
        return [1.0 if q.startswith("What") else 0.25 for q, _, _ in items]


def test_llm_judge_rates_fluency_and_grades_mm_vet_rows(tmp_path: Path, llava: Any) -> None:
    from safety_glasses.eval.loaders import load_benchmark
    from safety_glasses.eval.metrics import compute_metrics

    model, proc = llava
    fake = _FakeLLMJudge()
    rows = load_benchmark(FIX / "mmvet")
    run_generations(model, proc, rows, [parse_defenses("none", DefenseContext())], [fake], tmp_path,
                    config=RunConfig(sampling=SamplingConfig(max_new_tokens=2), perplexity=False),
                    llm_judge=fake, progress=False)
    samples = read_samples(tmp_path / "samples.jsonl")
    assert [s["vqa_score"] for s in samples] == [1.0, 0.25] and {s["fluency"] for s in samples} == {7.0}
    m = compute_metrics(samples, safety_judges=[fake.judge_id])
    assert m["vqa_accuracy"]["rate"] == pytest.approx(0.625) and m["fluency_llm"] == 7.0


def test_greedy_kinds_answer_vqa_once_and_greedily_while_the_rest_is_sampled(
        tmp_path: Path, llava: Any, judges: list[Any]) -> None:
    rows = load_bench(FIX / "bench.jsonl")
    n_vqa = sum(r.kind == "vqa" for r in rows)
    assert 0 < n_vqa < len(rows)
    sampling = SamplingConfig(max_new_tokens=4, do_sample=True, num_samples=2, seed=3)
    stats = _run(llava, judges, tmp_path / "g", config=RunConfig(batch_size=3, sampling=sampling,
                                                                  greedy_kinds=("vqa",)))
    samples = read_samples(tmp_path / "g" / "samples.jsonl")
    vqa = [s for s in samples if s["kind"] == "vqa"]
    rest = [s for s in samples if s["kind"] != "vqa"]
    assert stats.new == len(samples) == 2 * (n_vqa + 2 * (len(rows) - n_vqa))  # two defences
    assert {s["sample"] for s in vqa} == {0} and {s["sample"] for s in rest} == {0, 1}
    assert all(not s["sampling"]["do_sample"] and s["seed"] is None for s in vqa)
    assert all(s["sampling"]["do_sample"] and s["seed"] is not None for s in rest)
    with pytest.raises(ValueError):
        RunConfig(greedy_kinds=("images",))


def test_a_folder_made_with_other_weights_is_refused(tmp_path: Path, llava: Any, judges: list[Any]) -> None:
    _run(llava, judges, tmp_path)
    assert _run(llava, judges, tmp_path).new == 0  # the same run resumes
    with pytest.raises(RunError, match="weights_digest differs"):
        _run(tiny_vlm("llava", seed=1), judges, tmp_path)  # same architecture, other weights
