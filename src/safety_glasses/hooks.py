"""Removable forward hooks that scale MLP units, and the prefill/decode phase tracker.

Every hook is a small object that owns its state (STYLE 4): the alpha vector, a per
(device, dtype) cache of it, and the shared phase tracker. Hooks are always removed by the
context managers here, also when the body raises.

Token positions while *wearing* glasses (``positions``):

- ``"all"``: every token of every forward call is scaled.
- ``"prompt"``: only forward calls that start from an empty KV cache (the prefill of
  ``generate``, or any plain forward without a cache) are scaled.
- ``"generated"``: only forward calls that extend a non-empty KV cache (the decode steps of
  ``generate``) are scaled. Without a KV cache (``use_cache=False``) every call looks like a
  prefill, so ``"generated"`` scales nothing: keep the cache on (the default) to use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from .models import UnitSite

WEAR_POSITIONS = ("all", "prompt", "generated")


class ProjectHook:
    """Marker base of every hook this project registers (so they can be told from transformers' own)."""


class PhaseTracker(ProjectHook):
    """Remembers whether the current forward call of the whole model is a prefill or a decode step."""

    def __init__(self) -> None:
        self.prefill = True

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            try:
                past = int(cache.get_seq_length())
            except Exception:  # an empty cache object of an exotic kind
                past = 0
        elif isinstance(cache, (tuple, list)) and len(cache) > 0:
            past = 1
        self.prefill = past == 0


class ScaleHook(ProjectHook):
    """Multiplies the last dimension of a tensor by a per-unit ``alpha``.

    Used as a forward pre-hook (``where="input"``: scales the module's first positional input)
    or as a forward hook (``where="output"``: scales the module's output).
    """

    def __init__(self, alpha: torch.Tensor, where: str, positions: str = "all",
                 phase: PhaseTracker | None = None) -> None:
        if positions not in WEAR_POSITIONS:
            raise ValueError(f"positions must be one of {WEAR_POSITIONS}, got {positions!r}")
        self.alpha = alpha.detach().float().cpu()
        self.where = where
        self.positions = positions
        self.phase = phase
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _active(self) -> bool:
        if self.positions == "all" or self.phase is None:
            return True
        return self.phase.prefill if self.positions == "prompt" else not self.phase.prefill

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        a = self._cache.get(key)
        if a is None:
            a = self.alpha.to(device=x.device, dtype=x.dtype)
            self._cache[key] = a
        return x * a

    def pre(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args or not self._active():
            return None
        return (self._scale(args[0]),) + tuple(args[1:])

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._active():
            return None
        if isinstance(output, tuple):
            return (self._scale(output[0]),) + tuple(output[1:])
        return self._scale(output)


def register_site_hook(module: nn.Module, where: str, hook: Callable) -> torch.utils.hooks.RemovableHandle:
    """Register ``hook`` as a pre-hook (``where="input"``) or forward hook (``"output"``)."""
    if where == "input":
        return module.register_forward_pre_hook(hook)
    if where == "output":
        return module.register_forward_hook(hook)
    raise ValueError(f"where must be 'input' or 'output', got {where!r}")


@contextmanager
def scaled(model: nn.Module, sites: Sequence[UnitSite], alphas: dict[str, torch.Tensor],
           positions: str = "all") -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Context manager: scale each site's units by its alpha while inside the block.

    Example:
        >>> with scaled(model, sites, {s.module_name: torch.ones(s.size) for s in sites}):
        ...     logits = model(**inputs).logits
    """
    modules = dict(model.named_modules())
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        phase = None
        if positions != "all":
            phase = PhaseTracker()
            handles.append(model.register_forward_pre_hook(phase, with_kwargs=True))
        for site in sites:
            hook = ScaleHook(alphas[site.module_name], site.where, positions, phase)
            fn = hook.pre if site.where == "input" else hook.post
            handles.append(register_site_hook(modules[site.module_name], site.where, fn))
        yield handles
    finally:
        for h in handles:
            h.remove()


def _is_ours(fn: Any) -> bool:
    return isinstance(getattr(fn, "__self__", fn), ProjectHook)


def count_hooks(model: nn.Module, ours_only: bool = True) -> int:
    """Number of forward (pre-)hooks in ``model``: this project's only (default), or all of them.

    transformers registers hooks of its own on some modules; ``ours_only`` ignores those.

    Example:
        >>> count_hooks(model)
        0
    """
    n = 0
    for m in model.modules():
        for fn in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
            n += 1 if (not ours_only or _is_ours(fn)) else 0
    return n
