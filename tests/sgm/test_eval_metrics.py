"""Metric maths on hand-made verdicts."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from safety_glasses.eval.metrics import (
    bootstrap_ci,
    cohen_kappa,
    compute_metrics,
    distinct_n,
    harmful_rate,
    judge_agreement,
    normalize_answer,
    over_refusal,
    perplexity,
    vqa_accuracy,
    vqa_match,
)


def _sample(kind: str, cond: str, cat: str, label: str, score: float = 0.5, **kw: object) -> dict:
    return {"kind": kind, "condition": cond, "category": cat, "response": kw.pop("response", "r"),
            "verdicts": {"p": {"label": label, "score": score}, **kw.pop("verdicts", {})}, **kw}


def test_harmful_rate_known_values_and_ci_contains_estimate() -> None:
    samples = (
        [_sample("harmful", "standard", "weapons", "unsafe")] * 3
        + [_sample("harmful", "standard", "drugs", "safe")] * 7
        + [_sample("harmful", "typographic", "weapons", "unsafe")] * 6
        + [_sample("harmful", "typographic", "drugs", "safe")] * 4
        + [_sample("benign", "standard", "benign", "unsafe")] * 5  # not counted
    )
    r = harmful_rate(samples, "p")
    assert r["overall"] == pytest.approx(9 / 20) and r["n"] == 20
    assert r["by_condition"]["standard"]["rate"] == pytest.approx(0.3)
    assert r["by_condition"]["typographic"]["rate"] == pytest.approx(0.6)
    assert r["by_category"]["weapons"]["rate"] == 1.0 and r["by_category"]["drugs"]["rate"] == 0.0
    lo, hi = r["ci95"]
    assert lo < 0.45 < hi and hi - lo < 0.6
    assert r["by_category"]["weapons"]["ci95"] == [1.0, 1.0]
    with pytest.raises(KeyError, match="no verdict of judge 'q'"):
        harmful_rate(samples, "q")


def test_bootstrap_ci_shrinks_with_n_and_is_seeded() -> None:
    rng = random.Random(0)
    small = [float(rng.random() < 0.3) for _ in range(40)]
    big = [float(rng.random() < 0.3) for _ in range(4000)]
    ws = np.diff(bootstrap_ci(small))[0]
    wb = np.diff(bootstrap_ci(big))[0]
    assert wb < ws / 4
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)
    lo, hi = bootstrap_ci(big)
    assert lo <= np.mean(big) <= hi and abs((hi - lo) - 2 * 1.96 * math.sqrt(0.3 * 0.7 / 4000)) < 0.01
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_over_refusal_and_vqa() -> None:
    ref = {"refusal": {"label": "refusal", "score": 1.0}}
    ans = {"refusal": {"label": "answer", "score": 0.0}}
    samples = [_sample("benign", "standard", "b", "safe", verdicts=ref)] + [
        _sample("benign", "standard", "b", "safe", verdicts=ans)] * 3 + [
        _sample("harmful", "standard", "b", "safe", verdicts=ref)]
    assert over_refusal(samples)["rate"] == 0.25 and over_refusal(samples)["n"] == 4
    vqa = [
        _sample("vqa", "standard", "v", "safe", response="The Three.", reference="3"),
        _sample("vqa", "standard", "v", "safe", response="red circle", reference=["red"]),
        _sample("vqa", "standard", "v", "safe", response="Blue", reference=["green", "blue"]),
        _sample("vqa", "standard", "v", "safe", response="whatever", reference="left", vqa_score=0.5),
    ]
    assert vqa_accuracy(vqa)["rate"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert normalize_answer("An Apple, please!") == "apple please"
    assert vqa_match("twelve", ["12"]) and not vqa_match("", ["12"])


def test_perplexity_distinct_and_kappa() -> None:
    samples = [{"nll": 3.0, "n_tokens": 3}, {"nll": 1.0, "n_tokens": 1}, {"response": "no nll"}]
    assert perplexity(samples) == pytest.approx(math.e)
    assert perplexity([{"response": "x"}]) is None
    assert distinct_n(["a a a a"], 1) == 0.25 and distinct_n(["a b c", "a b d"], 2) == 0.75
    assert distinct_n(["a"], 2) is None
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([1, 1], [1, 1]) == 1.0 and cohen_kappa([], []) is None


def test_judge_agreement_skips_unparsed_and_compute_metrics_shape() -> None:
    samples = [
        {"kind": "harmful", "condition": "standard", "category": "c", "response": "x y",
         "verdicts": {"a": {"label": "unsafe", "score": 0.9}, "b": {"label": "unsafe", "score": 1.0}}},
        {"kind": "harmful", "condition": "standard", "category": "c", "response": "x z",
         "verdicts": {"a": {"label": "safe", "score": 0.1}, "b": {"label": "unsafe", "score": 1.0}}},
        {"kind": "harmful", "condition": "standard", "category": "c", "response": "q",
         "verdicts": {"a": {"label": "safe", "score": 0.2}, "b": {"label": "unparsed", "score": 0.5}}},
    ]
    agree = judge_agreement(samples, ["a", "b"])
    assert agree == [{"judges": ["a", "b"], "n": 2, "rows": "all", "percent_agreement": 0.5, "cohen_kappa": 0.0}]
    m = compute_metrics(samples, safety_judges=["a", "b"])
    assert m["harmful_rate"]["overall"] == pytest.approx(1 / 3)
    assert m["harmful_rate_by_judge"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)}
    assert m["toxicity"]["overall"] == pytest.approx(0.4)
    assert m["over_refusal"]["rate"] is None and m["vqa_accuracy"]["rate"] is None
    assert m["distinct_1"] == pytest.approx(4 / 5)


def test_build_results_and_report_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safety_glasses.eval.report import build_results, load_results, render_markdown, write_report

    samples = []
    for defense, unsafe_std in (("none", 3), ("aura", 1)):
        for i in range(4):
            for cond in ("standard", "typographic"):
                label = "unsafe" if (cond == "typographic" or i < unsafe_std) else "safe"
                samples.append(_sample("harmful", cond, "weapons" if i % 2 else "drugs", label, defense=defense,
                                       response=f"reply {i} {cond}", verdicts={"refusal": {"label": "answer"}}))
        samples.append(_sample("benign", "standard", "benign", "safe", defense=defense,
                               verdicts={"refusal": {"label": "refusal" if defense == "aura" else "answer"}}))
    results = build_results(samples, safety_judges=["p"], defenses=["none", "aura"], n_boot=200,
                            config={"sampling": {"seed": 5}})
    assert results["primary_defense"] == "aura" and results["seeds"] == {"bootstrap": 0, "sampling": 5}
    assert results["metrics"]["harmful_rate"]["overall"] == pytest.approx(5 / 8)
    assert results["by_defense"]["none"]["harmful_rate"]["by_condition"]["standard"]["rate"] == 0.75
    rows = {(r["defense"], r["condition"]): r for r in results["rows"]}
    assert rows[("aura", "standard")]["harmful_rate"] == 0.25 and rows[("aura", "standard")]["n"] == 4
    assert rows[("aura", "standard")]["over_refusal"] == 1.0 and rows[("none", "typographic")]["harmful_rate"] == 1.0
    md = render_markdown(results)
    assert "| aura | 62.5 [" in md and "| none | 87.5 [" in md
    paths = write_report(tmp_path, results)
    assert load_results(tmp_path)["rows"] == results["rows"]
    assert paths["by_condition"].stat().st_size > 1000 and paths["by_category"].is_file()
