"""Shared fixtures for the SGM tests: tiny models and an independent reference scaling hook."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from safety_glasses.models import UnitSite
from safety_glasses.testing import tiny_image, tiny_vlm

#: Multimodal tiny archs and the text-only ones (AurA-text baseline).
VLM_ARCHS = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "paligemma", "gemma3", "mllama")
TEXT_ARCHS = ("llama", "qwen2", "gpt2")


@contextmanager
def reference_scale(model: torch.nn.Module, site: UnitSite, alpha: torch.Tensor) -> Iterator[None]:
    """Scale the site's units with a plain hook (a reference written independently of the library)."""
    module = model.get_submodule(site.module_name)

    def pre_hook(_mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x * alpha.to(x.device, x.dtype), *args[1:])

    def post_hook(_mod: Any, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return out * alpha.to(out.device, out.dtype)

    if site.where == "input":
        handle = module.register_forward_pre_hook(pre_hook)
    else:
        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def scale() -> Callable[..., Any]:
    """``with scale(model, site, alpha): ...`` scales one site by a hook."""
    return reference_scale


@pytest.fixture
def tiny() -> Callable[..., tuple[Any, Any]]:
    """``tiny(arch, seed=0)`` -> a fresh tiny model and its processor (cheap: < 0.2 s after the first)."""
    return tiny_vlm


@pytest.fixture
def image() -> Callable[..., Any]:
    """``image(seed, size=(32, 32))`` -> a deterministic random RGB image."""
    return tiny_image
