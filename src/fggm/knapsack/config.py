"""Typed, validated configuration of the knapsack problem (environment and SAC training).

The same schema loads from YAML/JSON (:meth:`KnapsackConfig.from_file`) and round-trips through
:meth:`KnapsackConfig.to_dict`.  Every invalid value raises :class:`KnapsackConfigError` with one
sentence.

Example:
    >>> cfg = KnapsackConfig.from_dict({"env": {"n_items": 6, "head": "proto", "proto_dim": 3}})
    >>> cfg.env.obs_dim, cfg.env.action_dim, cfg.env.num_subsets
    (12, 3, 64)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KnapsackConfigError", "KnapsackEnvConfig", "KnapsackTrainConfig", "KnapsackConfig", "HEADS",
           "CAPACITY_MODES"]

HEADS = ("scores", "proto")
CAPACITY_MODES = ("fixed", "relative")


class KnapsackConfigError(ValueError):
    """An invalid knapsack configuration (the message is one sentence)."""


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise KnapsackConfigError(msg)


@dataclass(frozen=True)
class KnapsackEnvConfig:
    """The one-step knapsack instance and the solver's action interface.

    Attributes:
        n_items: items per instance; weights and values are drawn i.i.d. U(0, 1).
        capacity: ``fixed`` (``capacity_ratio * n_items``) or ``relative``
            (``capacity_ratio * sum(w)``: the true weights set the physical capacity, the
            solver's decoder believes the same rule applied to the REPORTED weights).
        capacity_ratio: 0.25 as in nco-knapsack.
        head: ``scores`` (one score per item: items with a positive score, in descending score
            order, join while their reported weight fits) or ``proto`` (a ``proto_dim``-dim
            proto-action on a ``grid_levels ** proto_dim`` grid whose points are the item subsets
            ordered by size, the ``knn_k`` nearest re-ranked by the critic).
        proto_dim, grid_levels, knn_k: the proto-action design (5, 4, 25 as nco-knapsack).

    Example:
        >>> KnapsackEnvConfig().capacity_of_sum(5.0)
        2.5
    """

    n_items: int = 10
    capacity: str = "fixed"
    capacity_ratio: float = 0.25
    head: str = "scores"
    proto_dim: int = 5
    grid_levels: int = 4
    knn_k: int = 25

    def __post_init__(self) -> None:
        _need(isinstance(self.n_items, int) and 1 <= self.n_items <= 16,
              f"n_items must be an integer in [1, 16] (subsets are enumerated), got {self.n_items!r}")
        _need(self.capacity in CAPACITY_MODES,
              f"capacity must be one of {', '.join(CAPACITY_MODES)}, got {self.capacity!r}")
        _need(0.0 < self.capacity_ratio <= 1.0, f"capacity_ratio must be in (0, 1], got {self.capacity_ratio}")
        _need(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        _need(self.proto_dim >= 1 and self.grid_levels >= 2, "proto_dim must be >= 1 and grid_levels >= 2")
        _need(self.grid_levels ** self.proto_dim >= self.num_subsets,
              f"the proto grid has {self.grid_levels ** self.proto_dim} points, fewer than the "
              f"{self.num_subsets} item subsets")
        _need(self.head != "proto" or 1 <= self.knn_k <= self.num_subsets,
              f"knn_k must be in [1, {self.num_subsets}], got {self.knn_k}")

    @property
    def obs_dim(self) -> int:
        """Observation length: reported weights then reported values."""
        return 2 * self.n_items

    @property
    def action_dim(self) -> int:
        """Length of the policy's action (scores: one per item; proto: ``proto_dim``)."""
        return self.n_items if self.head == "scores" else self.proto_dim

    @property
    def num_subsets(self) -> int:
        """``2 ** n_items`` (the empty set included)."""
        return 2 ** self.n_items

    def capacity_of_sum(self, weight_sum: float) -> float:
        """Capacity for an instance whose weights sum to ``weight_sum`` (ignored when ``fixed``)."""
        base = self.n_items if self.capacity == "fixed" else weight_sum
        return self.capacity_ratio * float(base)


@dataclass(frozen=True)
class KnapsackTrainConfig:
    """Stable-Baselines3 SAC settings (``VecNormalize`` around the environment).

    The observation normaliser is updated during the random warm-up (``learning_starts``
    steps) and then frozen, as in nco-knapsack; rewards are not normalised (they are O(1)).

    Example:
        >>> KnapsackTrainConfig(total_steps=100).net_arch
        (256, 256)
    """

    total_steps: int = 100_000
    seed: int = 0
    net_arch: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    buffer_size: int = 100_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    learning_starts: int = 2_000
    n_envs: int = 4
    clip_obs: float = 10.0
    freeze_normaliser: bool = True
    eval_instances: int = 2_000
    eval_seed: int = 12_345
    log_interval: int = 2_000
    torch_threads: int = 1
    max_wall_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "net_arch", tuple(int(x) for x in self.net_arch))
        _need(self.total_steps >= 1, "total_steps must be >= 1")
        _need(len(self.net_arch) >= 1 and all(x >= 1 for x in self.net_arch), "net_arch must list positive widths")
        _need(self.learning_rate > 0 and 0.0 < self.tau <= 1.0, "learning_rate must be positive and tau in (0, 1]")
        _need(0.0 <= self.gamma < 1.0, "gamma must be in [0, 1)")
        _need(self.batch_size >= 1 and self.buffer_size >= self.batch_size, "buffer_size must be >= batch_size >= 1")
        _need(self.train_freq >= 1 and self.gradient_steps >= 1 and self.n_envs >= 1,
              "train_freq, gradient_steps and n_envs must be >= 1")
        _need(self.learning_starts >= 0, "learning_starts must be >= 0")
        _need(self.clip_obs > 0, "clip_obs must be positive")
        _need(self.eval_instances >= 1 and self.log_interval >= 1, "eval_instances and log_interval must be >= 1")
        _need(self.torch_threads >= 1, "torch_threads must be >= 1")
        _need(self.max_wall_s is None or self.max_wall_s > 0, "max_wall_s must be positive (or null)")


def _section(cls: type, data: Any, where: str) -> Any:
    _need(isinstance(data, dict), f"section '{where}' must be a mapping")
    allowed = {f.name for f in fields(cls)}
    extra = sorted(set(data) - allowed)
    _need(not extra, f"unknown key(s) in '{where}': {', '.join(extra)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise KnapsackConfigError(f"bad value in '{where}': {exc}") from None


@dataclass(frozen=True)
class KnapsackConfig:
    """Root config: ``env`` and ``train`` sections.

    Example:
        >>> KnapsackConfig().env.n_items
        10
    """

    env: KnapsackEnvConfig = field(default_factory=KnapsackEnvConfig)
    train: KnapsackTrainConfig = field(default_factory=KnapsackTrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KnapsackConfig":
        """Build from a plain dict (unknown sections or keys are an error).

        Example:
            >>> KnapsackConfig.from_dict({"train": {"total_steps": 10}}).train.total_steps
            10
        """
        _need(isinstance(data, dict), "config must be a mapping with keys 'env' and 'train'")
        extra = sorted(set(data) - {"env", "train"})
        _need(not extra, f"unknown config section(s): {', '.join(extra)}")
        return cls(env=_section(KnapsackEnvConfig, data.get("env") or {}, "env"),
                   train=_section(KnapsackTrainConfig, data.get("train") or {}, "train"))

    @classmethod
    def from_file(cls, path: str | Path) -> "KnapsackConfig":
        """Load YAML or JSON.

        Example:
            >>> KnapsackConfig.from_file("configs/knapsack10.yaml").env.n_items   # doctest: +SKIP
            10
        """
        p = Path(path)
        _need(p.is_file(), f"config file not found: {p}")
        try:
            data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise KnapsackConfigError(f"cannot parse {p}: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists).

        Example:
            >>> KnapsackConfig().to_dict()["train"]["net_arch"]
            [256, 256]
        """
        return json.loads(json.dumps(asdict(self)))
