"""Wearing cost: ``generate`` plain vs with glasses hooked vs folded into the weights.

CPU (always): a small random Llava built from a config. GPU (only with ``--device cuda``): a randomly
initialised model of LLaVA-1.5-7B's language shapes (Llama-7B: 32 layers, 4096 hidden, 11008 MLP) in
bf16, batch 1, where the target is hooks at most 2% slower and folded equal to plain.

    python benchmarks/bench_wearing.py [--device cuda] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safety_glasses.glasses import Glasses, GlassesConfig
from safety_glasses.models import resolve_units


def build(device: str):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if device == "cuda":
        text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14)
        dtype = torch.bfloat16
    else:
        text = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=2000, max_position_embeddings=1024)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=64, patch_size=16)
        dtype = torch.float32
    cfg = LlavaConfig(text_config={"model_type": "llama", **text},
                      vision_config={"model_type": "clip_vision_model", **vision}, image_token_index=text["vocab_size"] - 1)
    with torch.device(device):
        model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    return model, cfg, dtype


def glasses_for(model) -> Glasses:
    sites = resolve_units(model, "act")
    gen = torch.Generator().manual_seed(0)
    alphas = {s.module_name: torch.where(torch.rand(s.size, generator=gen) < 0.02,
                                         torch.rand(s.size, generator=gen), torch.ones(s.size)) for s in sites}
    return Glasses(GlassesConfig(strategy="aura", sites=sites), alphas)


def interleaved(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Median wall time of each function, run in turns so that machine noise hits all alike."""
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, cfg, dtype = build(args.device)
    ids = torch.randint(0, cfg.text_config.vocab_size - 2, (1, args.prompt_tokens), device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    g = glasses_for(model)
    folded, _, _ = build(args.device)
    folded.load_state_dict(model.state_dict())
    g.fold_into(folded)

    def gen(m):
        with torch.no_grad():
            m.generate(input_ids=ids, **kw)

    def hooked():
        with g.apply(model):
            gen(model)

    t = interleaved({"plain": lambda: gen(model), "hooked": hooked, "folded": lambda: gen(folded)},
                    args.repeats, sync)
    t_plain, t_hook, t_fold = t["plain"], t["hooked"], t["folded"]
    print(f"device={args.device} dtype={dtype} layers={cfg.text_config.num_hidden_layers} "
          f"new_tokens={args.new_tokens} batch=1")
    print(f"plain  {t_plain * 1000:9.1f} ms")
    print(f"hooked {t_hook * 1000:9.1f} ms  ratio {t_hook / t_plain:.3f}  (GPU target <= 1.02)")
    print(f"folded {t_fold * 1000:9.1f} ms  ratio {t_fold / t_plain:.3f}  (target ~1.00)")


if __name__ == "__main__":
    main()
