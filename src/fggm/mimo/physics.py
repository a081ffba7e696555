"""Uplink MU-MIMO physical layer: zero-forcing from REPORTED CSI, signals through TRUE channels.

Model (noise power ``noise_var``, unit transmit power, channels carry the large-scale gain):
``y = G_true[:, S] x + n``; the base station builds ``W = (G_rep_S^H G_rep_S)^-1 G_rep_S^H`` from
what users reported. With ``A = W G_true_S = Gram^-1 C`` (``Gram = G_rep_S^H G_rep_S``,
``C = G_rep_S^H G_true_S``) the SINR of scheduled user ``k`` is
``|A_kk|^2 / (sum_{j != k} |A_kj|^2 + noise_var * [Gram^-1]_kk)`` and its SE ``log2(1 + SINR)``.
With reported = true, ``A = I`` and this is textbook ZF: ``SINR_k = 1 / (noise_var [Gram^-1]_kk)``.
Everything needs only the K x K matrices ``G_rep^H G_rep`` and ``G_rep^H G_true``, so all N
candidate subsets of a TTI are evaluated with small batched inverses (precomputed index arrays).

Example:
    >>> import numpy as np
    >>> H = np.eye(4, 2, dtype=complex) * 3.0   # two orthogonal users, |h|^2 = 9
    >>> zf_sinr(H, H).round(6).tolist()
    [9.0, 9.0]
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import numpy as np

_EPS = 1e-12


class SubsetCodec:
    """The N non-empty subsets of at most S of K users, ordered by size, then lexicographically.

    Index ``i`` in ``[0, N)`` <-> sorted tuple of users. A scalar action ``a`` in [-1, 1] maps to the
    nearest index on the evenly spaced grid ``a_i = -1 + 2 i / (N - 1)``:
    ``i = round((a + 1) / 2 * (N - 1))``.

    Example:
        >>> c = SubsetCodec(16, 4)
        >>> c.n, c.index_to_subset(0), c.index_to_subset(16), c.index_to_subset(c.n - 1)
        (2516, (0,), (0, 1), (12, 13, 14, 15))
        >>> c.action_to_index(c.index_to_action(1234))
        1234
    """

    def __init__(self, num_users: int, max_scheduled: int) -> None:
        if not 1 <= max_scheduled <= num_users:
            raise ValueError(f"need 1 <= S <= K, got S={max_scheduled}, K={num_users}")
        self.K = num_users
        self.S = max_scheduled
        self.subsets: list[tuple[int, ...]] = []
        #: per size s: (offset of the first subset of size s, index array [C(K, s), s])
        self.by_size: list[tuple[int, np.ndarray]] = []
        for s in range(1, max_scheduled + 1):
            combos = list(combinations(range(num_users), s))
            self.by_size.append((len(self.subsets), np.asarray(combos, dtype=np.int64).reshape(len(combos), s)))
            self.subsets.extend(combos)
        self.n = len(self.subsets)
        self._index = {sub: i for i, sub in enumerate(self.subsets)}
        self.masks = np.zeros((self.n, num_users), dtype=bool)
        for i, sub in enumerate(self.subsets):
            self.masks[i, list(sub)] = True
        self.sizes = self.masks.sum(axis=1)
        #: per size s >= 2: [C(K, s), s] local index (within size s-1) of the subset without its j-th user
        self.drop_one: dict[int, np.ndarray] = {}
        for s, (offset, idx) in enumerate(self.by_size, start=1):
            if s >= 2:
                prev_offset = self.by_size[s - 2][0]
                self.drop_one[s] = np.array(
                    [[self._index[sub[:j] + sub[j + 1 :]] - prev_offset for j in range(s)] for sub in map(tuple, idx)],
                    dtype=np.int64,
                ).reshape(len(idx), s)

    def __len__(self) -> int:
        return self.n

    def index_to_subset(self, index: int) -> tuple[int, ...]:
        """Subset (sorted tuple of user ids) at ``index``."""
        if not 0 <= int(index) < self.n:
            raise IndexError(f"subset index {index} outside [0, {self.n})")
        return self.subsets[int(index)]

    def subset_to_index(self, subset: Iterable[int]) -> int:
        """Index of a subset given in any order (duplicates, empty or oversize subsets are errors)."""
        key = tuple(sorted(int(u) for u in subset))
        if key not in self._index:
            raise ValueError(f"{key} is not a subset of 1..{self.S} distinct users among {self.K}")
        return self._index[key]

    def action_to_index(self, action: float | np.ndarray) -> int:
        """Nearest subset index of a scalar action in [-1, 1] (clipped)."""
        a = float(np.clip(np.asarray(action, dtype=float).reshape(-1)[0], -1.0, 1.0))
        if self.n == 1:
            return 0
        return int(np.clip(np.rint((a + 1.0) / 2.0 * (self.n - 1)), 0, self.n - 1))

    def index_to_action(self, index: int) -> float:
        """Grid point of ``index`` in [-1, 1] (maps back to ``index`` under :meth:`action_to_index`)."""
        if not 0 <= int(index) < self.n:
            raise IndexError(f"subset index {index} outside [0, {self.n})")
        return 0.0 if self.n == 1 else -1.0 + 2.0 * int(index) / (self.n - 1)

    def action_range(self, index: int) -> tuple[float, float]:
        """Interval of actions that map to ``index`` (closed-open apart from the ends)."""
        half = 0.0 if self.n == 1 else 1.0 / (self.n - 1)
        a = self.index_to_action(index)
        return max(-1.0, a - half), min(1.0, a + half)


def jain(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)``; 0 where all entries are 0.

    Example:
        >>> float(jain(np.array([1.0, 1.0, 1.0, 1.0]))), float(jain(np.array([1.0, 0, 0, 0])))
        (1.0, 0.25)
    """
    x = np.asarray(x, dtype=float)
    s1 = x.sum(axis=axis)
    s2 = (x * x).sum(axis=axis)
    n = x.shape[axis]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(s2 > 0, s1 * s1 / (n * np.where(s2 > 0, s2, 1.0)), 0.0)
    return out


def single_user_se(H: np.ndarray, noise_var: float = 1.0) -> np.ndarray:
    """SE of each user served alone (MRC): ``log2(1 + ||h_k||^2 / noise_var)``; ``H`` is ``[..., M, K]``.

    Example:
        >>> float(single_user_se(np.ones((4, 1), dtype=complex))[0])   # log2(1 + 4)
        2.321928094887362
    """
    return np.log2(1.0 + np.sum(np.abs(H) ** 2, axis=-2) / noise_var)


def inv_hpd(A: np.ndarray) -> np.ndarray:
    """Inverse of a batch of Hermitian positive-definite matrices ``[..., s, s]`` (Gauss-Jordan).

    No pivoting is needed for positive-definite matrices; for the tiny ``s`` of scheduling (<= 8)
    this vectorised elimination is several times faster than ``np.linalg.inv`` on a batch.

    Example:
        >>> A = np.array([[2.0, 1.0], [1.0, 2.0]], dtype=complex)
        >>> bool(np.allclose(inv_hpd(A) @ A, np.eye(2)))
        True
    """
    s = A.shape[-1]
    if s == 1:
        return 1.0 / A
    batch = A.shape[:-2]
    # batch-last layout [s, 2s, B]: every operation runs on contiguous vectors of length B
    a = np.moveaxis(A.reshape(-1, s, s), 0, -1)
    aug = np.concatenate([a, np.broadcast_to(np.eye(s, dtype=A.dtype)[:, :, None], a.shape)], axis=1)
    for p in range(s):
        row = aug[p] / aug[p, p]
        aug -= aug[:, p][:, None, :] * row[None]
        aug[p] = row
    return np.moveaxis(aug[:, s:], -1, 0).reshape(batch + (s, s))


def _sinr_from_grams(gram: np.ndarray, cross: np.ndarray, noise_var: float) -> np.ndarray:
    """SINR from ``gram = G_rep_S^H G_rep_S`` and ``cross = G_rep_S^H G_true_S`` ([..., s, s])."""
    s = gram.shape[-1]
    scale = np.real(np.trace(gram, axis1=-2, axis2=-1))[..., None, None] / s
    reg = np.eye(s) * (_EPS * np.maximum(scale, _EPS))
    inv = inv_hpd(gram + reg)
    A = inv @ cross
    p = np.abs(A) ** 2
    signal = np.diagonal(p, axis1=-2, axis2=-1)
    interference = p.sum(axis=-1) - signal
    noise = noise_var * np.real(np.diagonal(inv, axis1=-2, axis2=-1))
    denom = interference + noise
    with np.errstate(divide="ignore", invalid="ignore"):
        sinr = np.where(denom > 0, signal / np.where(denom > 0, denom, 1.0), np.where(signal > 0, np.inf, 0.0))
    return np.maximum(sinr, 0.0)


def zf_sinr(H_true: np.ndarray, H_rep: np.ndarray, noise_var: float = 1.0) -> np.ndarray:
    """Per-user SINR of the scheduled users, ZF built from ``H_rep``; inputs ``[..., M, s]``.

    Example:
        >>> import numpy as np
        >>> h = np.array([[1.0, 1.0], [0.0, 1.0]], dtype=complex)  # two users, 2 antennas
        >>> zf_sinr(h, h).round(6).tolist()        # 1 / [(H^H H)^-1]_kk
        [0.5, 1.0]
    """
    Hr_h = np.conj(np.swapaxes(H_rep, -1, -2))
    return _sinr_from_grams(Hr_h @ H_rep, Hr_h @ H_true, noise_var)


def zf_se(H_true: np.ndarray, H_rep: np.ndarray, noise_var: float = 1.0) -> np.ndarray:
    """Per-user SE ``log2(1 + SINR)`` of the scheduled users (columns of ``[..., M, s]``).

    Example:
        >>> zf_se(np.eye(2, dtype=complex), np.eye(2, dtype=complex)).round(9).tolist()
        [1.0, 1.0]
    """
    return np.log2(1.0 + zf_sinr(H_true, H_rep, noise_var))


def subset_se(H_true: np.ndarray, H_rep: np.ndarray, subset: Sequence[int], noise_var: float = 1.0) -> np.ndarray:
    """SE of every user ``[..., K]`` when ``subset`` is scheduled (0 for users not scheduled).

    Example:
        >>> H = np.eye(3, dtype=complex)
        >>> subset_se(H, H, [0, 2]).round(9).tolist()
        [1.0, 0.0, 1.0]
    """
    idx = np.asarray(sorted(subset), dtype=np.int64)
    out = np.zeros(H_true.shape[:-2] + (H_true.shape[-1],))
    out[..., idx] = zf_se(H_true[..., idx], H_rep[..., idx], noise_var)
    return out


def _inv_batch_last(a: np.ndarray) -> np.ndarray:
    """Gauss-Jordan inverse of Hermitian positive-definite matrices stored batch-last ``[s, s, B]``."""
    s = a.shape[0]
    if s == 1:
        return 1.0 / a
    aug = np.concatenate([a, np.broadcast_to(np.eye(s, dtype=a.dtype)[:, :, None], a.shape)], axis=1)
    for p in range(s):
        row = aug[p] / aug[p, p]
        aug -= aug[:, p][:, None, :] * row[None]
        aug[p] = row
    return aug[:, s:]


def _subset_se_one_tti(gram_full: np.ndarray, cross_full: np.ndarray | None, it: np.ndarray, noise_var: float) -> np.ndarray:
    """SE ``[s, C]`` of the C subsets whose users are the columns of ``it`` ([s, C]) in one TTI."""
    s = it.shape[0]
    g = gram_full[it[:, None, :], it[None, :, :]]  # [s, s, C]
    diag = np.real(g[np.arange(s), np.arange(s)])  # [s, C]
    eps = _EPS * np.maximum(diag.mean(axis=0), _EPS)
    g = g.copy()
    g[np.arange(s), np.arange(s)] += eps
    inv = _inv_batch_last(g)
    inv_diag = np.real(inv[np.arange(s), np.arange(s)])
    if cross_full is None:  # reported == true: textbook ZF, A = I
        with np.errstate(divide="ignore"):
            sinr = 1.0 / (noise_var * np.maximum(inv_diag, 0.0))
        return np.log2(1.0 + sinr)
    c = cross_full[it[:, None, :], it[None, :, :]]
    A = np.einsum("ijb,jkb->ikb", inv, c)
    p = A.real**2 + A.imag**2
    signal = p[np.arange(s), np.arange(s)]
    denom = p.sum(axis=1) - signal + noise_var * inv_diag
    with np.errstate(divide="ignore", invalid="ignore"):
        sinr = np.where(denom > 0, signal / np.where(denom > 0, denom, 1.0), np.where(signal > 0, np.inf, 0.0))
    return np.log2(1.0 + np.maximum(sinr, 0.0))


def _predicted_table(gram: np.ndarray, codec: SubsetCodec, noise_var: float) -> np.ndarray:
    """Textbook-ZF SE of every subset ``[N, K]`` from one TTI's Gram matrix ``H^H H`` ([K, K]).

    ``1 / [G_S^-1]_kk`` is the energy of ``h_k`` left after projecting out the other users of S
    (``R = S - {k}``): ``g_kk - g_kR G_R^-1 g_Rk``. These residuals are computed once for every
    subset R of size s-1 and every user k, so only subsets of size <= S-1 are ever inverted.
    """
    K = codec.K
    diag = np.real(np.diagonal(gram)).copy()
    out = np.zeros((codec.n, K))
    offset1, idx1 = codec.by_size[0]
    out[offset1 + np.arange(K), idx1[:, 0]] = np.log2(1.0 + np.maximum(diag[idx1[:, 0]], 0.0) / noise_var)
    residual = None  # residual[c, k] for the subsets of the previous size
    for s in range(2, codec.S + 1):
        r_off, r_idx = codec.by_size[s - 2]
        r = s - 1
        it = np.ascontiguousarray(r_idx.T)  # [r, C_r]
        g_rr = gram[it[:, None, :], it[None, :, :]]  # [r, r, C_r]
        d = np.arange(r)
        g_rr[d, d] += _EPS * np.maximum(np.real(g_rr[d, d]).mean(axis=0), _EPS)
        inv = _inv_batch_last(g_rr)  # [r, r, C_r]
        g_rk = gram[it, :]  # [r, C_r, K]
        y = inv[:, 0][:, :, None] * g_rk[0][None]  # y[i] = sum_j inv[i, j] g_rk[j], as [r, C_r, K]
        for j in range(1, r):
            y = y + inv[:, j][:, :, None] * g_rk[j][None]
        residual = diag[None, :] - (g_rk.real * y.real + g_rk.imag * y.imag).sum(axis=0)
        offset, idx = codec.by_size[s - 1]
        res = residual[codec.drop_one[s], idx]  # [C_s, s]
        rows = np.arange(offset, offset + len(idx))[:, None]
        out[rows, idx] = np.log2(1.0 + np.maximum(res, 0.0) / noise_var)
    return out


def all_subsets_se(H_true: np.ndarray, H_rep: np.ndarray, codec: SubsetCodec, noise_var: float = 1.0) -> np.ndarray:
    """SE of every user for every candidate subset: ``[T, N, K]`` (0 where a user is not scheduled).

    ``H_true``/``H_rep`` are ``[T, M, K]`` (or ``[M, K]``, giving ``[N, K]``). Passing the same
    array twice (what the base station predicts from its reports) takes a faster textbook-ZF path.

    Example:
        >>> c = SubsetCodec(3, 2)
        >>> H = np.eye(3, dtype=complex)
        >>> all_subsets_se(H, H, c).shape
        (6, 3)
    """
    same = H_true is H_rep or (H_true.shape == H_rep.shape and np.array_equal(H_true, H_rep))
    squeeze = H_true.ndim == 2
    if squeeze:
        H_true, H_rep = H_true[None], H_rep[None]
    Hr_h = np.conj(np.swapaxes(H_rep, -1, -2))
    gram_full = Hr_h @ H_rep  # [T, K, K]
    cross_full = None if same else Hr_h @ H_true
    T = H_true.shape[0]
    out = np.zeros((T, codec.n, codec.K))
    if same:
        for t in range(T):
            out[t] = _predicted_table(gram_full[t], codec, noise_var)
        return out[0] if squeeze else out
    for offset, idx in codec.by_size:
        C, s = idx.shape
        it = np.ascontiguousarray(idx.T)
        rows = np.broadcast_to(np.arange(offset, offset + C)[None, :], (s, C))
        for t in range(T):
            se = _subset_se_one_tti(gram_full[t], None if cross_full is None else cross_full[t], it, noise_var)
            out[t, rows, it] = se
    return out[0] if squeeze else out


def scheduled_se(H_true: np.ndarray, H_rep: np.ndarray, subset: Sequence[int], noise_var: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One TTI, one subset: ``(physical SE [K], SE the base station predicts from reports [K])``.

    The fast path of the environment step (one small inverse shared by both results).

    Example:
        >>> H = np.eye(3, dtype=complex)
        >>> phys, pred = scheduled_se(H, H, [0, 2])
        >>> phys.round(9).tolist(), pred.round(9).tolist()
        ([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    """
    idx = np.asarray(subset, dtype=np.int64)
    Gr = H_rep[:, idx]
    Grh = Gr.conj().T
    gram = Grh @ Gr
    s = idx.size
    d = np.arange(s)
    gram[d, d] += _EPS * max(float(np.real(np.trace(gram))) / s, _EPS)
    inv = np.linalg.inv(gram)
    inv_diag = np.real(inv[d, d])
    A = inv @ (Grh @ H_true[:, idx])
    p = A.real**2 + A.imag**2
    signal = p[d, d]
    denom = p.sum(axis=1) - signal + noise_var * inv_diag
    sinr = np.divide(signal, denom, out=np.where(signal > 0, np.inf, 0.0), where=denom > 0)
    pred = np.divide(1.0, noise_var * inv_diag, out=np.full(s, np.inf), where=inv_diag > 0)
    K = H_true.shape[1]
    phys_se = np.zeros(K)
    pred_se = np.zeros(K)
    phys_se[idx] = np.log2(1.0 + np.maximum(sinr, 0.0))
    pred_se[idx] = np.log2(1.0 + pred)
    return phys_se, pred_se
