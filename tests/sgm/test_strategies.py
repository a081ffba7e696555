"""Per-unit alphas from AUROC: the four strategies."""

import pytest
import torch

from safety_glasses.strategies import compute_alphas


def _aurocs():
    return {"a": torch.tensor([0.95, 0.5, 0.6, 0.1]), "b": torch.tensor([0.8, 0.3, 0.99, 0.51])}


def test_aura_is_one_minus_gini_above_threshold():
    al = compute_alphas(_aurocs(), "aura", threshold=0.5)
    assert torch.allclose(al["a"], torch.tensor([0.1, 1.0, 0.8, 1.0]), atol=1e-6)
    assert torch.allclose(al["b"], torch.tensor([0.4, 1.0, 0.02, 0.98]), atol=1e-6)
    al = compute_alphas(_aurocs(), "aura", threshold=0.7)
    assert torch.allclose(al["a"], torch.tensor([0.1, 1.0, 1.0, 1.0]), atol=1e-6)


def test_det0_and_damp_hit_the_global_top_k():
    al = compute_alphas(_aurocs(), "det0", top_k=2)
    assert al["a"].tolist() == [0.0, 1.0, 1.0, 1.0] and al["b"].tolist() == [1.0, 1.0, 0.0, 1.0]
    al = compute_alphas(_aurocs(), "damp", top_k=3, damp_alpha=0.3)
    assert torch.allclose(al["b"], torch.tensor([0.3, 1.0, 0.3, 1.0]))
    # default k: strong experts (AUROC >= 0.75) -> 0.95, 0.8, 0.99
    al = compute_alphas(_aurocs(), "det0")
    assert sum(int((v == 0).sum()) for v in al.values()) == 3


def test_random_control_has_same_count_and_values_as_aura():
    au = {"m": torch.rand(500, generator=torch.Generator().manual_seed(0))}
    aura = compute_alphas(au, "aura")["m"]
    rnd = compute_alphas(au, "random", seed=3)["m"]
    assert int((rnd < 1).sum()) == int((aura < 1).sum())
    assert torch.allclose(rnd[rnd < 1].sort().values, aura[aura < 1].sort().values)
    assert not torch.equal(rnd, aura)
    assert torch.equal(rnd, compute_alphas(au, "random", seed=3)["m"])
    assert not torch.equal(rnd, compute_alphas(au, "random", seed=4)["m"])


@pytest.mark.parametrize("kw", [{"strategy": "nope"}, {"threshold": 1.0}, {"top_k": 99}, {"damp_alpha": 2.0}])
def test_bad_arguments(kw):
    strategy = kw.pop("strategy", "det0")
    with pytest.raises(ValueError):
        compute_alphas(_aurocs(), strategy, **kw)


def test_threshold_below_half_is_explicit_clamp_false_amplifies():
    au = {"m": torch.tensor([0.9, 0.45, 0.35, 0.2])}
    with pytest.warns(UserWarning, match="threshold 0.3 has no effect with clamp=True"):
        clamped = compute_alphas(au, "aura", threshold=0.3)
    assert torch.equal(clamped["m"], compute_alphas(au, "aura", threshold=0.5)["m"])
    free = compute_alphas(au, "aura", threshold=0.3, clamp=False)["m"]  # the SGM authors' variant
    assert torch.allclose(free, torch.tensor([0.2, 1.1, 1.3, 1.0]), atol=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where the threshold matters
        compute_alphas(au, "aura", threshold=0.3, clamp=False)
        compute_alphas(au, "aura", threshold=0.6)
    rnd = compute_alphas(au, "random", threshold=0.3, clamp=False, seed=1)["m"]
    assert sorted(rnd[rnd != 1].tolist()) == pytest.approx(sorted(free[free != 1].tolist()))


def _ml_aura_reference(values, k, threshold=0.5):
    """apple/ml-aura's det0 rule written out: cut at the (k+1)-th largest AUROC, keep those strictly above."""
    ordered = sorted(values, reverse=True)
    cut = threshold if k is None else ordered[k]
    return [v > cut for v in values]


@pytest.mark.parametrize("k", [None, 1, 2, 3, 5])
def test_ml_aura_selection_matches_its_tie_rule(k):
    values = [0.9, 0.8, 0.8, 0.7, 0.4, 0.55]
    al = compute_alphas({"m": torch.tensor(values)}, "det0", top_k=k, selection="ml-aura")["m"]
    assert (al == 0).tolist() == _ml_aura_reference(values, k)
    damp = compute_alphas({"m": torch.tensor(values)}, "damp", top_k=k, damp_alpha=0.25, selection="ml-aura")["m"]
    assert (damp == 0.25).tolist() == _ml_aura_reference(values, k)
    if k == 2:  # the tie at the cut leaves one unit, where top-k takes exactly two
        assert int((al == 0).sum()) == 1
        assert int((compute_alphas({"m": torch.tensor(values)}, "det0", top_k=2)["m"] == 0).sum()) == 2


def test_ml_aura_selection_default_threshold_and_bad_name():
    al = compute_alphas({"m": torch.tensor([0.51, 0.5, 0.2, 0.7])}, "det0", selection="ml-aura", threshold=0.6)
    assert al["m"].tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="selection must be one of"):
        compute_alphas({"m": torch.tensor([0.5])}, "det0", selection="nope")
