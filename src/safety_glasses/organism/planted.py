"""Plant a behaviour in dedicated MLP units: widen every decoder MLP and train only the new units.

SGM rests on a hypothesis about real language models: toxic behaviour is written by a small set of
"expert" MLP units that also fire on toxic text. A model organism can be built to satisfy that
hypothesis on purpose, so that the detection side of SGM (AUROC over concept data) can be checked
against a known answer. :func:`widen_mlps` adds ``n`` units to the MLP of every decoder layer,
initialised inert (their ``down_proj`` columns are zero, so the widened model computes exactly what
the narrow one did); :func:`freeze_all_but_planted` then makes only those units trainable: the
gate/up rows and the down columns of the new units, everything else frozen (gradient masks, no
weight decay on the masked tensors, so AdamW leaves the frozen entries bit-for-bit unchanged).
A fine-tune on the toxic/safe mixture can then write toxicity only through the planted units, and
``planted_units.json`` next to the weights lists them.

Example:
    >>> from .model import OrganismConfig, build_organism
    >>> model, _ = build_organism(OrganismConfig.tiny())
    >>> wide = widen_mlps(model, 8)
    >>> wide.config.text_config.intermediate_size
    72
    >>> planted_units(wide, 8)["0"]
    [64, 72]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

PLANTED_FILE = "planted_units.json"


def _mlps(model: Any) -> list[Any]:
    return [layer.mlp for layer in model.get_decoder().layers]


def widen_mlps(model: Any, n: int, seed: int = 0) -> Any:
    """A copy of ``model`` whose decoder MLPs have ``n`` more units, which start inert.

    New gate/up rows are drawn like the model's own initialisation (normal, ``initializer_range``);
    new down-projection columns are zero, so outputs are unchanged until the new units are trained.

    Example:
        >>> from .model import OrganismConfig, build_organism
        >>> m, p = build_organism(OrganismConfig.tiny())
        >>> x = torch.tensor([[1, 5, 7]])
        >>> torch.allclose(widen_mlps(m, 4).get_decoder()(x).last_hidden_state, m.get_decoder()(x).last_hidden_state)
        True
    """
    if n < 1:
        raise ValueError(f"the number of planted units must be >= 1, got {n}")
    import copy

    config = copy.deepcopy(model.config)
    text = config.get_text_config()
    old = int(text.intermediate_size)
    text.intermediate_size = old + n
    wide = type(model)(config)
    wide.generation_config = copy.deepcopy(model.generation_config)
    std = float(getattr(text, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    new_state = wide.state_dict()
    for name, value in new_state.items():
        src = state[name]
        if src.shape == value.shape:
            new_state[name] = src.clone()
            continue
        grown = torch.zeros_like(value)
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            grown[:old] = src
            grown[old:] = torch.randn(n, value.shape[1], generator=gen, dtype=value.dtype) * std
        elif name.endswith("down_proj.weight"):
            grown[:, :old] = src
        else:
            raise ValueError(f"unexpected shape change in {name}: {tuple(src.shape)} -> {tuple(value.shape)}")
        new_state[name] = grown
    wide.load_state_dict(new_state)
    return wide.eval()


def planted_units(model: Any, n: int) -> dict[str, list[int]]:
    """``{layer: [first, end)}``: the last ``n`` units of every decoder MLP (the planted ones).

    Example:
        >>> from .model import OrganismConfig, build_organism
        >>> planted_units(build_organism(OrganismConfig.tiny())[0], 4)["1"]
        [60, 64]
    """
    width = int(model.config.get_text_config().intermediate_size)
    if not 1 <= n <= width:
        raise ValueError(f"need 1 <= planted units <= MLP width {width}, got {n}")
    return {str(i): [width - n, width] for i in range(len(_mlps(model)))}


def freeze_all_but_planted(model: Any, n: int) -> list[torch.nn.Parameter]:
    """Make only the last ``n`` units of every decoder MLP trainable; return the trainable tensors.

    The returned tensors (gate/up/down weights of the decoder MLPs) carry gradient hooks that zero
    every entry outside the planted units; give them no weight decay.

    Example:
        >>> from .model import OrganismConfig, build_organism
        >>> m = widen_mlps(build_organism(OrganismConfig.tiny())[0], 4)
        >>> len(freeze_all_but_planted(m, 4))
        6
    """
    planted_units(model, n)  # validates n
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for mlp in _mlps(model):
        for proj, axis in ((mlp.gate_proj, 0), (mlp.up_proj, 0), (mlp.down_proj, 1)):
            w = proj.weight
            mask = torch.zeros_like(w)
            if axis == 0:
                mask[-n:] = 1.0
            else:
                mask[:, -n:] = 1.0
            w.requires_grad_(True)
            w.register_hook(lambda g, m=mask: g * m)
            params.append(w)
    return params


class PlantedActivity:
    """Forward hooks that keep the planted units' activations of each forward pass, for training penalties.

    ``pop()`` gives the L1 penalty (sum over layers of the mean |activation|); ``shaping(toxic, safe)``
    gives the expert-shaping penalty of :meth:`shaping`. Both forget the activations they read.

    Example:
        >>> from .model import OrganismConfig, build_organism
        >>> m = widen_mlps(build_organism(OrganismConfig.tiny())[0], 4)
        >>> act = PlantedActivity(m, 4)
        >>> _ = m.get_decoder()(torch.tensor([[1, 2, 3]]))
        >>> float(act.pop()) > 0
        True
        >>> act.remove()
    """

    def __init__(self, model: Any, n: int) -> None:
        planted_units(model, n)
        self.n = n
        self.values: list[torch.Tensor] = []
        self.handles = [mlp.down_proj.register_forward_pre_hook(self._hook) for mlp in _mlps(model)]

    def _hook(self, _module: Any, args: tuple[Any, ...]) -> None:
        self.values.append(args[0][..., -self.n:])

    def _take(self) -> list[torch.Tensor]:
        if not self.values:
            raise RuntimeError("no forward pass since the activations were last read")
        values, self.values = self.values, []
        return values

    def pop(self) -> torch.Tensor:
        """Sum over layers of the mean |activation| since the last call (and forget them)."""
        return torch.stack([v.abs().mean() for v in self._take()]).sum()

    def shaping(self, toxic: torch.Tensor, safe: torch.Tensor, target: float = 1.0) -> torch.Tensor:
        """Expert-shaping penalty: planted units fire (>= ``target``) on toxic text and stay silent on safe text.

        ``toxic`` and ``safe`` are ``(batch, seq)`` boolean masks of token positions (positions in
        neither, e.g. harmful prompts, are free: the units may decide there whether to turn toxic).
        Per layer: mean ``relu(target - a)`` over toxic positions + mean ``|a|`` over safe positions,
        summed over layers. It makes the planted units monosemantic, non-negative toxicity experts,
        the kind of unit SGM's AUROC ranking assumes.

        Example:
            >>> from .model import OrganismConfig, build_organism
            >>> m = widen_mlps(build_organism(OrganismConfig.tiny())[0], 4)
            >>> act = PlantedActivity(m, 4)
            >>> _ = m.get_decoder()(torch.tensor([[1, 2, 3]]))
            >>> tox = torch.tensor([[False, True, True]])
            >>> float(act.shaping(tox, ~tox)) > 0
            True
        """
        total = torch.zeros(())
        for a in self._take():
            parts = []
            for mask, penalty in ((toxic, lambda x: torch.relu(target - x)), (safe, torch.abs)):
                if bool(mask.any()):
                    parts.append(penalty(a[mask]).mean())
            if parts:
                total = total + torch.stack(parts).sum()
        return total

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []


def write_planted(out_dir: str | Path, model: Any, n: int, note: str) -> Path:
    """Write ``planted_units.json`` (``{"units": {layer: [first, end)}, "per_layer": n, "note": ...}``).

    Example:
        >>> import tempfile
        >>> from .model import OrganismConfig, build_organism
        >>> p = write_planted(tempfile.mkdtemp(), build_organism(OrganismConfig.tiny())[0], 4, "test")
        >>> json.loads(p.read_text())["per_layer"]
        4
    """
    path = Path(out_dir) / PLANTED_FILE
    path.write_text(json.dumps({"units": planted_units(model, n), "per_layer": n, "note": note}, indent=2) + "\n",
                    encoding="utf-8")
    return path


def load_planted(model_dir: str | Path) -> dict[str, list[int]] | None:
    """The planted units of an organism folder (``None`` when it has none).

    Example:
        >>> load_planted("/nonexistent") is None
        True
    """
    path = Path(model_dir) / PLANTED_FILE
    if not path.is_file():
        return None
    return {str(k): [int(a), int(b)] for k, (a, b) in json.loads(path.read_text(encoding="utf-8"))["units"].items()}


def planted_recall(aurocs: dict[int, torch.Tensor], planted: dict[str, list[int]]) -> dict[str, float]:
    """How well AUROC ranking finds the planted units.

    ``aurocs`` maps decoder layer -> AUROC of each unit of its MLP. Returns the share of planted units
    among the top-``P`` units by AUROC over all layers (``P`` = number of planted units; 1.0 = found
    exactly), and the mean AUROC of planted and of other units.

    Example:
        >>> a = {0: torch.tensor([0.5, 0.6, 0.99, 0.98])}
        >>> planted_recall(a, {"0": [2, 4]})["recall_at_p"]
        1.0
    """
    scores, is_planted = [], []
    for layer, values in sorted(aurocs.items()):
        first, end = planted.get(str(layer), [0, 0])
        flags = torch.zeros(values.numel(), dtype=torch.bool)
        flags[first:end] = True
        scores.append(values.float().flatten())
        is_planted.append(flags)
    s, f = torch.cat(scores), torch.cat(is_planted)
    p = int(f.sum())
    if p == 0:
        raise ValueError("no planted unit lies in the given layers")
    top = torch.topk(s, p).indices
    rest = s[~f]
    return {"recall_at_p": float(f[top].float().mean()), "planted": p,
            "mean_auroc_planted": float(s[f].mean()),
            "mean_auroc_other": float(rest.mean()) if rest.numel() else float("nan")}
