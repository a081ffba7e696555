"""The attacker's view of a ``scores``-head SAC scheduler, as a plain ``nn.Sequential``.

``extract_scores_policy(model, vecnormalize, fold=True)`` returns

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
:mod:`fggm.mimo.env`). The default (``fold=False``) writes each shared layer as the pair
``Linear(context: x_k -> [x_k, mean_j x_j]) -> Linear(kron(I_K, [W_self, W_pool]))`` (the first
context map also gathers with ``P``), the same function with float32 sums closer to the policy's.
Every layer is one :mod:`fggm.core.bounds` supports.

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


def _frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.to(dtype))
        if bias is not None:
            lin.bias.copy_(bias.to(dtype))
    lin.requires_grad_(False)
    return lin


def _context_layer(num_users: int, fin: int, perm: np.ndarray | None = None, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """0/1 and 1/K weights: user-major ``[x_k]`` -> ``[x_k, mean_j x_j]`` per user (``perm``: gather
    from the raw observation layout first)."""
    K = num_users
    eye = torch.eye(fin, dtype=torch.float64)
    own = torch.kron(torch.eye(K, dtype=torch.float64), eye)                    # [K*fin, K*fin]
    mean = torch.kron(torch.full((K, K), 1.0 / K, dtype=torch.float64), eye)    # [K*fin, K*fin]
    w = torch.cat([own.view(K, fin, K * fin), mean.view(K, fin, K * fin)], dim=1).reshape(2 * K * fin, K * fin)
    if perm is not None:  # the layer reads the raw observation: column perm[i] holds user-major entry i
        raw = torch.zeros_like(w)
        raw[:, torch.as_tensor(perm)] = w
        w = raw
    return _frozen_linear(w, None, dtype)


def _shared_layer(layer: SetLinear, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """Block-diagonal ``kron(I_K, [W_self, W_pool])`` on ``[x_k, mean_j x_j]`` per user, bias repeated."""
    K = layer.num_users
    w_self = layer.self_linear.weight.detach().cpu().double()
    w_pool = layer.pool_linear.weight.detach().cpu().double() if layer.pool_linear is not None else None
    block = torch.cat([w_self, w_pool], dim=1) if w_pool is not None else w_self
    weight = torch.kron(torch.eye(K, dtype=torch.float64), block)
    return _frozen_linear(weight, layer.self_linear.bias.detach().cpu().double().repeat(K), dtype)


def _folded_layer(layer: SetLinear, perm: np.ndarray | None, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """``kron(I_K, W_self) + kron(ones/K, W_pool)`` in one ``Linear`` (``perm``: applied after the
    user-major gather ``x[:, perm]``, i.e. columns scattered back to the raw layout)."""
    K = layer.num_users
    weight = torch.kron(torch.eye(K, dtype=torch.float64), layer.self_linear.weight.detach().cpu().double())
    if layer.pool_linear is not None:
        weight = weight + torch.kron(torch.full((K, K), 1.0 / K, dtype=torch.float64),
                                     layer.pool_linear.weight.detach().cpu().double())
    if perm is not None:
        raw = torch.zeros_like(weight)
        raw[:, torch.as_tensor(perm)] = weight
        weight = raw
    return _frozen_linear(weight, layer.self_linear.bias.detach().cpu().double().repeat(K), dtype)


def extract_scores_policy(sac_model: Any, vecnormalize: Any, fold: bool = False,
                          dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Normaliser + shared per-user actor of a scores-head SAC model as one ``nn.Sequential``.

    Output ``[B, K]``: pre-tanh score means. ``dtype`` (float32 default), CPU, no trainable
    parameters, eval mode.
    ``fold=False`` (default) writes each shared layer as two ``Linear``: a fixed context map
    ``x_k -> [x_k, mean_j x_j]`` (0/1 and 1/K weights; the first one also gathers the raw
    observation user-major) and the block-diagonal ``kron(I_K, [W_self, W_pool])``, whose float32
    sums are close to the policy's own (agrees with SB3 to float32 rounding). ``fold=True`` multiplies
    each pair into one ``Linear`` (``kron(I_K, W_self) + kron(ones/K, W_pool)``): the same function,
    fewer layers, float32 sums in another order (differences of a few 1e-5 on a trained net).
    ``dtype=torch.float64`` builds every layer from the float64 statistics and exact weights: the
    policy's function without float32 rounding (what a float64 bound check wants).

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
        affine = Affine(torch.tensor(scale, dtype=torch.float32), torch.tensor(-mean * scale, dtype=torch.float32))
        affine.scale = torch.tensor(scale, dtype=dtype)  # the buffers at full precision of ``dtype``
        affine.shift = torch.tensor(-mean * scale, dtype=dtype)
        layers.append(affine)
        clip = float(vecnormalize.clip_obs)
        layers.append(nn.Hardtanh(-clip, clip))
    perm = user_major_index(M, K)
    first = True
    for m in list(actor.latent_pi) + [actor.mu]:
        if isinstance(m, SetLinear):
            if fold:
                layers.append(_folded_layer(m, perm if first else None, dtype))
            elif m.pool_linear is not None:
                layers += [_context_layer(K, m.fin, perm if first else None, dtype), _shared_layer(m, dtype)]
            else:  # no pooled term (the score layer): block-diagonal only; gather first if it is the first
                if first:
                    eye = torch.eye(K * m.fin, dtype=torch.float64)
                    gather = torch.zeros_like(eye)
                    gather[:, torch.as_tensor(perm)] = eye
                    layers.append(_frozen_linear(gather, None, dtype))
                layers.append(_shared_layer(m, dtype))
            first = False
        elif isinstance(m, nn.ReLU):
            layers.append(nn.ReLU())
        else:
            raise TypeError(f"actor layer {type(m).__name__} is not supported by fggm.bounds")
    view = nn.Sequential(*layers)
    view.eval()
    return view
