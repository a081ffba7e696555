"""The attacked scheduler as the attackers know it: the attacker's view (normaliser + actor as a
plain ``nn.Sequential``), the normaliser's statistics and the action head; plus, for evaluation
only, the SB3 model and its ``VecNormalize``.

Two heads are supported: ``subset`` (SMART's scalar action on the grid of subsets; the view has
one output, the pre-tanh action) and ``scores`` (one score per user, the top-S users scheduled;
the view has K outputs, the pre-tanh scores).

Example:
    >>> victim = Victim.load("data/schedulers/smart16")   # doctest: +SKIP
    >>> victim.head, victim.view(torch.zeros(1, 544)).shape   # doctest: +SKIP
    ('subset', torch.Size([1, 1]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fggm.core.threat import NormaliserStats
from fggm.mimo.config import EnvConfig
from fggm.mimo.threat import ThreatModelError

__all__ = ["Victim", "HEADS"]

HEADS = ("subset", "scores")


def _scores_view(model: Any, vecnorm: Any) -> nn.Sequential | None:
    """The scores head's attacker's view, or ``None`` when ``model`` has another head (or this
    installation has no scores head)."""
    try:
        from fggm.mimo.scores_view import extract_scores_policy, is_scores_model  # type: ignore[import-not-found]
    except ImportError:
        return None
    return extract_scores_policy(model, vecnorm) if is_scores_model(model) else None


@dataclass
class Victim:
    """What the attackers know: the attacker's view and the normaliser's statistics; the head
    (``subset`` or ``scores`` with its readout ``score_rule`` / ``score_threshold``); plus, for
    evaluation only, the SB3 model and ``VecNormalize``.

    Example:
        >>> v = Victim(nn.Sequential(nn.Linear(40, 1)), np.zeros(40), np.ones(40), 1e-8, 10.0,
        ...            EnvConfig(num_antennas=4, num_users=4, max_scheduled=2))
        >>> v.check(); v.stats.clip_obs
        10.0
    """

    view: nn.Sequential
    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip_obs: float
    env: EnvConfig
    source: str = ""
    model: Any = None
    vecnormalize: Any = None
    head: str = "subset"
    score_rule: str = "top_s"
    score_threshold: float = 0.0

    @classmethod
    def load(cls, scheduler_dir: str | Path, env_config: EnvConfig | None = None) -> "Victim":
        """Load a checkpoint written by :func:`fggm.train.train` (size-checked against ``env_config``).

        Example:
            >>> Victim.load("data/schedulers/smart16").env.num_users   # doctest: +SKIP
            16
        """
        from fggm.mimo.policy import extract_policy
        from fggm.mimo.train import load_scheduler

        model, vecnorm, cfg = load_scheduler(scheduler_dir, env_config)
        if vecnorm is None or not getattr(vecnorm, "norm_obs", False):
            raise ThreatModelError(f"{scheduler_dir} has no observation normaliser: FGGM's box needs its statistics")
        view = _scores_view(model, vecnorm)
        head = "subset" if view is None else "scores"
        if view is None:
            view = extract_policy(model, vecnorm)
        pol = getattr(model, "policy", None)
        rule = str(getattr(pol, "score_rule", getattr(cfg, "score_rule", "top_s")))
        thr = float(getattr(pol, "score_threshold", getattr(cfg, "score_threshold", 0.0)))
        return cls(view=view, mean=np.asarray(vecnorm.obs_rms.mean, dtype=np.float64),
                   var=np.asarray(vecnorm.obs_rms.var, dtype=np.float64), epsilon=float(vecnorm.epsilon),
                   clip_obs=float(vecnorm.clip_obs), env=cfg, source=str(scheduler_dir), model=model,
                   vecnormalize=vecnorm, head=head, score_rule=rule, score_threshold=thr)

    @property
    def stats(self) -> NormaliserStats:
        """The normaliser's statistics as the core's :class:`~fggm.core.threat.NormaliserStats`."""
        return NormaliserStats(self.mean, self.var, self.epsilon, self.clip_obs)

    @property
    def outputs(self) -> int:
        """Outputs of the view: 1 (``subset``) or K (``scores``)."""
        return 1 if self.head == "subset" else self.env.num_users

    def check(self) -> None:
        """The view, the statistics, the head and the environment must agree on the sizes.

        Example:
            >>> victim.check()   # doctest: +SKIP
        """
        if self.head not in HEADS:
            raise ThreatModelError(f"unknown action head {self.head!r}; FGGM handles {', '.join(HEADS)}")
        linears = [m for m in self.view.modules() if isinstance(m, nn.Linear)]
        n = self.env.obs_dim
        sizes = {"normaliser mean": self.mean.shape[0], "normaliser var": self.var.shape[0]}
        if linears:
            sizes["policy input"] = linears[0].in_features
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            what = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise ThreatModelError(
                f"checkpoint/environment mismatch: the environment (M={self.env.num_antennas}, "
                f"K={self.env.num_users}) has {n} observation entries but the {what}"
            )
        if linears and linears[-1].out_features != self.outputs:
            raise ThreatModelError(f"the {self.head} head needs {self.outputs} policy output(s), the view has "
                                   f"{linears[-1].out_features}")

    def actions(self, obs: np.ndarray) -> np.ndarray:
        """The SB3 policy's deterministic actions ``[B, outputs]`` on raw observations ``[B, obs]``
        (through ``VecNormalize``: what the scheduler really does), or, without an SB3 model,
        ``tanh`` of the view.

        Example:
            >>> victim.actions(np.zeros((2, 544))).shape   # doctest: +SKIP
            (2, 1)
        """
        obs = np.asarray(obs, dtype=np.float32).reshape(-1, self.env.obs_dim)
        if self.model is not None:
            norm = self.vecnormalize.normalize_obs(obs) if self.vecnormalize is not None else obs
            act, _ = self.model.predict(norm, deterministic=True)
            return np.asarray(act, dtype=np.float64).reshape(len(obs), -1)
        with torch.no_grad():
            return torch.tanh(self.view(torch.as_tensor(obs))).double().numpy()

    def subset_index(self, action: np.ndarray, obs: np.ndarray, codec: Any) -> int:
        """The subset index one action schedules (``codec`` order); scores ties are broken by the
        observation's reported single-user SE, as the environment does.

        Example:
            >>> victim.subset_index(np.array([-1.0]), obs, codec)   # doctest: +SKIP
            0
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if self.head == "subset":
            return codec.action_to_index(a)
        K, S = self.env.num_users, self.env.max_scheduled
        s = np.clip(a, -1.0, 1.0)
        su = np.asarray(obs, dtype=np.float64)[:K]
        try:  # the environment's own readout (victim v2)
            from fggm.mimo.heads import scores_to_subset  # type: ignore[import-not-found]
        except ImportError:
            scores_to_subset = None
        if scores_to_subset is not None:
            return codec.subset_to_index(scores_to_subset(s, S, self.score_rule, self.score_threshold, su))
        order = np.lexsort((np.arange(K), -su, -s))
        top = order[:S]
        if self.score_rule == "threshold":
            keep = top[s[top] > self.score_threshold]
            top = keep if keep.size else top[:1]
        return codec.subset_to_index(sorted(int(u) for u in top))
