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
