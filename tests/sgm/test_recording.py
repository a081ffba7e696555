"""Recording pooled activations: pooling, masks, streaming to disk, resuming a killed run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import safety_glasses.recording as recording
from safety_glasses import ConceptSet
from safety_glasses.models import resolve_units
from safety_glasses.recording import Recording, RecordingError, pool, record_activations
from safety_glasses.testing import tiny_vlm

from .helpers import planted_rows


def test_pool_by_hand():
    x = torch.tensor([[[1.0], [2.0], [6.0]], [[4.0], [-1.0], [5.0]]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert pool(x, m, "mean").tolist() == [[1.5], [0.0]]
    assert pool(x, m, "max").tolist() == [[2.0], [0.0]]
    assert pool(x, m, "last").tolist() == [[2.0], [0.0]]
    m2 = torch.tensor([[False, True, True], [True, False, True]])
    assert pool(x, m2, "last").tolist() == [[6.0], [5.0]]
    with pytest.raises(ValueError):
        pool(x, m, "median")


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava", seed=0)


def test_recording_shapes_and_meta(tmp_path, llava):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(10, seed=4))
    sites = resolve_units(model, "act")
    rec = record_activations(model, proc, cs, sites, tmp_path, batch_size=4, progress=False)
    for s in sites:
        m = rec.matrix(s.module_name)
        assert m.shape == (10, s.size) and m.dtype == np.float16 and np.isfinite(m).all()
        assert np.abs(m).sum() > 0
    meta = json.loads((tmp_path / "recording.json").read_text())
    assert meta["rows_done"] == 10 and meta["labels"] == list(cs.labels)
    # same folder, other settings: refused rather than mixed
    with pytest.raises(RecordingError, match="different recording"):
        record_activations(model, proc, cs, sites, tmp_path, pooling="max", progress=False)


@pytest.mark.parametrize("positions", ["response", "image", "text"])
def test_positions_change_what_is_pooled(tmp_path, llava, positions):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(4, seed=5))
    sites = resolve_units(model, "act", layers="0")
    full = record_activations(model, proc, cs, sites, tmp_path / "all", progress=False)
    part = record_activations(model, proc, cs, sites, tmp_path / positions, positions=positions, progress=False)
    a, b = full.matrix(sites[0].module_name), part.matrix(sites[0].module_name)
    assert not np.allclose(a, b)


def test_batch_size_does_not_change_values(tmp_path, llava):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(6, seed=6))
    sites = resolve_units(model, "act", layers="1")
    a = record_activations(model, proc, cs, sites, tmp_path / "a", batch_size=1, progress=False)
    b = record_activations(model, proc, cs, sites, tmp_path / "b", batch_size=6, progress=False)
    name = sites[0].module_name
    np.testing.assert_allclose(a.matrix(name).astype(np.float32), b.matrix(name).astype(np.float32), atol=2e-3)


def test_killed_run_resumes_where_it_stopped(tmp_path, llava, monkeypatch):
    model, proc = llava
    cs = ConceptSet.from_rows(planted_rows(12, seed=7))
    sites = resolve_units(model, "act")
    ref = record_activations(model, proc, cs, sites, tmp_path / "ref", batch_size=4, progress=False)

    real, calls = recording.encode_rows, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(recording, "encode_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        record_activations(model, proc, cs, sites, tmp_path / "run", batch_size=4, progress=False)
    assert json.loads((tmp_path / "run" / "recording.json").read_text())["rows_done"] == 8
    with pytest.raises(RecordingError, match="incomplete"):
        Recording.open(tmp_path / "run")
    calls.clear()
    monkeypatch.setattr(recording, "encode_rows", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    done = record_activations(model, proc, cs, sites, tmp_path / "run", batch_size=4, progress=False)
    assert len(calls) == 1  # only the last batch was computed again
    for s in sites:
        assert np.array_equal(done.matrix(s.module_name), ref.matrix(s.module_name))
