"""Zero-forcing physical layer: hand-computed cases, forged CSI, vectorised tables, subset codec."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from fggm.mimo import SubsetCodec, all_subsets_se, inv_hpd, jain, single_user_se, subset_se, zf_se, zf_sinr


def _crandn(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def test_orthogonal_channels_have_no_interference() -> None:
    H = np.zeros((4, 2), dtype=complex)
    H[0, 0], H[1, 1] = 2.0, 1j * 3.0
    np.testing.assert_allclose(zf_sinr(H, H, noise_var=0.5), [4 / 0.5, 9 / 0.5])
    np.testing.assert_allclose(zf_se(H, H), np.log2([5.0, 10.0]))


def test_two_users_hand_computed() -> None:
    # h1 = [1, 0], h2 = [1, 1]: Gram = [[1, 1], [1, 2]], inverse [[2, -1], [-1, 1]]
    H = np.array([[1.0, 1.0], [0.0, 1.0]], dtype=complex)
    np.testing.assert_allclose(zf_sinr(H, H), [0.5, 1.0])
    np.testing.assert_allclose(zf_se(H, H), [np.log2(1.5), 1.0])


def test_noise_free_limit_truthful_and_forged() -> None:
    G_true = np.eye(2, dtype=complex)
    # truthful: SINR = 1 / noise
    np.testing.assert_allclose(zf_sinr(G_true, G_true, noise_var=1e-9), [1e9, 1e9], rtol=1e-6)
    # user 2 reports [1, 1]: W = [[1, -1], [0, 1]], A = W G_true: user 1 sees interference 1,
    # so its SINR tends to 1 (interference-limited); user 2 is unaffected (SINR = 1 / noise)
    G_rep = np.array([[1.0, 1.0], [0.0, 1.0]], dtype=complex)
    sinr = zf_sinr(G_true, G_rep, noise_var=1e-9)
    assert abs(sinr[0] - 1.0) < 1e-6 and abs(sinr[1] - 1e9) / 1e9 < 1e-6


def test_textbook_zf_equals_inverse_formula() -> None:
    rng = np.random.default_rng(0)
    H = _crandn(rng, (5, 8, 3)) * 2
    inv = np.linalg.inv(np.conj(np.swapaxes(H, -1, -2)) @ H)
    expected = 1.0 / np.real(np.diagonal(inv, axis1=-2, axis2=-1))
    np.testing.assert_allclose(zf_sinr(H, H), expected, rtol=1e-9)


def test_forged_csi_hurts_the_other_users() -> None:
    rng = np.random.default_rng(1)
    drops = []
    for _ in range(200):
        H = _crandn(rng, (8, 4)) * 3
        rep = H.copy()
        rep[:, 0] = _crandn(rng, 8) * 3  # user 0 forges its report
        se_true = subset_se(H, H, [0, 1, 2, 3])
        se_forged = subset_se(H, rep, [0, 1, 2, 3])
        drops.append(se_true[1:].sum() - se_forged[1:].sum())
    assert np.mean(drops) > 1.0


def test_single_user_se_and_jain() -> None:
    H = np.array([[3.0, 0.0], [4.0, 1.0]], dtype=complex)
    np.testing.assert_allclose(single_user_se(H), np.log2([26.0, 2.0]))
    assert jain(np.array([2.0, 2.0, 2.0])) == pytest.approx(1.0)
    assert jain(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert jain(np.zeros(3)) == 0.0
    np.testing.assert_allclose(jain(np.array([[1.0, 1.0], [1.0, 0.0]])), [1.0, 0.5])


def test_inv_hpd_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    X = _crandn(rng, (50, 6, 4))
    A = np.conj(np.swapaxes(X, -1, -2)) @ X
    np.testing.assert_allclose(inv_hpd(A), np.linalg.inv(A), atol=1e-10)


@pytest.mark.parametrize("forged", [False, True])
def test_all_subsets_table_matches_per_subset(forged: bool) -> None:
    rng = np.random.default_rng(3)
    codec = SubsetCodec(6, 3)
    H = _crandn(rng, (2, 5, 6)) * 2
    rep = H.copy()
    if forged:
        rep[:, :, 2] = _crandn(rng, (2, 5))
    table = all_subsets_se(H, rep, codec)
    assert table.shape == (2, codec.n, 6)
    for i, sub in enumerate(codec.subsets):
        np.testing.assert_allclose(table[:, i], subset_se(H, rep, sub), atol=1e-9)
        assert np.all(table[:, i, [u for u in range(6) if u not in sub]] == 0)


def test_zero_forged_channel_is_finite() -> None:
    rng = np.random.default_rng(4)
    H = _crandn(rng, (4, 3))
    rep = H.copy()
    rep[:, 1] = 0
    se = subset_se(H, rep, [0, 1, 2])
    assert np.all(np.isfinite(se)) and se[1] == 0.0


def test_codec_is_an_ordered_bijection() -> None:
    c = SubsetCodec(16, 4)
    assert c.n == 2516 == len(set(c.subsets))
    expected = [s for k in range(1, 5) for s in combinations(range(16), k)]
    assert c.subsets == expected  # size first, then lexicographic
    for i in [0, 1, 15, 16, 135, 136, 695, 696, 2515]:
        assert c.subset_to_index(c.index_to_subset(i)) == i
        assert c.action_to_index(c.index_to_action(i)) == i
        lo, hi = c.action_range(i)
        assert c.action_to_index(lo + 1e-9) == i and c.action_to_index(hi - 1e-9) == i
    assert c.subset_to_index([3, 1]) == c.subset_to_index((1, 3))
    assert c.action_to_index(-5.0) == 0 and c.action_to_index(5.0) == 2515
    assert c.masks.sum(axis=1).tolist() == [len(s) for s in c.subsets]
    with pytest.raises(ValueError):
        c.subset_to_index([1, 2, 3, 4, 5])
    with pytest.raises(IndexError):
        c.index_to_subset(2516)
