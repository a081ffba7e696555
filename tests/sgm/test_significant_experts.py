"""Significant experts (``fdr``): Mann-Whitney p-values, Benjamini-Hochberg, the strategies and glasses that use
them; several recordings from one set of forward passes; the replication's variant helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from safety_glasses import ConceptSet
from safety_glasses.expertise import auroc, auroc_pvalues, fdr_mask
from safety_glasses.fitting import fit_glasses
from safety_glasses.glasses import Glasses
from safety_glasses.models import resolve_units
from safety_glasses.recording import record_activations, record_variants
from safety_glasses.replicate.variants import select_on_validation, shuffled_control, unit_statistics
from safety_glasses.strategies import compute_alphas
from safety_glasses.testing import tiny_vlm

from .helpers import planted_rows


@pytest.mark.parametrize("n_pos,n_neg,shift", [(12, 40, 0.0), (30, 300, 0.4), (80, 90, 1.0)])
def test_pvalues_match_scipy_mann_whitney(n_pos, n_neg, shift):
    rng = np.random.default_rng(n_pos)
    x = np.concatenate([rng.normal(shift, 1, size=(n_pos, 5)), rng.normal(0, 1, size=(n_neg, 5))])
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    ours = auroc_pvalues(auroc(x, y), n_pos, n_neg)
    ref = [mannwhitneyu(x[:n_pos, j], x[n_pos:, j], alternative="greater", method="asymptotic",
                        use_continuity=True).pvalue for j in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)
    torch_p = auroc_pvalues(torch.as_tensor(auroc(x, y)), n_pos, n_neg)
    assert torch.is_tensor(torch_p) and np.allclose(torch_p.numpy(), ref)


def _bh_by_definition(p: np.ndarray, q: float) -> np.ndarray:
    m = len(p)
    ks = [k for k in range(1, m + 1) if np.sort(p)[k - 1] <= k * q / m]
    if not ks:
        return np.zeros(m, bool)
    return p <= np.sort(p)[max(ks) - 1]


def test_fdr_mask_is_benjamini_hochberg():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.003, size=rng.integers(0, 10))])
        rng.shuffle(p)
        assert (fdr_mask(p, 0.05) == _bh_by_definition(p, 0.05)).all()
    assert fdr_mask(torch.tensor([[0.001, 0.9]]), 0.05).tolist() == [[True, False]]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="false-discovery rate"):
            fdr_mask(np.array([0.1]), bad)
    with pytest.raises(ValueError, match="both classes"):
        auroc_pvalues(np.array([0.6]), 0, 10)


def test_fdr_keeps_planted_units_and_drops_chance_ones():
    """Null units reach AUROC > 0.5 about half the time; the fdr rule keeps (almost) only planted ones."""
    rng = np.random.default_rng(0)
    n_pos, n_neg, d = 25, 200, 4000
    x = rng.normal(size=(n_pos + n_neg, d)).astype(np.float32)
    x[:n_pos, :40] += 1.5  # 40 planted experts
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    a = {"m": torch.as_tensor(auroc(x, y)).float()}
    plain = compute_alphas(a, "aura")["m"]
    strict = compute_alphas(a, "aura", fdr=0.05, n_pos=n_pos, n_neg=n_neg)["m"]
    assert int((plain < 1).sum()) > 1500  # chance alone passes AUROC > 0.5
    chosen = (strict < 1).nonzero().reshape(-1)
    assert set(range(40)) <= set(chosen.tolist()) and len(chosen) <= 40 + 5
    assert torch.equal(strict[chosen], plain[chosen])  # same alpha = 1 - Gini on the units it keeps
    det0 = compute_alphas(a, "det0", fdr=0.05, n_pos=n_pos, n_neg=n_neg)["m"]
    assert torch.equal(det0 == 0, strict < 1)
    capped = compute_alphas(a, "damp", fdr=0.05, n_pos=n_pos, n_neg=n_neg, top_k=10, damp_alpha=0.3)["m"]
    top10 = torch.argsort(a["m"], descending=True)[:10]
    assert int((capped == 0.3).sum()) == 10 and bool((capped[top10] == 0.3).all())
    rnd = compute_alphas(a, "random", fdr=0.05, n_pos=n_pos, n_neg=n_neg, seed=1)["m"]
    assert int((rnd < 1).sum()) == len(chosen)
    with pytest.raises(ValueError, match="class counts"):
        compute_alphas(a, "aura", fdr=0.05)
    with pytest.raises(ValueError, match="fdr must be in"):
        compute_alphas(a, "aura", fdr=1.5, n_pos=n_pos, n_neg=n_neg)


def test_unit_statistics_permuted_labels_pass_no_significant_unit():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2000)).astype(np.float32)
    y = (np.arange(300) < 60).astype(int)
    x[y == 1, :30] += 1.2
    m = {"m": x}
    stats = unit_statistics({"m": torch.as_tensor(auroc(x, y))}, m, y, subsets=(0.25, 0.5))
    assert stats["real"]["fdr_0.05"] >= 30 and stats["permuted"]["fdr_0.05"] <= 2
    assert 800 < stats["permuted"]["auroc_over_0.5"] < 1200
    rows = stats["by_rows"]
    assert [b["n_pos"] for b in rows] == [15, 30, 60]
    assert rows[0]["fdr_0.05"] <= rows[-1]["fdr_0.05"]


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava", seed=0)


def test_record_variants_equal_separate_recordings(tmp_path, llava):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(6, seed=2))
    sites = resolve_units(model, "act", layers="0,1")
    together = record_variants(model, proc, cs, sites, [("mean", "response", tmp_path / "a"),
                                                        ("max", "all", tmp_path / "b"),
                                                        ("last", "text", tmp_path / "c")], batch_size=4, progress=False)
    for rec, (pooling, positions) in zip(together, [("mean", "response"), ("max", "all"), ("last", "text")]):
        alone = record_activations(model, proc, cs, sites, tmp_path / f"alone-{pooling}", pooling=pooling,
                                   positions=positions, batch_size=4, progress=False)
        assert rec.meta["pooling"] == pooling and rec.meta["positions"] == positions
        for s in sites:
            np.testing.assert_array_equal(rec.matrix(s.module_name), alone.matrix(s.module_name))
    a, b = (r.matrix(sites[0].module_name) for r in together[:2])
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="own directory"):
        record_variants(model, proc, cs, sites, [("mean", "all", tmp_path / "x"), ("max", "all", tmp_path / "x")])
    with pytest.raises(ValueError, match="pooling must be"):
        record_variants(model, proc, cs, sites, [("median", "all", tmp_path / "y")])


def test_glasses_with_fdr_save_load_and_derive(tmp_path, llava):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(24, seed=7))
    g = fit_glasses(model, proc, cs, fdr=0.05, batch_size=8, progress=False)
    assert g.config.fdr == 0.05
    counts = cs.class_counts()
    a = torch.cat(list(g.aurocs.values()))
    p = auroc_pvalues(a, counts["toxic"], counts["non-toxic"])
    assert g.n_experts == int(fdr_mask(p, 0.05).sum()) <= int((a > 0.5).sum())
    back = Glasses.from_pretrained(g.save_pretrained(tmp_path / "g"))
    assert back.config.fdr == 0.05 and back.n_experts == g.n_experts
    plain = back.derive("aura")
    assert plain.config.fdr is None and plain.n_experts == int((a > 0.5).sum())
    assert back.derive("det0", fdr=0.05).n_experts == g.n_experts
    control = shuffled_control(back.derive("det0"), seed=3)
    det0 = back.derive("det0")
    assert control.config.strategy == "random" and control.n_experts == det0.n_experts
    assert sorted(torch.cat(list(control.alphas.values())).tolist()) == sorted(torch.cat(list(det0.alphas.values())).tolist())
    assert not all(torch.equal(control.alphas[k], det0.alphas[k]) for k in det0.alphas)


def test_selection_rule_uses_validation_rows_only():
    rows = [{"defense": "none"},
            {"defense": "aura", "toxicity_cut": 1.3, "perplexity_change": 0.04},
            {"defense": "aura:fdr=0.05", "toxicity_cut": 1.6, "perplexity_change": 0.09},
            {"defense": "det0:top_k=2000", "toxicity_cut": 2.4, "perplexity_change": 0.30},
            {"defense": "random", "toxicity_cut": 3.0, "perplexity_change": 0.0},
            {"defense": "shuffled:aura", "toxicity_cut": 3.0, "perplexity_change": 0.0}]
    sel = select_on_validation(rows, 0.10)
    assert sel["selected"] == "aura:fdr=0.05" and set(sel["candidates"]) == {"aura", "aura:fdr=0.05", "det0:top_k=2000"}
    assert select_on_validation(rows, 0.5)["selected"] == "det0:top_k=2000"
    assert select_on_validation(rows[:2], 0.01)["selected"] is None
