"""Recording memory: peak RSS with 256 vs 2,048 concept rows on a tiny Llava (target: < 10% apart).

Each size runs in a fresh subprocess; the concept rows live on disk (JSONL + PNGs) as a user's would,
and the pooled activations stream to a recording folder.

    python benchmarks/bench_recording_memory.py [--small 256 --large 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, tempfile
from safety_glasses import ConceptSet
from safety_glasses.models import resolve_units
from safety_glasses.recording import record_activations
from safety_glasses.testing import tiny_vlm
model, proc = tiny_vlm("llava", seed=0)
cs = ConceptSet.load(sys.argv[1])
sites = resolve_units(model, "act")
with tempfile.TemporaryDirectory() as d:
    record_activations(model, proc, cs, sites, d, batch_size=16, progress=False)
print(json.dumps({"rows": len(cs), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_concepts(n: int, folder: Path) -> Path:
    from safety_glasses import ConceptSet
    from safety_glasses.testing import tiny_concept_rows

    path = folder / f"concepts_{n}.jsonl"
    ConceptSet.from_rows(tiny_concept_rows(n, seed=1)).to_jsonl(path, image_dir=folder / f"img_{n}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=256)
    ap.add_argument("--large", type=int, default=2048)
    args = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            path = make_concepts(n, Path(tmp))
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            res[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            print(f"rows={n:5d}  peak RSS {res[n]:8.1f} MB")
    ratio = res[args.large] / res[args.small]
    print(f"peak RSS ratio {args.large}/{args.small} rows: {ratio:.3f} (target < 1.10): "
          f"{'MET' if ratio < 1.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
