"""Test helpers for the SGM tests: a planted toxic expert and its concept rows."""

from __future__ import annotations

import random
from typing import Any

import torch

from safety_glasses.testing import tiny_image

WORDS = "the quick brown fox jumps over lazy dog cat red chair street night garden flowers trees birds park".split()
PLANT = "zzgrr"
NEUTRAL = "breeze"


def planted_rows(n: int, seed: int = 0, images: bool = True) -> list[dict[str, Any]]:
    """Rows of random words; toxic rows carry the planted word, non-toxic ones a neutral word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        toxic = i % 2 == 0
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        words.insert(rng.randint(0, len(words)), PLANT if toxic else NEUTRAL)
        rows.append({"id": f"r{i}", "image": tiny_image(seed * 1000 + i) if images else None,
                     "prompt": " ".join(rng.choice(WORDS) for _ in range(4)),
                     "response": " ".join(words), "label": "toxic" if toxic else "non-toxic"})
    return rows


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


@torch.no_grad()
def plant_expert(model: Any, processor: Any, rows: list[dict[str, Any]], unit: int = 5, dim: int = 3,
                 scale: float = 8.0) -> None:
    """Make MLP unit ``unit`` of decoder layer 0 fire only on the planted word's tokens.

    Hidden dimension ``dim`` is reserved: only the planted tokens' embeddings write into it, and
    attention outputs and image features never do, so the unit's ``act`` value is exactly zero on
    every other token.
    """
    tok = _tokenizer(processor)
    safe_ids = {t for r in rows if r["label"] == "non-toxic" for t in tok(r["response"] + " " + r["prompt"])["input_ids"]}
    plant_ids = [t for t in tok(" " + PLANT)["input_ids"] + tok(PLANT)["input_ids"] if t not in safe_ids]
    assert plant_ids, "the planted word shares all its tokens with safe rows"
    emb = model.get_input_embeddings().weight
    emb[:, dim] = 0.0
    for t in set(plant_ids):
        emb[t] = 0.0
        emb[t, dim] = scale
    decoder = model.get_decoder()
    for layer in decoder.layers:
        layer.self_attn.o_proj.weight[dim, :] = 0.0
        layer.mlp.down_proj.weight[dim, :] = 0.0
    proj = getattr(getattr(model, "model", model), "multi_modal_projector", None)
    if proj is not None:
        last = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight[dim, :] = 0.0
        if last.bias is not None:
            last.bias[dim] = 0.0
    mlp = decoder.layers[0].mlp
    for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight[unit, :] = 0.0
        lin.weight[unit, dim] = 4.0
