"""Seconds per training step of the graft's LLaVA stage: the plain Llava forward/backward (float32, SDPA,
logits at every position: what a first probe did) vs the graft's step (LM in bfloat16 with eager
attention, the prompt prefix's key/value cache computed once, the LM head at answer positions only).

    .venv/bin/python benchmarks/bench_graft_step.py --lm PATH [--batch 16] [--repeats 3] [--threads 1]

Prints both times and their ratio; the two losses agree up to the bfloat16 rounding.
"""

from __future__ import annotations

import argparse
import time

import torch

from safety_glasses.organism.graft.build import GraftConfig, build_graft_from, load_lm
from safety_glasses.organism.graft.data import encode_for_lm, prompt_prefix_ids, sample_examples
from safety_glasses.organism.graft.train import PrefixLM, image_embeddings


def _full_step(model: torch.nn.Module, batch: object, prefix: list[int]) -> tuple[float, float]:
    n = batch.ids.shape[0]
    ids = torch.cat([torch.tensor([prefix] * n), batch.ids], 1)
    mask = torch.cat([torch.ones(n, len(prefix), dtype=torch.long), batch.attention.long()], 1)
    target = torch.cat([torch.zeros(n, len(prefix), dtype=torch.bool), batch.target], 1)
    labels = torch.full_like(ids, -100)
    labels[target] = ids[target]
    start = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values, labels=labels).loss
    loss.backward()
    return time.perf_counter() - start, float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", required=True, help="causal LM folder (e.g. SmolLM2-135M-Instruct as safetensors)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, tok = load_lm(args.lm)
    model, processor = build_graft_from(lm, tok, GraftConfig())
    n = GraftConfig().image_tokens
    prefix = prompt_prefix_ids(processor, n)
    batches = [encode_for_lm(processor, sample_examples(9, k, args.batch), n, prefix) for k in range(args.repeats)]
    full = [_full_step(model, b, prefix) for b in batches]
    model.model.language_model.to(torch.bfloat16)
    model.lm_head.to(torch.bfloat16)
    model.model.language_model.config._attn_implementation = "eager"
    fast_lm = PrefixLM(model, prefix)
    fast = []
    for b in batches:
        start = time.perf_counter()
        loss = fast_lm.loss(b, image_embeddings(model, b.pixel_values))
        loss.backward()
        fast.append((time.perf_counter() - start, float(loss.detach())))
    t_full = min(t for t, _ in full)
    t_fast = min(t for t, _ in fast)
    print(f"batch {args.batch}, rest-of-sequence length ~{batches[0].ids.shape[1]} tokens after a "
          f"{len(prefix)}-token cached prefix, {args.threads} thread(s)")
    print(f"plain Llava step (float32, SDPA, full logits): {t_full:.2f} s   loss {full[0][1]:.4f}")
    print(f"graft step (bfloat16, eager, cached prefix, answer logits): {t_fast:.2f} s   loss {fast[0][1]:.4f}")
    print(f"speed-up: {t_full / t_fast:.1f}x")


if __name__ == "__main__":
    main()
