"""AUROC against scikit-learn (the oracle), across dtypes, backends and chunkings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from safety_glasses.expertise import _position_sums_torch, auroc, gini, rank_units


def _reference(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    return np.array([roc_auc_score(labels, values[:, j]) for j in range(values.shape[1])])


def _torch_backend(scores: torch.Tensor, labels: np.ndarray, chunk: int) -> np.ndarray:
    """The accelerator code path, run on the CPU (the public API routes CPU work to NumPy)."""
    lab = np.asarray(labels, dtype=np.int32)
    n_pos, n = int(lab.sum()), lab.shape[0]
    sums = _position_sums_torch(scores, lab, chunk, torch.device("cpu")).numpy()
    return (sums / 2 - n_pos * (n_pos - 1) / 2) / (n_pos * (n - n_pos))


@st.composite
def _tied_problem(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1  # both classes present
    levels = draw(st.integers(1, 6))  # few distinct values: many ties
    scale = draw(st.sampled_from([1.0, 0.5, 1e-3, 300.0]))
    scores = rng.integers(-levels, levels + 1, (n, d)).astype(np.float64) * scale
    scores[rng.random((n, d)) < 0.1] *= -1  # introduces -0.0 next to +0.0
    chunk = draw(st.integers(1, d + 3))
    return scores, labels, chunk


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tied_problem(), st.sampled_from(["float16", "float32", "float64", "bfloat16"]))
def test_auroc_matches_sklearn_with_ties(problem: tuple, dtype: str) -> None:
    scores, labels, chunk = problem
    if dtype == "bfloat16":
        tensor = torch.from_numpy(scores).to(torch.bfloat16)
        values = tensor.to(torch.float64).numpy()
        expected = _reference(values, labels)
        got = auroc(tensor, torch.from_numpy(labels), chunk_size=chunk)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(_torch_backend(tensor, labels, chunk), expected, atol=1e-6, rtol=0)
        return
    x = scores.astype(dtype)
    expected = _reference(x, labels)  # the values as given (float16 upcast exactly)
    got_np = auroc(x, labels.astype(bool), chunk_size=chunk)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float64 and got_np.shape == (x.shape[1],)
    np.testing.assert_allclose(got_np, expected, atol=1e-6, rtol=0)
    got_t = auroc(torch.from_numpy(x), torch.from_numpy(labels), chunk_size=chunk)
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        _torch_backend(torch.from_numpy(x), labels, chunk), expected, atol=1e-6, rtol=0
    )


def test_auroc_random_float16_matrix_and_memmap(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 70)).astype(np.float16)
    labels = rng.integers(0, 2, 300)
    path = tmp_path / "scores.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    got = auroc(np.memmap(path, dtype=np.float16, mode="r", shape=x.shape), labels, chunk_size=16)
    np.testing.assert_allclose(got, _reference(x, labels), atol=1e-6, rtol=0)


def test_constant_perfect_and_reversed_columns() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    x = np.array(
        [[3, 0, 9, -0.0], [3, 1, 8, 0.0], [3, 2, 7, 0.0], [3, 3, 6, -0.0], [3, 4, 5, 0.0]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(auroc(x, labels), [0.5, 1.0, 0.0, 0.5])
    np.testing.assert_array_equal(auroc(x.astype(np.float16), labels), [0.5, 1.0, 0.0, 0.5])
    np.testing.assert_array_equal(_torch_backend(torch.from_numpy(x), labels, 3), [0.5, 1.0, 0.0, 0.5])


def test_infinities_are_ordered() -> None:
    labels = np.array([0, 1, 0, 1])
    for dtype in (np.float16, np.float32, np.float64):
        # positives {inf, 1}, negatives {-inf, inf}: (1 + 0.5 + 1 + 0) / 4 (sklearn rejects inf)
        x = np.array([[-np.inf], [np.inf], [np.inf], [1.0]], dtype=dtype)
        np.testing.assert_array_equal(auroc(x, labels), [0.625])


def test_float64_exact_and_inexact_in_float32_chunks() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    x = rng.integers(-3, 4, (60, 6)).astype(np.float64)  # exact in float32: the fast key path
    x[:, 2] += 1e-12 * rng.integers(0, 2, 60)  # not exact in float32: the arg-sort path
    x[:, 4] *= 1e300  # overflows float32: must not be cast
    with np.errstate(all="raise"):  # no floating-point warnings escape
        for chunk in (1, 2, None):
            np.testing.assert_allclose(auroc(x, labels, chunk_size=chunk), _reference(x, labels), atol=1e-12)


def test_empty_units_and_integer_scores() -> None:
    labels = np.array([0, 1])
    assert auroc(np.zeros((2, 0), dtype=np.float16), labels).shape == (0,)
    np.testing.assert_array_equal(auroc(np.array([[1], [2]]), labels), [1.0])


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.zeros((4, 3)), np.array([0, 1, 1]), "shape mismatch"),
        (np.zeros(4), np.array([0, 1, 1, 0]), "shape mismatch"),
        (np.zeros((4, 3)), np.array([1, 1, 1, 1]), "single class"),
        (np.zeros((4, 3)), np.array([0, 1, 2, 0]), "0/1"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]), "NaN"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float16), np.array([0, 1]), "NaN"),
        (np.array([[0.0, -np.nan], [1.0, 2.0]], dtype=np.float32), np.array([0, 1]), "NaN"),
    ],
)
def test_auroc_errors(scores: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auroc(scores, labels)


def test_nan_error_names_the_column_for_each_path() -> None:
    x = np.zeros((3, 5), dtype=np.float32)
    x[1, 3] = np.nan
    for data in (x, x.astype(np.float16), x.astype(np.float64), torch.from_numpy(x).to(torch.bfloat16)):
        with pytest.raises(ValueError, match="column 3"):
            auroc(data, [0, 1, 0], chunk_size=2)
    with pytest.raises(ValueError, match="column 3"):
        _torch_backend(torch.from_numpy(x).half(), np.array([0, 1, 0]), 2)


def test_gini_same_type() -> None:
    np.testing.assert_array_equal(gini(np.array([0.5, 1.0, 0.0])), [0.0, 1.0, -1.0])
    out = gini(torch.tensor([0.75], dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.item() == 0.5


def test_rank_units_orders_globally_with_deterministic_ties() -> None:
    aurocs = {
        "layers.0": np.array([0.9, 0.5, 0.7]),
        "layers.1": torch.tensor([0.95, 0.9, 0.2], dtype=torch.float64),
    }
    assert rank_units(aurocs) == [
        ("layers.1", 0, 0.95),
        ("layers.0", 0, 0.9),
        ("layers.1", 1, 0.9),
        ("layers.0", 2, 0.7),
    ]  # 0.5 is not > threshold 0.5
    assert rank_units(aurocs, top_k=2) == [("layers.1", 0, 0.95), ("layers.0", 0, 0.9)]
    assert rank_units(aurocs, threshold=0.92) == [("layers.1", 0, 0.95)]
    assert rank_units({}) == []


def test_single_thread_and_threaded_runs_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import safety_glasses.expertise as expertise

    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, (50, 23)).astype(np.float16)
    labels = rng.integers(0, 2, 50)
    labels[:2] = [0, 1]
    threaded = auroc(x, labels, chunk_size=4)
    monkeypatch.setattr(expertise, "MAX_THREADS", 1)
    np.testing.assert_array_equal(auroc(x, labels, chunk_size=4), threaded)
    np.testing.assert_allclose(threaded, _reference(x, labels), atol=1e-6, rtol=0)
    x[7, 21] = np.nan
    x[30, 9] = np.nan
    monkeypatch.setattr(expertise, "MAX_THREADS", 4)
    with pytest.raises(ValueError, match="column 9"):
        auroc(x, labels, chunk_size=2)
