"""The attacker's view of an SB3 SAC scheduler: a plain ``torch.nn.Sequential``.

``extract_policy(model, vecnormalize)`` returns

    Affine((x - mean) / sqrt(var + eps)) -> Hardtanh(-clip_obs, clip_obs) -> actor MLP -> mu

whose output is the pre-tanh mean of SAC's deterministic action; ``tanh`` of it (rescaled to
the action space, the identity for ``Box(-1, 1)``) is exactly what
``model.predict(vecnormalize.normalize_obs(obs), deterministic=True)`` returns.  Because tanh
is monotone, certified bounds of the view's output are certified bounds of the action.
Every layer is supported by :mod:`fggm.bounds`.

For a ``scores``-head scheduler (:class:`fggm.ScoresPolicy`) the view is
:func:`extract_scores_policy` (K outputs, one pre-tanh score per user; see
:mod:`fggm.mimo.scores_view`); :func:`load_attacker_view` picks the right one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fggm.core.bounds import Affine
from fggm.mimo.scores_view import extract_scores_policy, is_scores_model

__all__ = ["extract_policy", "extract_scores_policy", "load_attacker_view", "load_vecnormalize", "view_to_action",
           "find_checkpoint"]


def _copy_module(m: nn.Module) -> nn.Module:
    """A float32 CPU copy of a supported actor layer (Linear or an activation)."""
    if isinstance(m, nn.Linear):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.detach().cpu().float())
            if m.bias is not None:
                lin.bias.copy_(m.bias.detach().cpu().float())
        lin.requires_grad_(False)
        return lin
    if isinstance(m, nn.Sequential):
        return nn.Sequential(*[_copy_module(c) for c in m])
    if isinstance(m, (nn.ReLU, nn.Tanh, nn.Hardtanh, nn.Identity, nn.Flatten)):
        return type(m)() if not isinstance(m, nn.Hardtanh) else nn.Hardtanh(m.min_val, m.max_val)
    raise TypeError(f"actor layer {type(m).__name__} is not supported by fggm.bounds")


def extract_policy(sac_model: Any, vecnormalize: Any) -> nn.Sequential:
    """Normaliser + SAC actor as one ``nn.Sequential`` mapping raw observations to pre-tanh means.

    ``sac_model`` is a ``stable_baselines3.SAC``; ``vecnormalize`` its ``VecNormalize`` (or
    ``None`` when the policy was trained without one).  The result lives on the CPU in float32,
    has no trainable parameters and is in eval mode.

    Example:
        >>> view = extract_policy(model, vecnorm)             # doctest: +SKIP
        >>> action = torch.tanh(view(torch.as_tensor(raw_obs)))  # doctest: +SKIP
    """
    if is_scores_model(sac_model):
        raise ValueError("this scheduler has the 'scores' action head (one score per user): its attacker's view is "
                         "extract_scores_policy, and the FGGM attack does not handle it yet")
    actor = getattr(sac_model, "actor", None)
    if actor is None or not hasattr(actor, "latent_pi") or not hasattr(actor, "mu"):
        raise TypeError("expected a stable_baselines3 SAC model (with actor.latent_pi and actor.mu)")
    from stable_baselines3.common.torch_layers import FlattenExtractor

    extractor = getattr(actor, "features_extractor", None)
    if extractor is not None and not isinstance(extractor, (nn.Flatten, FlattenExtractor)):
        raise TypeError(f"features extractor {type(extractor).__name__} is not supported (need Flatten)")
    obs_dim = int(np.prod(sac_model.observation_space.shape))
    layers: list[nn.Module] = []
    if vecnormalize is not None and getattr(vecnormalize, "norm_obs", True):
        rms = vecnormalize.obs_rms
        mean = np.asarray(rms.mean, dtype=np.float64).reshape(-1)
        var = np.asarray(rms.var, dtype=np.float64).reshape(-1)
        if mean.shape[0] != obs_dim:
            raise ValueError(f"normaliser has {mean.shape[0]} features, the policy expects {obs_dim}")
        scale = 1.0 / np.sqrt(var + float(vecnormalize.epsilon))
        layers.append(Affine(torch.tensor(scale, dtype=torch.float32),
                             torch.tensor(-mean * scale, dtype=torch.float32)))
        clip = float(vecnormalize.clip_obs)
        layers.append(nn.Hardtanh(-clip, clip))
    layers.extend(_copy_module(m) for m in actor.latent_pi)
    layers.append(_copy_module(actor.mu))
    view = nn.Sequential(*layers)
    view.eval()
    return view


def view_to_action(pre_tanh: torch.Tensor, low: float | np.ndarray = -1.0,
                   high: float | np.ndarray = 1.0) -> torch.Tensor:
    """SB3's deterministic action from the view's output: tanh, then rescale to ``[low, high]``.

    Example:
        >>> view_to_action(torch.tensor([0.0]))
        tensor([0.])
    """
    low_t = torch.as_tensor(low, dtype=pre_tanh.dtype)
    high_t = torch.as_tensor(high, dtype=pre_tanh.dtype)
    return low_t + (torch.tanh(pre_tanh) + 1.0) * 0.5 * (high_t - low_t)


def find_checkpoint(scheduler_dir: str | Path) -> tuple[Path, Path | None]:
    """The SB3 ``.zip`` and the ``vecnormalize.pkl`` (if any) in a scheduler directory.

    Example:
        >>> find_checkpoint("data/schedulers/smart16")  # doctest: +SKIP
        (PosixPath('data/schedulers/smart16/model.zip'), PosixPath('data/schedulers/smart16/vecnormalize.pkl'))
    """
    d = Path(scheduler_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"scheduler directory {d} does not exist")
    zips = sorted(d.glob("*.zip"))
    if not zips:
        raise FileNotFoundError(f"no SB3 checkpoint (*.zip) in {d}")
    preferred = [z for z in zips if z.stem in ("model", "sac", "policy")]
    pkls = sorted(d.glob("*vecnormalize*.pkl")) or sorted(d.glob("*.pkl"))
    return (preferred or zips)[0], (pkls[0] if pkls else None)


def load_vecnormalize(path: str | Path) -> Any:
    """A saved ``VecNormalize`` without an environment attached (only its statistics are used),
    read by :func:`fggm.mimo.safe_load.load_vecnormalize`'s restricted unpickler: a crafted file
    cannot run code.

    Example:
        >>> vn = load_vecnormalize("data/schedulers/smart16/vecnormalize.pkl")  # doctest: +SKIP
    """
    from fggm.mimo.safe_load import load_vecnormalize as safe

    return safe(path)


def load_attacker_view(scheduler_dir: str | Path) -> nn.Sequential:
    """Load a saved SAC scheduler (``*.zip`` + ``vecnormalize.pkl``) as the attacker's view
    (:func:`extract_policy` for the subset head, :func:`extract_scores_policy` for the scores head).

    Nothing is unpickled from the files (see :mod:`fggm.mimo.safe_load`); the SAC zip is loaded
    against the spaces of the environment in the folder's ``manifest.json`` or, without one, the
    observation and action sizes of its policy weights.

    Example:
        >>> view = load_attacker_view("data/schedulers/smart16")  # doctest: +SKIP
        >>> view(torch.zeros(1, 544)).shape                          # doctest: +SKIP
        torch.Size([1, 1])
    """
    from fggm.mimo.safe_load import load_sac

    zip_path, pkl_path = find_checkpoint(scheduler_dir)
    obs_space, act_space = _spaces(Path(scheduler_dir), zip_path)
    model = load_sac(zip_path, obs_space, act_space)
    vecnorm = load_vecnormalize(pkl_path) if pkl_path is not None else None
    if is_scores_model(model):
        return extract_scores_policy(model, vecnorm)
    return extract_policy(model, vecnorm)


def _spaces(folder: Path, zip_path: Path) -> tuple[Any, Any]:
    """Observation and action spaces for a checkpoint: its manifest's environment, else the sizes
    of the actor's first and last weights (unbounded observations, actions in [-1, 1])."""
    import json
    import zipfile

    from gymnasium import spaces

    from fggm.mimo.config import ConfigError, env_config_from_dict
    from fggm.mimo.safe_load import CheckpointError

    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            from fggm.mimo.env import MuMimoEnv

            env = MuMimoEnv(env_config_from_dict(json.loads(manifest.read_text())["config"]["env"]))
            return env.observation_space, env.action_space
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, ConfigError):
            pass  # not one of this project's manifests: fall back to the weights
    try:
        with zipfile.ZipFile(zip_path) as zf:
            state = torch.load(io.BytesIO(zf.read("policy.pth")), map_location="cpu", weights_only=True)
        first = state["actor.latent_pi.0.weight"] if "actor.latent_pi.0.weight" in state else \
            next(v for k, v in state.items() if k.startswith("actor.") and k.endswith("weight"))
        n_obs, n_act = int(first.shape[1]), int(state["actor.mu.weight"].shape[0])
    except Exception as exc:  # a damaged or foreign zip
        raise CheckpointError(f"{zip_path} is not a readable SB3 SAC zip ({type(exc).__name__})") from None
    return (spaces.Box(-np.inf, np.inf, (n_obs,), np.float32), spaces.Box(-1.0, 1.0, (n_act,), np.float32))
