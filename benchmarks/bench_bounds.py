"""CROWN/IBP wall time of fggm.bounds vs the bound-propagation package, batch 1, CPU.

Net: the attacker's view of the shipped scheduler (normaliser + clip + 544-512-512-1 actor)
when data/schedulers/smart16 exists, else the same shape with random weights.  Box: the
normaliser's mean +- 3 sigma for every coordinate, with 66 coordinates (two attackers'
Re/Im CSI and SE) as points.  Both libraries run the same relaxation (adaptive ReLU slopes),
the runs are interleaved, and the median of the repeats is reported.

    .venv/bin/python benchmarks/bench_bounds.py [--repeats 30] [--threads 1] [--tightness]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import bound_propagation as bp  # GPL-3.0: benchmarks and tests only, never imported by src/
from fggm import bounds
from fggm.bounds import Affine

TARGET = 0.6
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "schedulers" / "smart16"


def _view(path: Path | None) -> tuple[nn.Sequential, str]:
    src = path or SHIPPED
    if src.is_dir():
        from fggm.policy import load_attacker_view

        return load_attacker_view(src), f"scheduler {src}"
    torch.manual_seed(0)
    n = 544
    scale, shift = torch.rand(n) + 0.5, torch.randn(n)
    layers = [Affine(scale, shift), nn.Hardtanh(-10.0, 10.0), nn.Linear(n, 512), nn.ReLU(),
              nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1)]
    return nn.Sequential(*layers), "random weights (no shipped scheduler found)"


def _reference(view: nn.Sequential) -> nn.Module:
    layers: list[nn.Module] = []
    for m in view:
        if isinstance(m, Affine):
            layers.append(bp.ElementWiseLinear(m.scale, m.shift))
        elif isinstance(m, nn.Hardtanh):
            layers.append(bp.Clamp(m.min_val, m.max_val))
        else:
            layers.append(m)
    return bp.BoundModelFactory(adaptive_relu=True).build(nn.Sequential(*layers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both libraries")
    ap.add_argument("--scheduler", type=Path, default=None, help="checkpoint directory (default: shipped smart16)")
    ap.add_argument("--tightness", action="store_true", help="also compare bound widths with a PGD inner range")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    view, what = _view(args.scheduler)
    aff = view[0]
    assert isinstance(aff, Affine)
    mean, sigma = -aff.shift / aff.scale, 1.0 / aff.scale  # raw-space statistics of the normaliser
    lo, up = (mean - 3 * sigma).unsqueeze(0), (mean + 3 * sigma).unsqueeze(0)
    forged = torch.randn(1, 66)
    lo[:, :66], up[:, :66] = mean[:66] + forged * sigma[:66], mean[:66] + forged * sigma[:66]
    ref = _reference(view)
    region = bp.HyperRectangle(lo, up)
    runs = {
        "ours crown": lambda: bounds.crown(view, lo, up),
        "bp crown": lambda: ref.crown(region).concretize(),
        "ours ibp": lambda: bounds.ibp(view, lo, up),
        "bp ibp": lambda: ref.ibp(region),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for f in runs.values():
            f()  # warm-up
        for _ in range(args.repeats):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        ours_l, ours_u = bounds.crown(view, lo, up)
        theirs = ref.crown(region).concretize()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"net: {what}; batch 1; torch threads {torch.get_num_threads()}; {args.repeats} repeats (median)")
    for k, v in med.items():
        print(f"  {k:11s} {v * 1e3:8.2f} ms")
    print(f"  bounds: ours [{ours_l.item():.4f}, {ours_u.item():.4f}]  "
          f"bound-propagation [{theirs.lower.item():.4f}, {theirs.upper.item():.4f}]")
    ratio = med["ours crown"] / med["bp crown"]
    print(f"CROWN time ratio ours/bound-propagation = {ratio:.3f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'MISSED'})")
    print(f"IBP time ratio ours/bound-propagation   = {med['ours ibp'] / med['bp ibp']:.3f}")
    if args.tightness:
        _tightness(view, mean, sigma, forged)


def _tightness(view: nn.Sequential, mean: torch.Tensor, sigma: torch.Tensor, forged: torch.Tensor) -> None:
    """Width of IBP / CROWN / alpha-CROWN vs an empirical inner range (PGD) over the k-sigma box."""
    print("tightness over mean +- k sigma (66 coordinates fixed), pre-tanh action:")
    for k in (0.05, 0.3, 1.0, 3.0):
        lo, up = (mean - k * sigma).unsqueeze(0), (mean + k * sigma).unsqueeze(0)
        lo[:, :66] = up[:, :66] = mean[:66] + forged * sigma[:66]
        il, iu = bounds.ibp(view, lo, up)
        cl, cu = bounds.crown(view, lo, up)
        al, au = bounds.crown(view, lo, up, alpha=True, alpha_steps=20)
        inner = []
        for sign in (1.0, -1.0):  # sign-PGD from random points: a lower bound on the true range
            z = (lo + (up - lo) * torch.rand(16, lo.shape[1], generator=torch.Generator().manual_seed(1))).requires_grad_()
            for _ in range(100):
                (g,) = torch.autograd.grad(sign * view(z).sum(), z)
                with torch.no_grad():
                    z += 0.05 * (up - lo) * g.sign()
                    z.copy_(torch.maximum(torch.minimum(z, up), lo))
            with torch.no_grad():
                inner.append(view(z).max().item() if sign > 0 else view(z).min().item())
        print(f"  k={k:<4g} IBP [{il.item():9.2f}, {iu.item():8.2f}]  CROWN [{cl.item():8.2f}, {cu.item():7.2f}]  "
              f"alpha [{al.item():8.2f}, {au.item():7.2f}]  PGD inner [{inner[1]:6.2f}, {inner[0]:5.2f}]")


if __name__ == "__main__":
    main()
