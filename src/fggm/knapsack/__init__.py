"""The knapsack problem (nco-knapsack's one-step setting) plugged into :mod:`fggm.core`.

``n`` items report a weight and a value (U(0, 1)); a DRL solver (SB3 SAC in ``VecNormalize``)
picks a subset from the reports; the outcome uses the true weights and values.  Attackers own a
few items and forge their reports (:mod:`fggm.knapsack.attack`).  Nothing here imports
:mod:`fggm.mimo`'s problem code (only, for now, its SB3-generic checkpoint writer and actor
extraction, see :mod:`fggm.knapsack.train`).

Example:
    >>> from fggm.knapsack import KnapsackEnv, KnapsackEnvConfig
    >>> KnapsackEnv(KnapsackEnvConfig()).observation_space.shape
    (20,)
"""

from fggm.knapsack.config import KnapsackConfig, KnapsackConfigError, KnapsackEnvConfig, KnapsackTrainConfig
from fggm.knapsack.env import KnapsackEnv, ProtoGrid, decode_scores, exact_solve, item_indices, subset_masks

__all__ = ["KnapsackConfig", "KnapsackConfigError", "KnapsackEnv", "KnapsackEnvConfig", "KnapsackTrainConfig",
           "ProtoGrid", "decode_scores", "exact_solve", "item_indices", "subset_masks"]
