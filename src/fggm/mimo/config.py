"""Typed, validated configuration for the FGGM victim (channels, environment, training).

The same schema loads from YAML/JSON (``FggmConfig.from_file``) and round-trips through
``to_dict``. Every invalid combination raises :class:`ConfigError` with one clear sentence.

Example:
    >>> cfg = EnvConfig(num_antennas=8, num_users=4, max_scheduled=2)
    >>> cfg.obs_dim
    72
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CHANNEL_MODELS = ("rayleigh", "correlated", "one-ring", "umi")
ACTION_HEADS = ("subset", "scores")
SCORE_RULES = ("top_s", "threshold")
NORMALISERS = ("all", "top_s")


class ConfigError(ValueError):
    """An invalid configuration (the message is one human-readable sentence)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ChannelConfig:
    """Channel model settings.

    Attributes:
        model: ``rayleigh`` (i.i.d.), ``correlated`` (exponential correlation at the BS array),
            ``one-ring`` (angular spread around a per-user angle), ``umi`` (3GPP UMi traces made
            with the optional ``quadriga-lib``, read from ``trace_file``).
        snr_db_range: per-user average SNR (large-scale gain, dB, noise power 1) drawn uniformly in
            this range once per episode (the users' path loss); ``(x, x)`` gives equal SNRs.
        correlation: exponential correlation coefficient rho in [0, 1) (``correlated``).
        angular_spread_deg: half-width of the one-ring angular spread (``one-ring``).
        time_correlation: Gauss-Markov coefficient between consecutive TTIs (0 = block fading).
        normalize_columns: scale each user's small-scale vector to squared norm M (as SMART does),
            so a user's gain is set by its large-scale SNR only.
        trace_file: ``.npz`` written by :func:`fggm.channels.make_umi_traces` (``umi`` only).

    Example:
        >>> ChannelConfig(model="correlated", correlation=0.7).model
        'correlated'
    """

    model: str = "rayleigh"
    snr_db_range: tuple[float, float] = (0.0, 20.0)
    correlation: float = 0.5
    angular_spread_deg: float = 10.0
    time_correlation: float = 0.0
    normalize_columns: bool = False
    antenna_spacing: float = 0.5
    trace_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "snr_db_range", tuple(float(x) for x in self.snr_db_range))
        _check(self.model in CHANNEL_MODELS, f"unknown channel model {self.model!r}; choose one of {', '.join(CHANNEL_MODELS)}")
        _check(len(self.snr_db_range) == 2, "snr_db_range must have two values [low, high]")
        lo, hi = self.snr_db_range
        _check(hi >= lo, f"snr_db_range must be increasing, got [{lo}, {hi}] (a negative range)")
        _check(-50.0 <= lo and hi <= 80.0, f"snr_db_range [{lo}, {hi}] dB is outside [-50, 80]")
        _check(0.0 <= self.correlation < 1.0, f"correlation must be in [0, 1), got {self.correlation}")
        _check(0.0 < self.angular_spread_deg <= 90.0, "angular_spread_deg must be in (0, 90]")
        _check(0.0 <= self.time_correlation < 1.0, "time_correlation must be in [0, 1)")
        _check(self.antenna_spacing > 0.0, "antenna_spacing must be positive (in wavelengths)")
        _check(self.model != "umi" or bool(self.trace_file), "channel model 'umi' needs trace_file (see `fggm.channels.make_umi_traces`)")


@dataclass(frozen=True)
class EnvConfig:
    """MU-MIMO uplink scheduling environment: M antennas, K users, at most S scheduled per TTI.

    Attributes:
        action_head: ``subset`` (SMART's scalar action over the N subsets) or ``scores`` (one score
            per user, top-S readout; see :mod:`fggm.mimo.heads`).
        score_rule: set-size rule of the scores head: ``top_s`` (always S users) or ``threshold``
            (the top-S users scored above ``score_threshold``, at least one).
        normaliser: the reward's SE normaliser: ``all`` (sum of all K single-user SEs, this
            project's original choice) or ``top_s`` (sum of the S largest, as SMART's code).

    Example:
        >>> EnvConfig().obs_dim, EnvConfig().num_subsets
        (544, 2516)
    """

    num_antennas: int = 16
    num_users: int = 16
    max_scheduled: int = 4
    episode_length: int = 400
    reward_a: float = 5.0
    reward_b: float = 1.0
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    action_head: str = "subset"
    score_rule: str = "top_s"
    score_threshold: float = 0.0
    normaliser: str = "all"

    def __post_init__(self) -> None:
        if isinstance(self.channel, dict):
            object.__setattr__(self, "channel", _from_dict(ChannelConfig, self.channel, "env.channel"))
        M, K, S = self.num_antennas, self.num_users, self.max_scheduled
        _check(K >= 1 and M >= 1 and S >= 1, "num_antennas, num_users and max_scheduled must be >= 1")
        _check(S <= K, f"max_scheduled S={S} exceeds the number of users K={K}")
        _check(M >= S, f"num_antennas M={M} is smaller than max_scheduled S={S}: zero-forcing needs M >= S")
        _check(self.episode_length >= 1, "episode_length must be >= 1")
        _check(self.reward_a >= 0 and self.reward_b >= 0, "reward weights a and b must be non-negative")
        _check(self.action_head in ACTION_HEADS, f"unknown action_head {self.action_head!r}; choose one of {', '.join(ACTION_HEADS)}")
        _check(self.score_rule in SCORE_RULES, f"unknown score_rule {self.score_rule!r}; choose one of {', '.join(SCORE_RULES)}")
        _check(isinstance(self.score_threshold, (int, float)) and -1.0 < float(self.score_threshold) < 1.0,
               f"score_threshold must be a number in (-1, 1) (scores are tanh-squashed), got {self.score_threshold!r}")
        _check(self.normaliser in NORMALISERS, f"unknown normaliser {self.normaliser!r}; choose one of {', '.join(NORMALISERS)}")

    @property
    def obs_dim(self) -> int:
        """Length of the observation: 2K + 2MK."""
        return 2 * self.num_users + 2 * self.num_antennas * self.num_users

    @property
    def num_subsets(self) -> int:
        """N, the number of non-empty subsets of at most S users."""
        from math import comb

        return sum(comb(self.num_users, s) for s in range(1, self.max_scheduled + 1))


@dataclass(frozen=True)
class TrainConfig:
    """Stable-Baselines3 SAC settings (``VecNormalize`` wraps the environment).

    Beyond SB3's own (``learning_rate``, ``gamma``, ``ent_coef`` ...):
        net_arch: hidden widths (for the scores head: of the shared per-user layers).
        val_ttis: validation TTIs per check (default ``min(eval_ttis, episode_length)``).
        bc_states, bc_epochs, bc_dagger_rounds, bc_teacher_w, bc_lr, bc_epsilon, bc_seed, bc_envs:
            the scores head's behaviour-cloning warm start from the marginal-reward rule
            (:func:`fggm.mimo.bc.behaviour_clone`; ``bc_states = 0``: none).
        log_std_init: the actor's log-std after cloning (initial exploration).
        critic_warmup_steps: SAC steps after ``learning_starts`` with the actor frozen.
        freeze_normaliser: keep the observation statistics fixed at the teacher's during SAC.

    Example:
        >>> TrainConfig(total_steps=500).net_arch
        (512, 512)
    """

    total_steps: int = 60_000
    seed: int = 0
    net_arch: tuple[int, ...] = (512, 512)
    learning_rate: float = 3e-4
    buffer_size: int = 100_000
    batch_size: int = 256
    gamma: float = 0.8
    tau: float = 0.005
    train_freq: int = 4
    gradient_steps: int = 1
    learning_starts: int = 1_000
    n_envs: int = 1
    norm_obs: bool = True
    norm_reward: bool = False
    clip_obs: float = 10.0
    eval_ttis: int = 800
    eval_seed: int = 12_345
    log_interval: int = 1_000
    torch_threads: int = 1
    max_wall_s: float | None = None
    ent_coef: str | float = "auto"
    val_ttis: int | None = None
    bc_states: int = 0
    bc_epochs: int = 15
    bc_dagger_rounds: int = 0
    bc_teacher_w: float = 120.0
    bc_lr: float = 1e-3
    bc_epsilon: float = 0.1
    bc_seed: int = 4000
    bc_envs: int = 16
    log_std_init: float = -1.0
    critic_warmup_steps: int = 0
    freeze_normaliser: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "net_arch", tuple(int(x) for x in self.net_arch))
        _check(self.total_steps >= 1, "total_steps must be >= 1")
        _check(len(self.net_arch) >= 1 and all(x >= 1 for x in self.net_arch), "net_arch must list positive layer widths")
        _check(0.0 < self.gamma < 1.0, "gamma must be in (0, 1)")
        _check(self.train_freq >= 1 and self.gradient_steps >= 1, "train_freq and gradient_steps must be >= 1")
        _check(self.batch_size >= 1 and self.buffer_size >= self.batch_size, "buffer_size must be >= batch_size >= 1")
        _check(self.n_envs >= 1, "n_envs must be >= 1")
        _check(self.learning_rate > 0, "learning_rate must be positive")
        _check(self.eval_ttis >= 1 and self.log_interval >= 1, "eval_ttis and log_interval must be >= 1")
        _check(self.clip_obs > 0, "clip_obs must be positive")
        _check(self.max_wall_s is None or self.max_wall_s > 0, "max_wall_s must be positive (or null for no limit)")
        ent = self.ent_coef
        _check((isinstance(ent, (int, float)) and not isinstance(ent, bool) and ent > 0)
               or (isinstance(ent, str) and (ent == "auto" or (ent.startswith("auto_") and _is_positive(ent[5:])))),
               f"ent_coef must be a positive number, 'auto' or 'auto_<initial value>', got {ent!r}")
        _check(self.val_ttis is None or self.val_ttis >= 1, "val_ttis must be >= 1 (or null: min(eval_ttis, episode_length))")
        _check(self.bc_states >= 0 and self.bc_epochs >= 1 and self.bc_dagger_rounds >= 0,
               "bc_states and bc_dagger_rounds must be >= 0 and bc_epochs >= 1")
        _check(self.bc_teacher_w >= 0 and self.bc_lr > 0 and 0.0 <= self.bc_epsilon <= 1.0 and self.bc_envs >= 1,
               "bc_teacher_w must be >= 0, bc_lr > 0, bc_epsilon in [0, 1] and bc_envs >= 1")
        _check(-20.0 <= self.log_std_init <= 2.0, "log_std_init must be in [-20, 2] (SB3's clamp)")
        _check(self.critic_warmup_steps >= 0, "critic_warmup_steps must be >= 0")

    def train_seeds(self) -> list[int]:
        """Every channel seed training draws episodes from: the SAC environments' ``seed .. seed +
        n_envs - 1`` and, with a BC warm start, the rollout seeds ``bc_seed ..`` (one block of
        ``bc_envs`` per round). Evaluation seeds must avoid them.

        Example:
            >>> TrainConfig(seed=3, n_envs=2).train_seeds()
            [3, 4]
        """
        seeds = list(range(self.seed, self.seed + self.n_envs))
        if self.bc_states > 0:
            seeds += list(range(self.bc_seed, self.bc_seed + self.bc_envs * (1 + self.bc_dagger_rounds)))
        return sorted(set(seeds))


@dataclass(frozen=True)
class FggmConfig:
    """Root config: ``env`` and ``train`` sections (the YAML file's two keys).

    Example:
        >>> cfg = FggmConfig.from_dict({"env": {"num_users": 4, "num_antennas": 4, "max_scheduled": 2}})
        >>> cfg.env.num_subsets
        10
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.train.bc_states == 0 or self.env.action_head == "scores",
               "train.bc_states > 0 (a behaviour-cloning warm start) needs env.action_head: scores")
        _check(self.train.critic_warmup_steps == 0 or self.env.action_head == "scores",
               "train.critic_warmup_steps needs env.action_head: scores (it follows the BC warm start)")
        _check(not self.train.freeze_normaliser or self.train.bc_states > 0,
               "train.freeze_normaliser needs a BC warm start (train.bc_states > 0): the statistics are frozen at the teacher's")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FggmConfig":
        """Build from a plain dict (unknown keys are an error)."""
        _check(isinstance(data, dict), "config must be a mapping with keys 'env' and 'train'")
        unknown = set(data) - {"env", "train"}
        _check(not unknown, f"unknown config section(s): {', '.join(sorted(unknown))}")
        env = _from_dict(EnvConfig, data.get("env", {}) or {}, "env")
        train = _from_dict(TrainConfig, data.get("train", {}) or {}, "train")
        return cls(env=env, train=train)

    @classmethod
    def from_file(cls, path: str | Path) -> "FggmConfig":
        """Load YAML or JSON."""
        p = Path(path)
        _check(p.is_file(), f"config file not found: {p}")
        text = p.read_text()
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot parse {p}: {str(exc).splitlines()[0]}") from None
        _check(data is not None and data != {}, f"config file {p} is empty: give at least an 'env' or 'train' section "
               "(an empty file would silently mean every default, e.g. the full training run)")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict."""
        return _jsonable(asdict(self))


def env_config_from_dict(data: dict[str, Any]) -> EnvConfig:
    """Build an :class:`EnvConfig` from a plain dict (as stored in manifests).

    Example:
        >>> env_config_from_dict({"num_users": 4, "num_antennas": 4, "max_scheduled": 2}).num_users
        4
    """
    return _from_dict(EnvConfig, data, "env")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    _check(isinstance(data, dict), f"section '{where}' must be a mapping")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    _check(not unknown, f"unknown key(s) in '{where}': {', '.join(sorted(unknown))}")
    for f in fields(cls):
        if f.name in data:
            _check_type(f.type, data[f.name], f"{where}.{f.name}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value in '{where}': {exc}") from None


def _check_type(annotation: Any, value: Any, where: str) -> None:
    """Scalar fields must hold their type (an int field refuses 16.5 and "16"; bools are not ints)."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind == "int":
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
    elif kind == "float":
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}")
    elif kind == "bool":
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
    elif kind == "str":
        _check(isinstance(value, str), f"{where} must be a string, got {value!r}")


def _is_positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
