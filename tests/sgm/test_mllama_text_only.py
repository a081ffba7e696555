"""Llama-3.2-Vision (Mllama) skips its cross-attention layers' MLP without images: recording keeps what
runs, AUROC uses the rows where a unit ran, and layers that never ran on both classes are left out
(for `fit` and for the `aura-text` baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safety_glasses.concepts import ConceptSet
from safety_glasses.expertise import auroc
from safety_glasses.fitting import fit_glasses
from safety_glasses.generation import generate_texts
from safety_glasses.models import resolve_units
from safety_glasses.recording import Recording, record_activations
from safety_glasses.testing import tiny_concept_rows, tiny_vlm

CROSS = "model.language_model.layers.1.mlp.down_proj"  # tiny Mllama: layer 1 is a cross-attention layer


def test_text_only_rows_fit_without_the_cross_attention_layer() -> None:
    model, proc = tiny_vlm("mllama")
    rows = tiny_concept_rows(8, with_images=False)
    with pytest.warns(UserWarning, match=r"decoder layer\(s\) 1: the MLP did not run"):
        g = fit_glasses(model, proc, rows, batch_size=4, progress=False)
    assert [s.layer for s in g.sites] == [0, 2] and CROSS not in g.alphas
    assert g.config.concepts["skipped_sites"][0]["module"] == CROSS
    with g.apply(model):  # the glasses are worn on the layers that run
        out = generate_texts(model, proc, ["hello"], [[]], max_new_tokens=2)
    assert len(out) == 1


def test_mixed_rows_score_the_cross_attention_layer_on_image_rows_only(tmp_path) -> None:
    model, proc = tiny_vlm("mllama")
    raw = tiny_concept_rows(12)
    for r in raw[::3]:
        r["image"] = None  # rows 0, 3, 6, 9 are text-only (both labels among them)
    cs = ConceptSet.from_rows(raw)
    sites = resolve_units(model, "act")
    rec = record_activations(model, proc, cs, sites, tmp_path / "a", batch_size=4, progress=False)
    ran = rec.ran(CROSS)
    assert ran.tolist() == [bool(r.images) for r in cs]
    assert rec.meta["site_rows"] == [12, 8, 12]
    one = record_activations(model, proc, cs, sites, tmp_path / "b", batch_size=1, progress=False)
    for s in sites:  # a row records the same values whatever it is batched with
        a, b = np.asarray(rec.matrix(s.module_name), np.float32), np.asarray(one.matrix(s.module_name), np.float32)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.allclose(np.nan_to_num(a), np.nan_to_num(b), atol=2e-2)
    g = fit_glasses(model, proc, cs, batch_size=4, progress=False, record_dir=tmp_path / "a")
    expected = auroc(np.asarray(rec.matrix(CROSS))[ran], cs.labels[ran])
    assert torch.allclose(g.aurocs[CROSS], torch.as_tensor(expected).float())
    assert g.config.concepts["rows_scored"] == {CROSS: 8}
    assert Recording.open(tmp_path / "a").ran(sites[0].module_name).all()


def test_aura_text_baseline_on_mllama(tmp_path) -> None:
    from safety_glasses.eval.defenses import DefenseContext, parse_defenses

    model, proc = tiny_vlm("mllama")
    path = ConceptSet.from_rows(tiny_concept_rows(8)).to_jsonl(tmp_path / "c.jsonl")
    ctx = DefenseContext(model=model, processor=proc, concepts=path, cache_dir=tmp_path / "cache", batch_size=4)
    with pytest.warns(UserWarning, match="did not run"):
        stack = parse_defenses("aura-text", ctx)
    glasses = stack.defenses[0].glasses
    assert CROSS not in glasses.alphas and len(glasses.sites) == 2
