"""The attacker's view of a ``scores``-head SAC scheduler, as a plain ``nn.Sequential``.

``extract_scores_policy(model, vecnormalize)`` returns

    Affine((x - mean) / sqrt(var + eps)) -> Hardtanh(-clip_obs, clip_obs)
      -> Linear(obs_dim -> K*H1)  [gather user-major + first shared layer with pooled context]
      -> ReLU -> Linear(K*H1 -> K*H2) [shared layer: I_K (x) W_self + (1/K) 1 1^T (x) W_pool] -> ReLU ...
      -> Linear(K*HL -> K)        [shared score layer: I_K (x) w_mu]

whose K outputs are the pre-tanh means of SAC's per-user scores: ``tanh`` of them is
``model.predict(vecnormalize.normalize_obs(obs), deterministic=True)``. How the shared per-user
network maps onto plain ``Linear`` layers: the features extractor (:class:`UserFeatures`) is a
permutation matrix ``P`` of the observation entries (user-major grouping); each
:class:`SetLinear` ``y_k = W_self x_k + W_pool mean_j x_j + b`` is one ``Linear`` with weight
``kron(I_K, W_self) + kron(ones(K, K) / K, W_pool)`` and bias ``b`` repeated K times; the first
of them is multiplied by ``P`` (folded, so the view reads the raw observation layout of
:mod:`fggm.mimo.env`). Every layer is one :mod:`fggm.core.bounds` supports.

Example:
    >>> view = extract_scores_policy(model, vecnorm)              # doctest: +SKIP
    >>> scores = torch.tanh(view(torch.as_tensor(raw_obs)))       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fggm.core.bounds import Affine
from fggm.mimo.scores_policy import ScoresActor, SetLinear, user_major_index

__all__ = ["extract_scores_policy", "is_scores_model"]


def is_scores_model(sac_model: Any) -> bool:
    """True when ``sac_model``'s actor is the scores head's :class:`ScoresActor`.

    Example:
        >>> is_scores_model(object())
        False
    """
    return isinstance(getattr(sac_model, "actor", None), ScoresActor)


def _gathered_first_layer(layer: SetLinear, perm: np.ndarray) -> nn.Linear:
    """``layer.to_linear()`` applied after the user-major gather ``x[:, perm]``: columns scattered back."""
    lin = layer.to_linear()
    weight = torch.zeros_like(lin.weight)
    weight[:, torch.as_tensor(perm)] = lin.weight
    out = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(lin.bias)
    out.requires_grad_(False)
    return out


def extract_scores_policy(sac_model: Any, vecnormalize: Any) -> nn.Sequential:
    """Normaliser + shared per-user actor of a scores-head SAC model as one ``nn.Sequential``.

    Output ``[B, K]``: pre-tanh score means. Float32, CPU, no trainable parameters, eval mode.

    Example:
        >>> view = extract_scores_policy(model, vecnorm)       # doctest: +SKIP
        >>> view(torch.zeros(1, 544)).shape                     # doctest: +SKIP
        torch.Size([1, 16])
    """
    if not is_scores_model(sac_model):
        raise TypeError("expected a stable_baselines3 SAC model with the scores head (fggm.ScoresPolicy)")
    actor: ScoresActor = sac_model.actor
    fx = actor.features_extractor
    M, K = int(fx.num_antennas), int(fx.num_users)
    obs_dim = int(np.prod(sac_model.observation_space.shape))
    layers: list[nn.Module] = []
    if vecnormalize is not None and getattr(vecnormalize, "norm_obs", True):
        mean = np.asarray(vecnormalize.obs_rms.mean, dtype=np.float64).reshape(-1)
        var = np.asarray(vecnormalize.obs_rms.var, dtype=np.float64).reshape(-1)
        if mean.shape[0] != obs_dim:
            raise ValueError(f"normaliser has {mean.shape[0]} features, the policy expects {obs_dim}")
        scale = 1.0 / np.sqrt(var + float(vecnormalize.epsilon))
        layers.append(Affine(torch.tensor(scale, dtype=torch.float32), torch.tensor(-mean * scale, dtype=torch.float32)))
        clip = float(vecnormalize.clip_obs)
        layers.append(nn.Hardtanh(-clip, clip))
    perm = user_major_index(M, K)
    first = True
    for m in list(actor.latent_pi) + [actor.mu]:
        if isinstance(m, SetLinear):
            layers.append(_gathered_first_layer(m, perm) if first else m.to_linear())
            first = False
        elif isinstance(m, nn.ReLU):
            layers.append(nn.ReLU())
        else:
            raise TypeError(f"actor layer {type(m).__name__} is not supported by fggm.bounds")
    view = nn.Sequential(*layers)
    view.eval()
    return view
