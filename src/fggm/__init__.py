"""FGGM: formal grey-box attack on DRL MU-MIMO schedulers (this package also holds the victim).

The victim side: a MU-MIMO uplink simulator (:mod:`fggm.channels`, :mod:`fggm.mimo`), a Gymnasium
scheduling environment (:class:`MuMimoEnv`), classical schedulers (:mod:`fggm.schedulers`) and an
SB3 SAC scheduler (:mod:`fggm.train`, ``load_scheduler``) with SMART's scalar ``subset`` action or the
permutation-equivariant ``scores`` head (:class:`ScoresPolicy`, :class:`UserFeatures`; importable
from here so that ``stable_baselines3.SAC.load`` finds them).

Example:
    >>> from fggm import MuMimoEnv, EnvConfig
    >>> env = MuMimoEnv(EnvConfig())
    >>> env.observation_space.shape, env.codec.n
    ((544,), 2516)
"""

from fggm.mimo.config import ChannelConfig, ConfigError, EnvConfig, FggmConfig, TrainConfig
from fggm.mimo.env import MuMimoEnv, observation_indices
from fggm.mimo.heads import ActionHead
from fggm.mimo.physics import SubsetCodec

__all__ = [
    "ActionHead",
    "ChannelConfig",
    "ConfigError",
    "EnvConfig",
    "FggmConfig",
    "MuMimoEnv",
    "ScoresPolicy",
    "SetLinear",
    "SubsetCodec",
    "TrainConfig",
    "UserFeatures",
    "observation_indices",
]

_LAZY = {"ScoresPolicy", "SetLinear", "UserFeatures"}


def __getattr__(name: str) -> object:
    """``fggm.ScoresPolicy`` and friends, imported on first use (they pull in torch and SB3)."""
    if name in _LAZY:
        from fggm.mimo import scores_policy

        return getattr(scores_policy, name)
    raise AttributeError(f"module 'fggm' has no attribute {name!r}")
