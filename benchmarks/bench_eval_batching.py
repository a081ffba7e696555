"""Evaluation runner throughput: batched generation (left padding) vs one sample at a time.

Runs the MM-TOXIC-QA runner twice on the same rows (greedy, profanity + refusal judges, no perplexity):
``--batch-size`` rows per ``generate`` call vs 1, and prints samples/s of each and their ratio
(target: batched >= 4x). Model: ``--model PATH`` (e.g. the shipped organism), else a tiny random Llava.

    python benchmarks/bench_eval_batching.py [--model data/organism/model] [--rows 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from safety_glasses.eval.defenses import DefenseContext, parse_defenses
from safety_glasses.eval.judges import make_judge
from safety_glasses.eval.runner import RunConfig, SamplingConfig, run_generations
from safety_glasses.eval.schema import BenchRow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: tiny random Llava)")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()
    if args.model:
        from safety_glasses.models import load_vlm

        model, proc = load_vlm(args.model)
        label = args.model
    else:
        from safety_glasses.testing import tiny_vlm

        model, proc = tiny_vlm("llava", seed=0)
        label = "tiny random Llava (safety_glasses.testing)"
    from safety_glasses.testing import tiny_image

    rows = [BenchRow(id=f"r{i}", question=f"Describe picture number {i} in a few words.", kind="harmful",
                     category="c", images=(tiny_image(i, size=(64, 64)),)) for i in range(args.rows)]
    stacks = [parse_defenses("none", DefenseContext())]
    judges = [make_judge("profanity"), make_judge("refusal")]
    judges[0].judge([])  # import the judge's model before timing
    rates = {}
    for bs in (1, args.batch_size):
        cfg = RunConfig(batch_size=bs, perplexity=False, sampling=SamplingConfig(max_new_tokens=args.new_tokens))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            stats = run_generations(model, proc, rows, stacks, judges, Path(tmp), config=cfg, progress=False)
            rates[bs] = stats.new / (time.perf_counter() - start)
        print(f"batch_size={bs:3d}: {rates[bs]:7.2f} samples/s ({stats.new} samples)")
    ratio = rates[args.batch_size] / rates[1]
    print(f"model: {label}; {args.rows} rows, {args.new_tokens} new tokens, greedy")
    print(f"batched / one-at-a-time = {ratio:.2f}x (target >= 4x: {'met' if ratio >= 4 else 'missed'})")


if __name__ == "__main__":
    main()
