"""The ``scores`` head's SAC policy: ONE network applied to every user (permutation-equivariant).

Layout of the pieces (all importable from :mod:`fggm`):

* :class:`UserFeatures` (SB3 features extractor): the observation ``[su (K), history (K), Re H
  (M K), Im H (M K)]`` regrouped user by user, ``[B, K * F]`` with ``F = 2 + 2M`` per user
  (own single-user SE, own cumulative SE, own ``Re h_k``, own ``Im h_k``). A fixed permutation of
  the observation entries, so a linear map with no parameters.
* :class:`SetLinear`: ``y_k = W_self x_k + W_pool mean_j(x_j) + b`` for every user k, with the same
  weights for all users: each user's own features plus pooled context over all users. Stacked
  with ReLUs it is the DeepSets equivariant network; permuting the users permutes the output.
* :class:`ScoresActor`: ``UserFeatures -> [SetLinear -> ReLU] x L -> per-user Linear`` gives one
  pre-tanh mean per user (``mu``) and one log-std per user; SB3's squashed Gaussian does the rest.
* :class:`ScoresCritic`: per-user ``[features_k, a_k]`` through the same kind of equivariant
  layers, mean-pooled over users (so ``Q`` is permutation-invariant), then a small MLP.
* :class:`ScoresPolicy`: the ``SACPolicy`` that builds them (``SAC(ScoresPolicy, env,
  policy_kwargs={"num_users": K, "num_antennas": M, "net_arch": [128, 128]})``).

Because every piece is a :class:`torch.nn.Linear` in disguise (block structure over users), the
whole actor is also an ``nn.Sequential`` of ``Linear`` and ``ReLU``; see
:func:`fggm.mimo.policy.extract_scores_policy`.

Example:
    >>> import torch
    >>> layer = SetLinear(3, 2, 4)
    >>> x = torch.randn(5, 3 * 2)
    >>> perm = torch.tensor([2, 0, 1])
    >>> xp = x.view(5, 3, 2)[:, perm].reshape(5, 6)
    >>> torch.allclose(layer(xp).view(5, 3, 4), layer(x).view(5, 3, 4)[:, perm], atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch import nn

__all__ = ["SetLinear", "UserFeatures", "ScoresActor", "ScoresCritic", "ScoresPolicy", "user_major_index"]


def user_major_index(num_antennas: int, num_users: int) -> np.ndarray:
    """Observation positions in user-major order: user k's ``[su_k, hist_k, Re h_k, Im h_k]`` at
    ``k*F : (k+1)*F`` (``F = 2 + 2M``). It is a permutation of ``range(obs_dim)``.

    Example:
        >>> user_major_index(2, 2).tolist()
        [0, 2, 4, 5, 8, 9, 1, 3, 6, 7, 10, 11]
    """
    M, K = num_antennas, num_users
    rows = []
    for k in range(K):
        rows.append(np.concatenate([[k, K + k], 2 * K + k * M + np.arange(M), 2 * K + M * K + k * M + np.arange(M)]))
    return np.concatenate(rows).astype(np.int64)


class SetLinear(nn.Module):
    """Permutation-equivariant linear layer on user-major inputs ``[B, K * fin] -> [B, K * fout]``:
    ``y_k = W_self x_k + W_pool mean_j x_j + b`` (``pool=False`` drops the pooled term).

    Example:
        >>> layer = SetLinear(4, 3, 2)
        >>> layer(torch.zeros(7, 12)).shape
        torch.Size([7, 8])
        >>> layer.to_linear().weight.shape
        torch.Size([8, 12])
    """

    def __init__(self, num_users: int, fin: int, fout: int, pool: bool = True) -> None:
        super().__init__()
        self.num_users, self.fin, self.fout, self.pool = int(num_users), int(fin), int(fout), bool(pool)
        self.self_linear = nn.Linear(fin, fout)
        self.pool_linear = nn.Linear(fin, fout, bias=False) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(*lead, self.num_users, self.fin)
        y = self.self_linear(h)
        if self.pool_linear is not None:
            y = y + self.pool_linear(h.mean(dim=-2, keepdim=True))
        return y.reshape(*lead, self.num_users * self.fout)

    def to_linear(self) -> nn.Linear:
        """The same map as one ``nn.Linear`` (float32, no grad): ``I_K (x) W_self + (1/K) 1 1^T (x) W_pool``.

        Example:
            >>> layer = SetLinear(3, 2, 2); x = torch.randn(4, 6)
            >>> torch.allclose(layer.to_linear()(x), layer(x), atol=1e-6)
            True
        """
        K = self.num_users
        with torch.no_grad():
            w_self = self.self_linear.weight.detach().cpu().double()
            weight = torch.kron(torch.eye(K, dtype=torch.float64), w_self)
            if self.pool_linear is not None:
                w_pool = self.pool_linear.weight.detach().cpu().double()
                weight = weight + torch.kron(torch.full((K, K), 1.0 / K, dtype=torch.float64), w_pool)
            bias = self.self_linear.bias.detach().cpu().double().repeat(K)
            lin = nn.Linear(K * self.fin, K * self.fout)
            lin.weight.copy_(weight.float())
            lin.bias.copy_(bias.float())
        lin.requires_grad_(False)
        return lin


class UserFeatures(BaseFeaturesExtractor):
    """SB3 features extractor: the observation regrouped user-major, ``[B, K * (2 + 2M)]``
    (see :func:`user_major_index`). No parameters.

    Example:
        >>> from gymnasium import spaces
        >>> fx = UserFeatures(spaces.Box(-1, 1, (12,)), num_users=2, num_antennas=2)
        >>> fx(torch.arange(12.0).unsqueeze(0)).tolist()
        [[0.0, 2.0, 4.0, 5.0, 8.0, 9.0, 1.0, 3.0, 6.0, 7.0, 10.0, 11.0]]
    """

    def __init__(self, observation_space: spaces.Box, num_users: int, num_antennas: int) -> None:
        K, M = int(num_users), int(num_antennas)
        obs_dim = int(np.prod(observation_space.shape))
        if obs_dim != 2 * K + 2 * M * K:
            raise ValueError(f"observation size {obs_dim} does not match K={K} users and M={M} antennas (2K + 2MK)")
        super().__init__(observation_space, features_dim=obs_dim)
        self.num_users, self.num_antennas = K, M
        self.per_user = 2 + 2 * M
        self.register_buffer("index", torch.as_tensor(user_major_index(M, K)), persistent=False)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return observations.flatten(1).index_select(1, self.index)


def _set_mlp(num_users: int, fin: int, arch: list[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    last = fin
    for width in arch:
        layers += [SetLinear(num_users, last, int(width)), nn.ReLU()]
        last = int(width)
    return nn.Sequential(*layers), last


class ScoresActor(Actor):
    """SAC actor of the scores head: shared per-user network, one squashed-Gaussian score per user.

    Example:
        >>> from gymnasium import spaces
        >>> obs, act = spaces.Box(-9, 9, (12,)), spaces.Box(-1, 1, (2,))
        >>> a = ScoresActor(obs, act, [8], UserFeatures(obs, 2, 2), 12, num_users=2)
        >>> a(torch.zeros(3, 12), deterministic=True).shape
        torch.Size([3, 2])
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, net_arch: list[int],
                 features_extractor: nn.Module, features_dim: int, num_users: int = 16, **kwargs: Any) -> None:
        kwargs.pop("use_sde", None)
        super().__init__(observation_space, action_space, [], features_extractor, features_dim, use_sde=False, **kwargs)
        K = int(num_users)
        if int(np.prod(action_space.shape)) != K:
            raise ValueError(f"the scores head needs one action per user ({K}), got action shape {action_space.shape}")
        self.num_users = K
        self.net_arch = list(net_arch)
        self.latent_pi, last = _set_mlp(K, features_dim // K, self.net_arch)
        self.mu = SetLinear(K, last, 1, pool=False)
        self.log_std = SetLinear(K, last, 1, pool=False)  # type: ignore[assignment]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(num_users=self.num_users, net_arch=self.net_arch)
        return data


class ScoresCritic(BaseModel):
    """Twin Q-networks, permutation-invariant: per-user ``[features_k, a_k]`` -> equivariant layers ->
    mean over users -> MLP -> Q.

    Example:
        >>> from gymnasium import spaces
        >>> obs, act = spaces.Box(-9, 9, (12,)), spaces.Box(-1, 1, (2,))
        >>> c = ScoresCritic(obs, act, [8], UserFeatures(obs, 2, 2), 12, num_users=2)
        >>> [q.shape for q in c(torch.zeros(3, 12), torch.zeros(3, 2))]
        [torch.Size([3, 1]), torch.Size([3, 1])]
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, net_arch: list[int],
                 features_extractor: nn.Module, features_dim: int, num_users: int = 16,
                 activation_fn: type[nn.Module] = nn.ReLU, normalize_images: bool = True, n_critics: int = 2,
                 share_features_extractor: bool = False) -> None:
        super().__init__(observation_space, action_space, features_extractor=features_extractor,
                         normalize_images=normalize_images)
        K = int(num_users)
        self.num_users = K
        self.per_user = features_dim // K
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            body, last = _set_mlp(K, self.per_user + 1, list(net_arch))
            head = nn.Sequential(nn.Linear(last, last), nn.ReLU(), nn.Linear(last, 1))
            q_net = nn.ModuleDict({"body": body, "head": head})
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def _q(self, q_net: nn.Module, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        B, K = features.shape[0], self.num_users
        x = torch.cat([features.view(B, K, self.per_user), actions.view(B, K, 1)], dim=2).reshape(B, -1)
        h = q_net["body"](x).view(B, K, -1).mean(dim=1)
        return q_net["head"](h)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return tuple(self._q(q, features, actions) for q in self.q_networks)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q-value of the first network only."""
        with torch.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return self._q(self.q_networks[0], features, actions)


class ScoresPolicy(SACPolicy):
    """``SACPolicy`` with the permutation-equivariant actor and invariant critic of the scores head.

    ``num_users`` and ``num_antennas`` set the per-user grouping; ``net_arch`` the widths of the
    shared per-user layers (a list, or ``{"pi": [...], "qf": [...]}``). ``score_rule`` and
    ``score_threshold`` do not change the networks: they record the readout of the scores (the
    environment's set-size rule) with the policy, so a loaded model schedules like the trained one.

    Example:
        >>> from stable_baselines3 import SAC
        >>> from fggm.mimo.env import MuMimoEnv
        >>> env = MuMimoEnv({"num_antennas": 2, "num_users": 3, "max_scheduled": 2, "action_head": "scores"})
        >>> model = SAC(ScoresPolicy, env, policy_kwargs={"num_users": 3, "num_antennas": 2, "net_arch": [8]},
        ...             learning_starts=10, device="cpu")
        >>> model.actor.mu
        SetLinear(
          (self_linear): Linear(in_features=8, out_features=1, bias=True)
        )
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Any,
                 net_arch: list[int] | dict[str, list[int]] | None = None, num_users: int = 16,
                 num_antennas: int = 16, score_rule: str = "top_s", score_threshold: float = 0.0,
                 **kwargs: Any) -> None:
        self.num_users = int(num_users)
        self.num_antennas = int(num_antennas)
        self.score_rule = str(score_rule)
        self.score_threshold = float(score_threshold)
        kwargs.pop("features_extractor_class", None)
        fx_kwargs = {"num_users": self.num_users, "num_antennas": self.num_antennas}
        kwargs.pop("features_extractor_kwargs", None)
        if kwargs.get("use_sde"):
            raise ValueError("the scores policy does not support gSDE")
        super().__init__(observation_space, action_space, lr_schedule, net_arch=net_arch,
                         features_extractor_class=UserFeatures, features_extractor_kwargs=fx_kwargs, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(num_users=self.num_users, num_antennas=self.num_antennas, score_rule=self.score_rule,
                    score_threshold=self.score_threshold)
        return data

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> ScoresActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return ScoresActor(num_users=self.num_users, **actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ScoresCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ScoresCritic(num_users=self.num_users, **critic_kwargs).to(self.device)
