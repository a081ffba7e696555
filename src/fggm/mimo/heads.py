"""Action heads: how a policy's action becomes the set of users scheduled this TTI.

* ``subset`` (SMART's scalar): one value in [-1, 1] picks one of the N subsets of 1..S users on an
  even grid in size-then-lexicographic order (:class:`fggm.mimo.physics.SubsetCodec`).
* ``scores``: one value in [-1, 1] per user. The scheduled set is read out from the scores by a
  set-size rule that looks only at the scores (so no user index is privileged):

  - ``top_s``: the S users with the highest scores (always S users);
  - ``threshold``: the users among the top S whose score is above ``score_threshold``, at least
    one (the best-scored user); the policy learns the set size by pushing scores below it.

  Ties (measure zero for a Gaussian policy, but possible when tanh saturates in float32) are broken
  by the higher reported single-user SE, then by a fixed pseudo-random order of the users, never by
  the user index itself.

Example:
    >>> scores_to_subset([0.9, -0.2, 0.5, 0.1], max_scheduled=2)
    (0, 2)
    >>> scores_to_subset([-0.9, -0.2, -0.5, -0.1], max_scheduled=2, rule="threshold")
    (3,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fggm.mimo.config import ACTION_HEADS, SCORE_RULES

__all__ = ["ACTION_HEADS", "SCORE_RULES", "ActionHead", "scores_to_subset"]


def scores_to_subset(scores: Sequence[float] | np.ndarray, max_scheduled: int, rule: str = "top_s",
                     threshold: float = 0.0, tiebreak: Sequence[float] | np.ndarray | None = None) -> tuple[int, ...]:
    """Users scheduled by a score vector (sorted tuple, 1..S users).

    ``tiebreak`` (e.g. the reported single-user SEs) orders users with equal scores, higher first.

    Example:
        >>> scores_to_subset([1.0, 1.0, 0.0], max_scheduled=1, tiebreak=[0.5, 2.0, 1.0])
        (1,)
        >>> scores_to_subset([0.3, -0.1, 0.2], max_scheduled=3, rule="threshold")
        (0, 2)
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    K = s.shape[0]
    if not 1 <= max_scheduled <= K:
        raise ValueError(f"need 1 <= S <= K, got S={max_scheduled}, K={K}")
    if rule not in SCORE_RULES:
        raise ValueError(f"unknown score rule {rule!r}; choose one of {', '.join(SCORE_RULES)}")
    s = np.nan_to_num(s, nan=-np.inf)
    tb = np.zeros(K) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64).reshape(-1)
    # lexsort: last key is primary. Final fallback: a fixed permutation unrelated to the index order.
    order = np.lexsort((_scramble(K), -tb, -s))
    top = order[:max_scheduled]
    if rule == "threshold":
        keep = top[s[top] > threshold]
        top = keep if keep.size else top[:1]
    return tuple(sorted(int(u) for u in top))


def _scramble(K: int) -> np.ndarray:
    """A fixed pseudo-random rank per user (the last-resort tie-break; never the index order)."""
    return np.random.default_rng(20240611).permutation(K)


@dataclass(frozen=True)
class ActionHead:
    """An action head bound to a problem size; maps actions to subset indices.

    Example:
        >>> from fggm.mimo.physics import SubsetCodec
        >>> head = ActionHead("scores", num_users=4, max_scheduled=2)
        >>> head.action_dim, head.to_subset(np.array([0.1, 0.9, -1.0, 0.5]))
        (4, (1, 3))
        >>> ActionHead("subset", 4, 2).to_index(np.array([-1.0]), SubsetCodec(4, 2))
        0
    """

    kind: str
    num_users: int
    max_scheduled: int
    score_rule: str = "top_s"
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ACTION_HEADS:
            raise ValueError(f"unknown action head {self.kind!r}; choose one of {', '.join(ACTION_HEADS)}")
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"unknown score rule {self.score_rule!r}; choose one of {', '.join(SCORE_RULES)}")

    @classmethod
    def from_config(cls, env_config: Any) -> "ActionHead":
        """The head an :class:`~fggm.mimo.config.EnvConfig` describes.

        Example:
            >>> from fggm.mimo.config import EnvConfig
            >>> ActionHead.from_config(EnvConfig()).kind
            'subset'
        """
        return cls(env_config.action_head, env_config.num_users, env_config.max_scheduled,
                   env_config.score_rule, env_config.score_threshold)

    @property
    def action_dim(self) -> int:
        """1 for ``subset``, K for ``scores``."""
        return 1 if self.kind == "subset" else self.num_users

    def to_subset(self, action: np.ndarray, tiebreak: np.ndarray | None = None, codec: Any = None) -> tuple[int, ...]:
        """Scheduled users for ``action`` (``codec`` is needed for the ``subset`` head)."""
        if self.kind == "subset":
            if codec is None:
                raise ValueError("the subset head needs a SubsetCodec")
            return codec.index_to_subset(codec.action_to_index(action))
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != self.num_users:
            raise ValueError(f"the scores head expects {self.num_users} scores, got {a.shape[0]}")
        return scores_to_subset(np.clip(a, -1.0, 1.0), self.max_scheduled, self.score_rule, self.score_threshold, tiebreak)

    def to_index(self, action: np.ndarray, codec: Any, tiebreak: np.ndarray | None = None) -> int:
        """Subset index (``codec`` order) of the users scheduled by ``action``."""
        if self.kind == "subset":
            return codec.action_to_index(action)
        return codec.subset_to_index(self.to_subset(action, tiebreak))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for manifests.

        Example:
            >>> ActionHead("scores", 16, 4, "threshold").to_dict()["score_rule"]
            'threshold'
        """
        return {"kind": self.kind, "num_users": self.num_users, "max_scheduled": self.max_scheduled,
                "score_rule": self.score_rule, "score_threshold": self.score_threshold}
