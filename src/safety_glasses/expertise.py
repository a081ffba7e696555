"""Expertise: how well each unit's pooled activation separates toxic from non-toxic rows.

The score of a unit is its AUROC as a classifier of the label: the Mann-Whitney statistic

    AUROC = ( #{(p, n): s_p > s_n} + 1/2 #{(p, n): s_p = s_n} ) / (n_pos * n_neg)

over all (positive, negative) row pairs, i.e. ties count as average ranks, exactly as
``sklearn.metrics.roc_auc_score``. ``gini = 2 * AUROC - 1``.

How it is computed (no Python loop over units): each value becomes an order-preserving integer
key computed from its bit pattern (float16/bfloat16 -> int32, float32 -> int64; -0 and +0 merged;
NaN patterns detected), the label is appended as the lowest bit, and each chunk of units is sorted
along the rows twice, once with negatives first inside every tie group and once with positives
first. With ``P`` the sum of the positives' 0-based positions, ``P - n_pos (n_pos - 1) / 2`` counts
negatives ranked below the positives, ties counted fully (negatives first) or not at all
(positives first); their mean is the Mann-Whitney U. float64 chunks whose values are exact in
float32 take the float32 path; other float64 values (whose 64-bit key leaves no room for the label
bit) use two stable arg-sorts of row-permuted values instead.

NumPy input (including ``np.memmap``) and torch tensors on the CPU run through NumPy's vectorised
sorts, chunks spread over up to ``MAX_THREADS`` threads; torch tensors on an accelerator (or any
input with ``device="cuda"``) run through torch.

Example:
    >>> import numpy as np
    >>> auroc(np.array([[0.1, 1.0], [0.9, 1.0], [0.4, 1.0]]), np.array([0, 1, 1]))
    array([1. , 0.5])
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["auroc", "gini", "rank_units", "auroc_pvalues", "fdr_mask"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Most CPU threads one ``auroc`` call uses (also capped by ``os.cpu_count()``); set to 1 for a
#: single-threaded run.
MAX_THREADS = 4

# Elements (rows x units) per chunk: about 36 MiB of work buffers per CPU thread.
_CPU_CHUNK_ELEMENTS = 1 << 22
_GPU_CHUNK_ELEMENTS = 1 << 26


def _nan_error(column: int) -> ValueError:
    return ValueError(f"scores contain NaN (first in unit/column {column}); AUROC is undefined")


def _check_labels(labels: Any, n_rows: int) -> np.ndarray:
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n_rows:
        raise ValueError(
            f"shape mismatch: labels must have shape [{n_rows}] (one per score row), "
            f"got {list(lab.shape)}"
        )
    if lab.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0/1 (bool or int), got dtype {lab.dtype}")
    if lab.dtype.kind == "f" and np.isnan(lab).any():
        raise ValueError("labels contain NaN; labels must be 0/1")
    if not np.isin(lab, (0, 1)).all():
        bad = lab[~np.isin(lab, (0, 1))][0]
        raise ValueError(f"labels must be 0/1, found {bad!r}")
    lab = lab.astype(np.int32)
    n_pos = int(lab.sum())
    if n_pos == 0 or n_pos == n_rows:
        raise ValueError(
            f"labels hold a single class ({n_pos} positive, {n_rows - n_pos} negative); "
            "AUROC needs both"
        )
    return lab


# ----------------------------------------------------------------------------- NumPy backend
# Largest finite magnitude pattern (the infinity) of each float format; larger magnitudes are NaN.
_INF_BITS = {"float16": 0x7C00, "bfloat16": 0x7F80, "float32": 0x7F800000}
_TRANSPOSE_ROWS = 256  # rows per block of the cache-friendly transposing copy


def _numpy_kind(arr: np.ndarray) -> tuple[str, np.ndarray]:
    """Return (format, array to chunk) for a NumPy scores array."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float16:
        return "float16", arr.view(np.int16)
    if arr.dtype == np.float32:
        return "float32", arr.view(np.int32)
    if arr.dtype == np.float64:
        return "float64", arr
    if arr.dtype.kind in "biu":
        return "float64", arr
    raise ValueError(f"unsupported scores dtype {arr.dtype} (use float16, bfloat16, float32 or float64)")


class _NanFound(Exception):
    def __init__(self, column: int) -> None:
        super().__init__(column)
        self.column = column


class _NumpyChunker:
    """Computes the two position sums for chunks of units; owns its work buffers (one per thread).

    float64 chunks whose values are all exact in float32 (e.g. upcast activations, small
    integers) take the float32 key path; others use two stable arg-sorts.
    """

    def __init__(self, fmt: str, lab: np.ndarray, chunk: int) -> None:
        n = lab.shape[0]
        self.fmt, self.n, self.chunk = fmt, n, chunk
        self.total = n * (n - 1) // 2
        int_t = np.int32 if self.total < 2**31 else np.int64
        self.positions = np.arange(n, dtype=int_t)
        self.lab = lab
        self.flags = np.empty((chunk, n), dtype=np.int8)
        self.key_fmt = "float32" if fmt == "float64" else fmt
        wide = np.int32 if self.key_fmt in ("float16", "bfloat16") else np.int64
        narrow = np.int16 if wide is np.int32 else np.int32
        self.wide = wide
        self.raw = np.empty((chunk, n), dtype=narrow)
        self.sign = np.empty((chunk, n), dtype=narrow)
        self.work = np.empty((chunk, n), dtype=wide)
        self.lab_wide = lab.astype(wide)
        self.limit = 2 * _INF_BITS[self.key_fmt]
        self.min_key = -(2 ** (8 * np.dtype(narrow).itemsize - 1) - 1)

    def _sum_marked(self, s: np.ndarray, c: int) -> np.ndarray:
        """Per row of ``s``: the sum of positions whose lowest bit is 1."""
        flags = self.flags[:c]
        np.bitwise_and(s, 1, out=flags, casting="unsafe")
        return np.einsum("ij,j->i", flags, self.positions).astype(np.float64)

    def __call__(self, data: np.ndarray, start: int, c: int) -> np.ndarray:
        if self.fmt == "float64":
            values = np.asarray(data[:, start : start + c], dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                as32 = values.astype(np.float32)
            if not np.array_equal(as32, values):  # not exact in float32 (or NaN: checked there)
                return self._float64(values, start)
            return self._keyed(as32.view(np.int32), 0, c, start)
        return self._keyed(data, start, c, start)

    def _keyed(self, bits: np.ndarray, offset: int, c: int, start: int) -> np.ndarray:
        """Position sums for ``bits[:, offset:offset + c]`` (16- or 32-bit float patterns)."""
        n = self.n
        raw, sign = self.raw[:c], self.sign[:c]
        for r in range(0, n, _TRANSPOSE_ROWS):  # blocked transposing copy: [n, c] -> [c, n]
            rows = slice(r, r + _TRANSPOSE_ROWS)
            np.copyto(raw[:, rows], bits[rows, offset : offset + c].T)
        # Order-preserving key of a sign-magnitude float pattern a (as a signed integer):
        # a for a >= 0, and INT_MIN - a for a < 0 (so -0 and +0 both become 0), branch-free.
        np.right_shift(raw, raw.dtype.itemsize * 8 - 1, out=sign)  # 0 or -1
        np.bitwise_xor(raw, sign, out=raw)
        np.bitwise_and(sign, self.min_key, out=sign)
        np.add(raw, sign, out=raw)
        s = self.work[:c]
        np.left_shift(raw, 1, out=s, dtype=self.wide)
        s += self.lab_wide  # label in the lowest bit: negatives sort first inside a tie group
        if s.max() > self.limit + 1 or s.min() < -self.limit:
            bad = ((s > self.limit + 1) | (s < -self.limit)).any(axis=1)
            raise _NanFound(start + int(np.flatnonzero(bad)[0]))
        s.sort(axis=1)
        p_neg_first = self._sum_marked(s, c)
        s ^= 1  # flip the label bit: positives now sort first inside a tie group
        s.sort(axis=1)
        p_pos_first = self.total - self._sum_marked(s, c)  # bit 1 now marks negatives
        return p_neg_first + p_pos_first

    def _float64(self, values: np.ndarray, start: int) -> np.ndarray:
        if np.isnan(values).any():
            raise _NanFound(start + int(np.flatnonzero(np.isnan(values).any(axis=0))[0]))
        sums = np.zeros(values.shape[1], dtype=np.float64)
        neg_first = np.argsort(self.lab, kind="stable")
        pos_first = np.argsort(1 - self.lab, kind="stable")
        for perm in (neg_first, pos_first):  # stable sorts keep this row order inside ties
            v = np.ascontiguousarray(values[perm].T)
            order = np.argsort(v, axis=1, kind="stable")
            is_pos = (self.lab[perm][order] == 1).astype(np.int8)
            sums += np.einsum("ij,j->i", is_pos, self.positions)
        return sums


def _position_sums_numpy(data: np.ndarray, fmt: str, lab: np.ndarray, chunk: int) -> np.ndarray:
    """Per unit: sum of positives' positions (negatives first in ties) + (positives first).

    Chunks run on a few threads (NumPy's sorts and ufuncs release the GIL), each with its buffers.
    """
    d = data.shape[1]
    out = np.empty(d, dtype=np.float64)
    starts = list(range(0, d, chunk))
    workers = max(1, min(len(starts), os.cpu_count() or 1, MAX_THREADS))
    first_bad = [len(starts)]  # index of the first chunk known to hold a NaN
    lock = threading.Lock()

    def run(worker: int) -> None:
        chunker = _NumpyChunker(fmt, lab, chunk)
        for k in range(worker, len(starts), workers):
            if k > first_bad[0]:
                return
            start = starts[k]
            c = min(chunk, d - start)
            try:
                out[start : start + c] = chunker(data, start, c)
            except _NanFound as found:
                with lock:
                    first_bad[0] = min(first_bad[0], k)
                raise found

    if workers == 1:
        try:
            run(0)
        except _NanFound as found:
            raise _nan_error(found.column) from None
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, w) for w in range(workers)]
    columns = []
    for future in futures:
        exc = future.exception()
        if isinstance(exc, _NanFound):
            columns.append(exc.column)
        elif exc is not None:
            raise exc
    if columns:
        raise _nan_error(min(columns))
    return out


# ----------------------------------------------------------------------------- torch backend
_TORCH_FORMATS = {
    torch.float16: ("float16", torch.int16, torch.int32),
    torch.bfloat16: ("bfloat16", torch.int16, torch.int32),
    torch.float32: ("float32", torch.int32, torch.int64),
}


def _position_sums_torch(
    data: torch.Tensor, lab: np.ndarray, chunk: int, device: torch.device
) -> torch.Tensor:
    """The two position sums per unit, computed with torch on ``device`` (an accelerator)."""
    n, d = data.shape
    total = n * (n - 1) / 2
    positions = torch.arange(n, dtype=torch.float64, device=device)
    lab_t = torch.as_tensor(lab, device=device)
    out = torch.empty(d, dtype=torch.float64, device=device)
    neg_first = torch.argsort(lab_t, stable=True)
    pos_first = torch.argsort(1 - lab_t, stable=True)
    spec = _TORCH_FORMATS.get(data.dtype)
    for start in range(0, d, chunk):
        c = min(chunk, d - start)
        block = data[:, start : start + c].to(device, non_blocking=True)
        if spec is not None:
            fmt, narrow, wide = spec
            a = block.T.contiguous().view(narrow).to(wide)
            int_min = -(2 ** (8 * block.element_size() - 1))
            s = torch.where(a < 0, int_min - a, a) * 2 + lab_t.to(wide)  # -0 and +0 -> 0
            limit = 2 * _INF_BITS[fmt]
            bad = (s > limit + 1) | (s < -limit)
            if bool(bad.any()):
                raise _nan_error(start + int(torch.nonzero(bad.any(dim=1))[0, 0]))
            s = torch.sort(s, dim=1).values
            p_neg_first = (s & 1).to(torch.float64) @ positions
            s = torch.sort(s ^ 1, dim=1).values
            out[start : start + c] = p_neg_first + total - (s & 1).to(torch.float64) @ positions
            continue
        values = block.to(torch.float64)
        if bool(torch.isnan(values).any()):
            raise _nan_error(start + int(torch.nonzero(torch.isnan(values).any(dim=0))[0, 0]))
        sums = torch.zeros(c, dtype=torch.float64, device=device)
        for perm in (neg_first, pos_first):  # stable sorts keep this order inside ties
            order = torch.sort(values[perm].T, dim=1, stable=True).indices
            sums += (lab_t[perm][order] == 1).to(torch.float64) @ positions
        out[start : start + c] = sums
    return out


# ----------------------------------------------------------------------------- public API
def auroc(
    scores: ArrayT,
    labels: Any,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> ArrayT:
    """Exact per-column AUROC of ``scores[N, D]`` against 0/1 ``labels[N]`` (ties as average ranks).

    Returns ``[D]`` float64: a NumPy array for NumPy input (``np.memmap`` included), a torch tensor
    on the input's device for torch input. ``chunk_size`` is the number of columns processed at
    once (default: about 4M elements on CPU, 64M on an accelerator); ``device`` runs the work on
    another device (e.g. ``"cuda"`` for a NumPy memmap). Constant columns give 0.5.

    Raises ``ValueError`` for a shape mismatch, a single class, non-0/1 labels or NaN scores.

    Example:
        >>> import numpy as np
        >>> auroc(np.array([[1.0], [2.0], [2.0], [3.0]], dtype=np.float16), [0, 0, 1, 1])
        array([0.875])
    """
    is_torch = torch.is_tensor(scores)
    if not is_torch:
        scores_np = scores if isinstance(scores, np.ndarray) else np.asarray(scores)
        shape = scores_np.shape
    else:
        shape = tuple(scores.shape)
    if len(shape) != 2:
        raise ValueError(f"shape mismatch: scores must be 2-D [rows, units], got shape {list(shape)}")
    n, d = shape
    lab = _check_labels(labels, n)
    n_pos = int(lab.sum())
    n_neg = n - n_pos
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    target = torch.device(device) if device is not None else (scores.device if is_torch else None)
    on_torch = target is not None and target.type != "cpu"
    default_elems = _GPU_CHUNK_ELEMENTS if on_torch else _CPU_CHUNK_ELEMENTS
    chunk = chunk_size if chunk_size is not None else max(1, default_elems // max(n, 1))
    chunk = max(1, min(chunk, d)) if d else 1

    if on_torch:
        if is_torch:
            data_t = scores.detach()
        else:
            with warnings.catch_warnings():  # a read-only memmap is only read here
                warnings.simplefilter("ignore", UserWarning)
                data_t = torch.from_numpy(np.ascontiguousarray(scores_np))
        if data_t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            data_t = data_t.to(torch.float64)
        sums_t = _position_sums_torch(data_t, lab, chunk, target)
        result_t = (sums_t / 2 - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)
        if is_torch:
            return result_t.to(scores.device)
        return result_t.cpu().numpy()

    if is_torch:
        t = scores.detach().cpu()
        if t.dtype == torch.bfloat16:
            data, fmt = t.view(torch.int16).numpy(), "bfloat16"
        elif t.dtype in (torch.float16, torch.float32, torch.float64):
            fmt, data = _numpy_kind(t.numpy())
        elif t.dtype.is_floating_point:
            data, fmt = t.to(torch.float64).numpy(), "float64"
        else:
            fmt, data = _numpy_kind(t.numpy())
    else:
        fmt, data = _numpy_kind(scores_np)
    sums = _position_sums_numpy(data, fmt, lab, chunk)
    result = (sums / 2 - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)
    if is_torch:
        return torch.from_numpy(result).to(scores.device)
    return result


def gini(auroc_values: ArrayT) -> ArrayT:
    """Gini coefficient ``2 * AUROC - 1`` (same type in and out).

    Example:
        >>> gini(np.array([0.5, 1.0, 0.25]))
        array([ 0. ,  1. , -0.5])
    """
    if isinstance(auroc_values, (int, float)):
        return 2 * auroc_values - 1  # type: ignore[return-value]
    return 2 * auroc_values - 1


def rank_units(
    aurocs: Mapping[str, Any], top_k: int | None = None, threshold: float = 0.5
) -> list[tuple[str, int, float]]:
    """Rank units of all modules together: ``(module, index, auroc)`` by descending AUROC,
    keeping AUROC > ``threshold`` and at most ``top_k`` units. Ties keep module order (the
    mapping's order) and then the index order.

    Example:
        >>> rank_units({"a": np.array([0.9, 0.4]), "b": np.array([0.9, 0.7])}, top_k=2)
        [('a', 0, 0.9), ('b', 0, 0.9)]
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    names: list[str] = []
    values: list[np.ndarray] = []
    module_ids: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    for m, (name, vec) in enumerate(aurocs.items()):
        if torch.is_tensor(vec):
            arr = vec.detach().cpu().to(torch.float64).numpy()
        else:
            arr = np.asarray(vec, dtype=np.float64)
        arr = arr.reshape(-1)
        keep = np.flatnonzero(arr > threshold)
        names.append(name)
        values.append(arr[keep])
        module_ids.append(np.full(keep.shape, m, dtype=np.int64))
        indices.append(keep)
    if not values:
        return []
    vals = np.concatenate(values)
    mods = np.concatenate(module_ids)
    idx = np.concatenate(indices)
    order = np.lexsort((idx, mods, -vals))
    if top_k is not None:
        order = order[:top_k]
    return [(names[mods[i]], int(idx[i]), float(vals[i])) for i in order]


def auroc_pvalues(aurocs: ArrayT, n_pos: int, n_neg: int) -> ArrayT:
    """One-sided p-values of ``AUROC > 0.5`` under the Mann-Whitney null (a unit that ignores the label).

    Under the null every assignment of the labels to the rows is equally likely, so the Mann-Whitney
    statistic ``U = AUROC * n_pos * n_neg`` has mean ``n_pos n_neg / 2`` and variance
    ``n_pos n_neg (n_pos + n_neg + 1) / 12``, whatever the unit's activations are: one null
    distribution serves every unit (it is the distribution of a label permutation test, which needs no
    simulation here). The p-value is the normal tail with a continuity correction,
    ``P(Z >= (U - n_pos n_neg / 2 - 1/2) / sigma)``. Two simplifications, both conservative: tied
    activations would shrink the variance (they are ignored, so p is never too small on their account),
    and the exact distribution has lighter tails than the normal one.

    Example:
        >>> p = auroc_pvalues(np.array([0.5, 0.7, 0.9]), 20, 200)
        >>> [f"{v:.2g}" for v in p]
        ['0.5', '0.0016', '1.9e-09']
    """
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"p-values need rows of both classes, got {n_pos} positive and {n_neg} negative")
    is_torch = torch.is_tensor(aurocs)
    a = aurocs.detach().cpu().to(torch.float64) if is_torch else torch.as_tensor(np.asarray(aurocs, dtype=np.float64))
    prod = float(n_pos) * float(n_neg)
    sigma = (prod * (n_pos + n_neg + 1) / 12.0) ** 0.5
    z = (a * prod - prod / 2.0 - 0.5) / sigma
    p = 0.5 * torch.special.erfc(z / 2.0 ** 0.5)
    return p.to(aurocs.device) if is_torch else p.numpy()


def fdr_mask(pvalues: ArrayT, q: float) -> ArrayT:
    """Benjamini-Hochberg: ``True`` for the hypotheses rejected at false-discovery rate ``q``.

    With the p-values sorted, ``p_(1) <= ... <= p_(m)``, the largest ``k`` with ``p_(k) <= k q / m`` is
    found and the ``k`` smallest are rejected (none when no such ``k``). It controls the expected share of
    false discoveries among the rejected at ``q`` for independent or positively dependent tests.

    Example:
        >>> fdr_mask(np.array([0.001, 0.02, 0.03, 0.5]), 0.05).tolist()
        [True, True, True, False]
        >>> fdr_mask(np.array([0.04, 0.5]), 0.05).tolist()
        [False, False]
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"the false-discovery rate must be in (0, 1), got {q}")
    is_torch = torch.is_tensor(pvalues)
    p = pvalues.detach().cpu().to(torch.float64).reshape(-1) if is_torch else \
        torch.as_tensor(np.asarray(pvalues, dtype=np.float64)).reshape(-1)
    m = p.numel()
    out = torch.zeros(m, dtype=torch.bool)
    if m:
        order = torch.argsort(p, stable=True)
        ok = p[order] <= q * torch.arange(1, m + 1, dtype=torch.float64) / m
        if bool(ok.any()):
            k = int(ok.nonzero().max()) + 1
            out[order[:k]] = True
    if is_torch:
        return out.reshape(pvalues.shape).to(pvalues.device)
    return out.reshape(np.shape(pvalues)).numpy()
