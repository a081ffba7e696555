"""Bounds benchmarks: CROWN time vs bound-propagation, alpha-CROWN width and time vs auto_LiRPA.

1. CROWN/IBP wall time of fggm.bounds vs the bound-propagation package, batch 1, CPU.  Net: the
   attacker's view of the shipped scheduler (normaliser + clip + 544-512-512-1 actor) when
   data/schedulers/smart16 exists, else the same shape with random weights.  Box: the
   normaliser's mean +- 3 sigma for every coordinate, with 66 coordinates (two attackers' Re/Im CSI
   and SE) as points.  Both libraries run the same ReLU relaxation (adaptive slopes), the runs are
   interleaved, and the median of the repeats is reported.  Target: ratio <= 0.6.
2. alpha-CROWN on random MLPs (ReLU, tanh, hardtanh; depth 2-4; width 32 or 64; 10 inputs, 2
   outputs; an L-inf box of radius 0.3) vs auto_LiRPA 0.7.1's alpha-CROWN (``CROWN-Optimized``
   with its defaults: 20 iterations, lr 0.5, lower and upper optimised separately) and ours
   (``crown(alpha=True)`` defaults: 20 steps, lr 0.1, both sides jointly).  Per net: width ratio
   (ours / theirs, mean over outputs) and time ratio (median over interleaved repeats); printed:
   the medians over nets, per activation and overall.  Targets: width <= 1.02x at <= 0.3x time.
   auto_LiRPA is found through ``$AUTO_LIRPA`` (``os.pathsep``-separated folders or the source
   ``.tar.gz``, put in front of ``sys.path``; its extra packages graphviz, appdirs and ninja may
   live there too), else ``shared/vendor/auto_LiRPA-0.7.1.tar.gz`` in a folder above the
   repository (unpacked to a temporary folder); without it this part is skipped with one line.
   A hardtanh is given to auto_LiRPA as ``torch.minimum(torch.maximum(x, lo), hi)`` (its
   Hardtanh operator does not build on torch 2.13).
3. ``--tightness``: IBP / CROWN / alpha-CROWN widths on the attacker view vs a PGD inner range.

    .venv/bin/python benchmarks/bench_bounds.py [--repeats 30] [--threads 1] [--tightness]
        [--alpha-nets 6] [--alpha-repeats 3] [--skip-crown] [--skip-alpha]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import bound_propagation as bp  # GPL-3.0: benchmarks and tests only, never imported by src/
from fggm import bounds
from fggm.bounds import Affine

TARGET = 0.6
ALPHA_WIDTH_TARGET, ALPHA_TIME_TARGET = 1.02, 0.3
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "schedulers" / "smart16"
VENDOR = "auto_LiRPA-0.7.1.tar.gz"


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


def _timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each run, the runs interleaved (one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()
    for _ in range(repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def crown_vs_bound_propagation(view: nn.Sequential, what: str, repeats: int) -> None:
    aff = view[0]
    assert isinstance(aff, Affine)
    mean, sigma = -aff.shift / aff.scale, 1.0 / aff.scale  # raw-space statistics of the normaliser
    lo, up = (mean - 3 * sigma).unsqueeze(0), (mean + 3 * sigma).unsqueeze(0)
    forged = torch.randn(1, 66, generator=torch.Generator().manual_seed(0))
    lo[:, :66], up[:, :66] = mean[:66] + forged * sigma[:66], mean[:66] + forged * sigma[:66]
    ref = _reference(view)
    region = bp.HyperRectangle(lo, up)
    runs = {
        "ours crown": lambda: bounds.crown(view, lo, up),
        "bp crown": lambda: ref.crown(region).concretize(),
        "ours ibp": lambda: bounds.ibp(view, lo, up),
        "bp ibp": lambda: ref.ibp(region),
    }
    with torch.no_grad():
        med = _timed(runs, repeats)
        ours_l, ours_u = bounds.crown(view, lo, up)
        theirs = ref.crown(region).concretize()
    print(f"[1] CROWN, net: {what}; batch 1; torch threads {torch.get_num_threads()}; "
          f"{repeats} repeats (median)")
    for k, v in med.items():
        print(f"  {k:11s} {v * 1e3:8.2f} ms")
    print(f"  bounds: ours [{ours_l.item():.4f}, {ours_u.item():.4f}]  "
          f"bound-propagation [{theirs.lower.item():.4f}, {theirs.upper.item():.4f}]")
    ratio = med["ours crown"] / med["bp crown"]
    print(f"CROWN time ratio ours/bound-propagation = {ratio:.3f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'MISSED'})")
    print(f"IBP time ratio ours/bound-propagation   = {med['ours ibp'] / med['bp ibp']:.3f}")


# --------------------------------------------------------------------------- auto_LiRPA


def _vendor_paths(tmp: Path) -> list[str] | None:
    """Folders to put in front of sys.path for auto_LiRPA, or None when it is not to be found."""
    env = os.environ.get("AUTO_LIRPA")
    if env:
        candidates = [Path(p) for p in env.split(os.pathsep) if p]
    else:
        candidates = [p / "shared" / "vendor" / VENDOR for p in ROOT.parents if (p / "shared" / "vendor" / VENDOR).is_file()][:1]
    paths: list[str] = []
    for c in candidates:
        if c.is_file() and c.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(c) as tar:
                tar.extractall(tmp, filter="data")
            tops = [d for d in tmp.iterdir() if (d / "auto_LiRPA").is_dir()]
            paths.append(str(tops[0] if tops else tmp))
        elif c.is_dir():
            paths.append(str(c))
    return paths or None


class _MinMax(nn.Module):
    """A clip written as minimum/maximum, the form auto_LiRPA can parse."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(lo))
        self.register_buffer("hi", torch.tensor(hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x, self.lo), self.hi)


def random_net(act: str, depth: int, width: int, n_in: int, seed: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The same random MLP for us and for auto_LiRPA (a hardtanh written as min/max for it)."""
    gen = torch.Generator().manual_seed(seed)
    ours: list[nn.Module] = []
    theirs: list[nn.Module] = []
    w = n_in
    for _ in range(depth):
        lin = nn.Linear(w, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, w, generator=gen) * 1.5 / w**0.5)
            lin.bias.copy_(torch.randn(width, generator=gen) * 0.3)
        a, b = {"relu": (nn.ReLU(), nn.ReLU()), "tanh": (nn.Tanh(), nn.Tanh()),
                "hardtanh": (nn.Hardtanh(-1.0, 1.0), _MinMax(-1.0, 1.0))}[act]
        ours += [lin, a]
        theirs += [lin, b]
        w = width
    out = nn.Linear(w, 2)
    with torch.no_grad():
        out.weight.copy_(torch.randn(2, w, generator=gen) / w**0.5)
        out.bias.zero_()
    return nn.Sequential(*ours, out), nn.Sequential(*theirs, out)


def alpha_vs_auto_lirpa(nets_per_act: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = _vendor_paths(Path(tmp))
        if paths is None:
            print("[2] alpha-CROWN vs auto_LiRPA: skipped (no $AUTO_LIRPA and no shared/vendor/"
                  f"{VENDOR} above the repository)")
            return
        sys.path[:0] = paths
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
        except ImportError as e:
            print(f"[2] alpha-CROWN vs auto_LiRPA: skipped (auto_LiRPA does not import: {e}; it needs "
                  "graphviz, appdirs and ninja: pip install --target DIR graphviz appdirs ninja, then "
                  "AUTO_LIRPA=SRC:DIR)")
            return
        logging.getLogger("auto_LiRPA").setLevel(logging.ERROR)
        print(f"[2] alpha-CROWN vs auto_LiRPA 0.7.1 ({paths[0]}); {nets_per_act} random nets per activation, "
              f"{repeats} interleaved repeats each (median)")
        rows: dict[str, list[tuple[float, float]]] = {}
        for act in ("relu", "tanh", "hardtanh"):
            for s in range(nets_per_act):
                depth, width = (2, 3, 4)[s % 3], (32, 64)[(s // 3) % 2]
                ours, theirs = random_net(act, depth, width, 10, seed=1000 * s + 7)
                x = torch.randn(1, 10, generator=torch.Generator().manual_seed(s))
                lo, up = x - 0.3, x + 0.3
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    model = BoundedModule(theirs, torch.zeros(1, 10), verbose=0)
                    bx = BoundedTensor(x, PerturbationLpNorm(x_L=lo, x_U=up))
                    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

                    def run_ours() -> None:
                        out["ours"] = bounds.crown(ours, lo, up, alpha=True)

                    def run_theirs() -> None:
                        lb, ub = model.compute_bounds(x=(bx,), method="CROWN-Optimized")
                        out["theirs"] = (lb.detach(), ub.detach())

                    med = _timed({"ours": run_ours, "theirs": run_theirs}, repeats)
                (ol, ou), (tl, tu) = out["ours"], out["theirs"]
                w_ratio = float((ou - ol).mean() / (tu - tl).mean())
                t_ratio = med["ours"] / med["theirs"]
                rows.setdefault(act, []).append((w_ratio, t_ratio))
                print(f"  {act:8s} depth {depth} width {width}: width ours/auto_LiRPA {w_ratio:6.3f}, "
                      f"time {med['ours'] * 1e3:7.1f} / {med['theirs'] * 1e3:7.1f} ms = {t_ratio:5.3f}")
        all_rows = [r for v in rows.values() for r in v]
        for name, rs in [*rows.items(), ("all", all_rows)]:
            w = statistics.median(r[0] for r in rs)
            t = statistics.median(r[1] for r in rs)
            print(f"  median {name:8s}: width ratio {w:.3f}, time ratio {t:.3f}")
        w = statistics.median(r[0] for r in all_rows)
        t = statistics.median(r[1] for r in all_rows)
        print(f"alpha-CROWN width ratio ours/auto_LiRPA = {w:.3f} (target <= {ALPHA_WIDTH_TARGET}: "
              f"{'met' if w <= ALPHA_WIDTH_TARGET else 'MISSED'}); time ratio = {t:.3f} "
              f"(target <= {ALPHA_TIME_TARGET}: {'met' if t <= ALPHA_TIME_TARGET else 'MISSED'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="timing repeats of part 1")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every library")
    ap.add_argument("--scheduler", type=Path, default=None, help="checkpoint directory (default: shipped smart16)")
    ap.add_argument("--tightness", action="store_true", help="also compare bound widths with a PGD inner range")
    ap.add_argument("--alpha-nets", type=int, default=6, help="random nets per activation in part 2")
    ap.add_argument("--alpha-repeats", type=int, default=3, help="timing repeats per net in part 2")
    ap.add_argument("--skip-crown", action="store_true", help="skip part 1")
    ap.add_argument("--skip-alpha", action="store_true", help="skip part 2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    view, what = _view(args.scheduler)
    if not args.skip_crown:
        crown_vs_bound_propagation(view, what, args.repeats)
    if not args.skip_alpha:
        alpha_vs_auto_lirpa(args.alpha_nets, args.alpha_repeats)
    if args.tightness:
        _tightness(view)


def _tightness(view: nn.Sequential) -> None:
    """Width of IBP / CROWN / alpha-CROWN vs an empirical inner range (PGD) over the k-sigma box."""
    aff = view[0]
    assert isinstance(aff, Affine)
    mean, sigma = -aff.shift / aff.scale, 1.0 / aff.scale
    forged = torch.randn(1, 66, generator=torch.Generator().manual_seed(0))
    print("[3] tightness over mean +- k sigma (66 coordinates fixed), pre-tanh action:")
    for k in (0.05, 0.3, 1.0, 3.0):
        lo, up = (mean - k * sigma).unsqueeze(0), (mean + k * sigma).unsqueeze(0)
        lo[:, :66] = up[:, :66] = mean[:66] + forged * sigma[:66]
        il, iu = bounds.ibp(view, lo, up)
        cl, cu = bounds.crown(view, lo, up)
        t0 = time.perf_counter()
        al, au = bounds.crown(view, lo, up, alpha=True, alpha_steps=20)
        t_alpha = time.perf_counter() - t0
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
              f"alpha [{al.item():8.2f}, {au.item():7.2f}] ({t_alpha:.1f} s)  PGD inner [{inner[1]:6.2f}, {inner[0]:5.2f}]")


if __name__ == "__main__":
    main()
