"""Batched generation through a model's own processor and chat template."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from .inputs import encode_rows


def _input_device(model: nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(model.parameters()).device


def to_model_inputs(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Move encoded inputs to the model's input device; floating tensors take the model's dtype."""
    device, dtype = _input_device(model), getattr(model, "dtype", torch.float32)
    out = {}
    for k, v in inputs.items():
        if torch.is_tensor(v):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


@torch.no_grad()
def generate_texts(model: nn.Module, processor: Any, prompts: Sequence[str],
                   images: Sequence[Sequence[Image.Image]] | None = None, *, max_new_tokens: int = 64,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                   seed: int | None = None, layout: str = "auto") -> list[str]:
    """Generate one reply per prompt (batched, left padding); returns only the new text, stripped.

    ``layout`` (see :data:`safety_glasses.inputs.LAYOUTS`): ``auto`` uses the chat template when there is
    one, else ``USER: ...\nASSISTANT:``; ``raw`` continues the prompt text as it is (base LMs, AurA).

    Example:
        >>> generate_texts(model, processor, ["What colour is the circle?"], [[img]], max_new_tokens=8)
        ['red']
    """
    images = images if images is not None else [[] for _ in prompts]
    batch = encode_rows(processor, list(prompts), [list(i) for i in images], None, model_config=model.config,
                        layout=layout)
    inputs = to_model_inputs(batch.inputs, model)
    tok = _tokenizer(processor)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:
        pad = getattr(tok, "eos_token_id", None)
    if pad is not None:
        kwargs["pad_token_id"] = pad
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**inputs, **kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
