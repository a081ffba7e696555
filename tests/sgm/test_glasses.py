"""Fitting, wearing, folding, saving and loading glasses on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from safety_glasses import ConceptSet, Glasses, GlassesMismatchError, fit_glasses
from safety_glasses.generation import generate_texts, to_model_inputs
from safety_glasses.glasses import CONFIG_NAME, WEIGHTS_NAME
from safety_glasses.hooks import count_hooks
from safety_glasses.inputs import encode_rows
from safety_glasses.testing import tiny_image, tiny_vlm

from .helpers import plant_expert, planted_rows


def _inputs(model, processor, n=3, images=True):
    prompts = [f"what is in picture {i}" for i in range(n)]
    imgs = [[tiny_image(i)] if images else [] for i in range(n)]
    return to_model_inputs(encode_rows(processor, prompts, imgs, None, model_config=model.config).inputs, model)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def llava_fitted():
    model, proc = tiny_vlm("llava", seed=0)
    rows = planted_rows(40, seed=1)
    plant_expert(model, proc, rows, unit=5)
    glasses = fit_glasses(model, proc, ConceptSet.from_rows(rows), batch_size=8, progress=False)
    return model, proc, glasses


def test_planted_expert_is_found_and_switched_off(llava_fitted):
    model, proc, glasses = llava_fitted
    first = glasses.sites[0].module_name
    flat = torch.cat([glasses.aurocs[s.module_name] for s in glasses.sites])
    assert int(flat.argmax()) == 5 and float(flat.max()) == 1.0
    assert float(glasses.alphas[first][5]) < 0.05
    others = torch.cat([glasses.alphas[s.module_name] for s in glasses.sites])
    others = torch.cat([others[:5], others[6:]])
    assert float(others.median()) > 0.85
    assert glasses.summary()[0]["experts"] >= 1 and glasses.config.unit_kind == "act"


def test_planted_expert_text_only_model():
    model, tok = tiny_vlm("llama", seed=0)
    rows = planted_rows(40, seed=2, images=False)
    plant_expert(model, tok, rows, unit=7)
    glasses = fit_glasses(model, tok, rows, pooling="max", layers="0", batch_size=16, progress=False)
    assert len(glasses.sites) == 1
    au = glasses.aurocs[glasses.sites[0].module_name]
    assert int(au.argmax()) == 7 and float(au[7]) == 1.0


def test_hooked_and_folded_logits_agree(llava_fitted):
    model, proc, glasses = llava_fitted
    g = glasses.derive("aura", threshold=0.3)  # many experts, strong effect
    x = _inputs(model, proc)
    plain = _logits(model, x)
    with g.apply(model):
        hooked = _logits(model, x)
    assert count_hooks(model) == 0
    assert (hooked - plain).abs().max() > 1e-4
    folded_model, _ = tiny_vlm("llava", seed=0)
    folded_model.load_state_dict(model.state_dict())
    g.fold_into(folded_model)
    assert torch.allclose(_logits(folded_model, x), hooked, atol=1e-5)


@pytest.mark.parametrize("units", ["gate", "up", "down"])
def test_fold_equals_hook_for_module_outputs(units):
    model, proc = tiny_vlm("qwen2_vl", seed=1)
    rows = planted_rows(8, seed=3)
    g = fit_glasses(model, proc, rows, units=units, threshold=0.2, batch_size=4, progress=False)
    assert g.config.unit_kind == units and g.n_experts > 0
    x = _inputs(model, proc, n=2)
    with g.apply(model):
        hooked = _logits(model, x)
    g.fold_into(model)
    assert torch.allclose(_logits(model, x), hooked, atol=1e-5)


def test_save_load_round_trip(tmp_path, llava_fitted):
    model, proc, glasses = llava_fitted
    glasses.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    cfg = json.loads((tmp_path / "g" / CONFIG_NAME).read_text())
    for key in ("strategy", "threshold", "pooling", "positions", "unit_kind", "sites", "base_model",
                "transformers_version", "concepts", "expert_counts"):
        assert key in cfg
    assert cfg["base_model"]["class"] == "LlavaForConditionalGeneration" and cfg["base_model"]["fingerprint"]
    loaded = Glasses.from_pretrained(tmp_path / "g")
    assert loaded.sites == glasses.sites
    for n in glasses.alphas:
        assert torch.equal(loaded.alphas[n], glasses.alphas[n])
        assert torch.equal(loaded.aurocs[n], glasses.aurocs[n])
    x = _inputs(model, proc, n=2)
    with glasses.apply(model):
        a = _logits(model, x)
    with loaded.apply(model):
        b = _logits(model, x)
    assert torch.equal(a, b)


def test_mismatch_raises_before_touching_the_model(llava_fitted):
    _, _, glasses = llava_fitted
    other, _ = tiny_vlm("llama", seed=0)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(GlassesMismatchError, match="missing module"):
        with glasses.apply(other):
            pass
    with pytest.raises(GlassesMismatchError):
        glasses.fold_into(other)
    assert count_hooks(other) == 0
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_other_architecture_with_same_units_warns(llava_fitted):
    model, _, glasses = llava_fitted
    other, _ = tiny_vlm("qwen2_vl", seed=0)
    with pytest.warns(UserWarning, match="fitted on LlavaForConditionalGeneration"):
        with glasses.apply(other):
            pass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with glasses.apply(model):
            pass


def test_shape_mismatch_is_caught(llava_fitted):
    _, _, glasses = llava_fitted
    site = glasses.sites[0]
    wider, _ = tiny_vlm("llava", seed=0)
    down = dict(wider.named_modules())[site.module_name]
    down.weight = torch.nn.Parameter(torch.zeros(down.weight.shape[0], site.size + 2))
    with pytest.raises(GlassesMismatchError, match="units"):
        glasses.fold_into(wider)


def test_no_hook_left_after_an_exception(llava_fitted):
    model, _, glasses = llava_fitted
    with pytest.raises(RuntimeError, match="boom"):
        with glasses.apply(model):
            assert count_hooks(model) == len(glasses.sites)
            raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_generate_with_glasses_matches_folded_model(llava_fitted):
    model, proc, glasses = llava_fitted
    g = glasses.derive("det0", top_k=60)
    prompts, imgs = ["describe", "what is this"], [[tiny_image(1)], [tiny_image(2)]]
    with g.apply(model):
        worn = generate_texts(model, proc, prompts, imgs, max_new_tokens=6)
    folded, _ = tiny_vlm("llava", seed=0)
    folded.load_state_dict(model.state_dict())
    g.fold_into(folded)
    assert generate_texts(folded, proc, prompts, imgs, max_new_tokens=6) == worn


def test_positions_prompt_and_generated(llava_fitted):
    model, proc, glasses = llava_fitted
    g = glasses.derive("det0", top_k=100)
    x = _inputs(model, proc, n=2)
    plain = _logits(model, x)
    with g.apply(model, positions="generated"):  # a plain forward is a prefill: untouched
        assert torch.equal(_logits(model, x), plain)
    with g.apply(model, positions="prompt"):
        prompt_only = _logits(model, x)
    with g.apply(model):
        assert torch.allclose(_logits(model, x), prompt_only)
    assert (prompt_only - plain).abs().max() > 1e-4


def test_derive_random_control(llava_fitted):
    _, _, glasses = llava_fitted
    ctrl = glasses.derive("random", seed=5)
    assert ctrl.n_experts == glasses.n_experts and ctrl.config.strategy == "random"
    same = sum(int(((ctrl.alphas[n] < 1) & (glasses.alphas[n] < 1)).sum()) for n in glasses.alphas)
    assert same < glasses.n_experts  # other units than the experts


def test_bf16_model_fits_wears_and_folds():
    model, proc = tiny_vlm("gemma3", seed=0)
    model = model.to(torch.bfloat16)
    rows = planted_rows(8, seed=9)
    g = fit_glasses(model, proc, rows, threshold=0.3, batch_size=4, progress=False)
    assert all(torch.isfinite(a).all() for a in g.aurocs.values()) and g.n_experts > 0
    x = _inputs(model, proc, n=2)
    with g.apply(model):
        hooked = _logits(model, x)
    assert hooked.dtype == torch.bfloat16
    g.fold_into(model)
    assert torch.allclose(_logits(model, x).float(), hooked.float(), atol=0.1)


def test_clamp_and_selection_are_saved_and_derived(tmp_path):
    from safety_glasses.glasses import Glasses, GlassesConfig
    from safety_glasses.models import UnitSite

    site = UnitSite("m.down_proj", 0, "act", 4, "input")
    au = {"m.down_proj": torch.tensor([0.9, 0.45, 0.35, 0.2])}
    from safety_glasses.strategies import compute_alphas

    cfg = GlassesConfig(strategy="aura", sites=[site], threshold=0.3, clamp=False)
    g = Glasses(cfg, compute_alphas(au, "aura", threshold=0.3, clamp=False), au)
    assert g.n_experts == 3  # two amplified units count: the glasses change them
    g.save_pretrained(tmp_path / "g")
    back = Glasses.from_pretrained(tmp_path / "g")
    assert back.config.clamp is False and back.config.selection == "top-k"
    assert torch.allclose(back.alphas["m.down_proj"], torch.tensor([0.2, 1.1, 1.3, 1.0]))
    det0 = back.derive("det0", top_k=2, selection="ml-aura")
    assert det0.config.selection == "ml-aura" and det0.alphas["m.down_proj"].tolist() == [0.0, 0.0, 1.0, 1.0]
