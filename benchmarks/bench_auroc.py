"""Benchmark: exact per-unit AUROC on a float16 activation matrix, on the CPU.

Compares ``safety_glasses.expertise.auroc`` with
  * per-unit ``sklearn.metrics.roc_auc_score`` (AurA's reference way) on a random sample of units,
    extrapolated to all units, and
  * one ``numpy.sort`` of the same matrix along the rows (axis 0): the floor for any exact rank method,
and checks that the values are identical to scikit-learn's on the sampled units.

Targets (issue 2): >= 30x faster than per-unit scikit-learn, <= 2x the plain sort, max |diff| < 1e-6.

    python benchmarks/bench_auroc.py                       # 2,304 rows x 200,000 units (~0.9 GB)
    python benchmarks/bench_auroc.py --rows 512 --units 20000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np
from sklearn.metrics import roc_auc_score

from safety_glasses import expertise
from safety_glasses.expertise import auroc


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def make_scores(rows: int, units: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 activations with ties (about 10% exact zeros, like gated units, plus float16
    rounding), a mild signal on 1% of units, and ~50/50 labels; built block-wise to cap memory."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.5).astype(np.int8)
    scores = np.empty((rows, units), dtype=np.float16)
    block = max(1, (1 << 24) // rows)
    for start in range(0, units, block):
        stop = min(units, start + block)
        values = rng.standard_normal((rows, stop - start), dtype=np.float32)
        values[rng.random(values.shape, dtype=np.float32) < 0.1] = 0.0
        informative = rng.random(stop - start) < 0.01
        values[:, informative] += 0.5 * labels[:, None]
        scores[:, start:stop] = values
    return scores, labels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2304, help="concept rows (N)")
    parser.add_argument("--units", type=int, default=200_000, help="units (D)")
    parser.add_argument("--sample", type=int, default=300, help="units timed with scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=None, help="units per chunk (default: auto)")
    args = parser.parse_args()
    if args.rows < 2 or args.units < 1 or args.sample < 1:
        parser.error("need --rows >= 2, --units >= 1, --sample >= 1")

    scores, labels = make_scores(args.rows, args.units, args.seed)
    print(
        f"matrix: {args.rows} rows x {args.units} units float16 ({scores.nbytes / 2**30:.2f} GiB), "
        f"{int(labels.sum())} positive rows; CPU: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rss_before = _peak_rss_mib()

    tracemalloc.start()  # NumPy reports its buffers to tracemalloc: the peak is auroc's own memory
    t0 = time.perf_counter()
    ours = auroc(scores, labels, chunk_size=args.chunk_size)
    t_ours = time.perf_counter() - t0
    auroc_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    threads = max(1, min(os.cpu_count() or 1, expertise.MAX_THREADS))
    saved, expertise.MAX_THREADS = expertise.MAX_THREADS, 1
    t0 = time.perf_counter()
    ours_1 = auroc(scores, labels, chunk_size=args.chunk_size)
    t_ours_1 = time.perf_counter() - t0
    expertise.MAX_THREADS = saved
    assert np.array_equal(ours_1, ours)
    del ours_1

    t0 = time.perf_counter()
    floor = np.sort(scores, axis=0)
    t_sort = time.perf_counter() - t0
    del floor

    picker = np.random.default_rng(args.seed + 1)
    sample = picker.choice(args.units, size=min(args.sample, args.units), replace=False)
    reference = np.empty(sample.shape[0])
    t0 = time.perf_counter()
    for i, unit in enumerate(sample):
        reference[i] = roc_auc_score(labels, scores[:, unit])
    t_sklearn_sample = time.perf_counter() - t0
    t_sklearn = t_sklearn_sample / sample.shape[0] * args.units
    max_diff = float(np.max(np.abs(ours[sample] - reference)))

    print()
    print("| method | seconds | ours is faster by |")
    print("|---|---:|---:|")
    print(f"| `auroc` (this project, {threads} threads) | {t_ours:.2f} | 1.00x |")
    print(f"| `auroc` (this project, 1 thread) | {t_ours_1:.2f} | {t_ours_1 / t_ours:.2f}x |")
    print(f"| one `numpy.sort(axis=0)` (floor) | {t_sort:.2f} | {t_sort / t_ours:.2f}x |")
    print(
        f"| per-unit `roc_auc_score` ({sample.shape[0]} units timed, extrapolated) | {t_sklearn:.1f} "
        f"| {t_sklearn / t_ours:.1f}x |"
    )
    print()
    print(f"speed-up vs scikit-learn: {t_sklearn / t_ours:.1f}x  (target >= 30x)")
    print(
        f"time / plain sort:        {t_ours / t_sort:.2f}x  "
        f"(target <= 2x; 1 thread: {t_ours_1 / t_sort:.2f}x)"
    )
    print(f"max |auroc - sklearn| on {sample.shape[0]} sampled units: {max_diff:.3g}  (target < 1e-6)")
    print(
        f"memory: matrix {scores.nbytes / 2**20:.0f} MiB; peak allocated inside `auroc` {auroc_peak:.0f} MiB "
        f"(work buffers, independent of the number of units); process peak RSS before `auroc` "
        f"{rss_before:.0f} MiB"
    )
    ok = t_sklearn / t_ours >= 30 and t_ours / t_sort <= 2 and max_diff < 1e-6
    print("targets met" if ok else "targets NOT all met")


if __name__ == "__main__":
    main()
