"""Load scheduler checkpoints without running code from them.

A checkpoint folder holds two files that Stable-Baselines3 reads with pickle:

* ``vecnormalize.pkl`` is a pickled ``VecNormalize``; ``VecNormalize.load`` unpickles it with the
  standard unpickler, so a crafted file runs any code it names (``os.system``...).
  :func:`load_vecnormalize` unpickles it with a restricted unpickler that admits only the classes
  SB3 writes there (``VecNormalize``, ``RunningMeanStd``, numpy arrays, dtypes and scalars, numpy's
  random generators, gymnasium spaces, plain containers) and checks the result.
* ``sac.zip`` is a zip whose ``data`` entry is JSON in which several values (``policy_class``,
  ``observation_space``, ``action_space``, ``lr_schedule``, ``train_freq``, ``replay_buffer_class``,
  the rollout buffers) are base64 cloudpickles that ``SAC.load`` unpickles; the weights
  (``policy.pth`` and the optimiser states) are read by ``torch.load(weights_only=True)``, which
  is safe.  :func:`load_sac` hands ``SAC.load`` a replacement for every pickled value
  (``custom_objects``), built from the environment the checkpoint was trained for, so nothing in
  the zip is unpickled; a zip with any other pickled value is refused.

Errors are :class:`CheckpointError` (a :class:`~fggm.mimo.config.ConfigError`): one sentence.

Example:
    >>> vn = load_vecnormalize("data/schedulers/smart16/vecnormalize.pkl")   # doctest: +SKIP
    >>> vn.obs_rms.mean.shape                                                 # doctest: +SKIP
    (544,)
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from fggm.mimo.config import ConfigError

__all__ = ["CheckpointError", "load_vecnormalize", "load_sac", "resolve_scheduler_ref", "scheduler_ref"]

# (module, name) pairs SB3's VecNormalize pickles reference (numpy 1 and 2 spellings).
_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *(("numpy.dtypes", n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType",
                                     "UInt8DType", "Float16DType")),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._philox", "Philox"), ("numpy.random._sfc64", "SFC64"),
    ("numpy.random.bit_generator", "SeedSequence"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("gymnasium.spaces.box", "Box"), ("gymnasium.spaces.discrete", "Discrete"),
    ("gymnasium.spaces.multi_discrete", "MultiDiscrete"), ("gymnasium.spaces.multi_binary", "MultiBinary"),
    ("gymnasium.spaces.dict", "Dict"), ("gymnasium.spaces.tuple", "Tuple"),
    ("collections", "OrderedDict"), ("collections", "deque"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
})

#: Values of ``sac.zip``'s ``data`` that SB3 stores as cloudpickles, all replaced by :func:`load_sac`.
SAC_PICKLED_KEYS = ("policy_class", "observation_space", "action_space", "lr_schedule", "train_freq",
                    "replay_buffer_class", "_last_obs", "_last_episode_starts", "_last_original_obs",
                    "ep_info_buffer", "ep_success_buffer", "_vec_normalize_env", "action_noise")


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read, or could only be read by running code from it."""


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: io.BufferedIOBase, path: Path) -> None:
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"{self.path}: refusing to unpickle {module}.{name}, which is not one of the "
                                  "classes a VecNormalize file holds (a crafted pickle would run code)")
        return super().find_class(module, name)


def _check_stats(rms: Any, path: Path) -> None:
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    if isinstance(rms, dict):
        for v in rms.values():
            _check_stats(v, path)
        return
    if not isinstance(rms, RunningMeanStd):
        raise CheckpointError(f"{path}: its obs_rms is a {type(rms).__name__}, not RunningMeanStd statistics")
    for name in ("mean", "var"):
        a = getattr(rms, name, None)
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise CheckpointError(f"{path}: its observation {name} is not a finite float array")
    if bool((rms.var < 0).any()):
        raise CheckpointError(f"{path}: its observation variance is negative")


def load_vecnormalize(path: str | Path, venv: Any = None) -> Any:
    """A saved ``VecNormalize`` read with a restricted unpickler (no code from the file runs).

    With ``venv`` it is attached as ``VecNormalize.load(path, venv)`` does; without, only its
    statistics are usable.  An empty, truncated or foreign file raises :class:`CheckpointError`.

    Example:
        >>> vn = load_vecnormalize("data/schedulers/smart16/vecnormalize.pkl")   # doctest: +SKIP
        >>> float(vn.clip_obs)                                                    # doctest: +SKIP
        10.0
    """
    from stable_baselines3.common.vec_env import VecNormalize

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"normaliser file not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (a VecNormalize pickle was expected)")
    try:
        with open(p, "rb") as fh:
            obj = _Unpickler(fh, p).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all of them are "unreadable"
        raise CheckpointError(f"{p} is not a readable VecNormalize pickle ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]})") from None
    if not isinstance(obj, VecNormalize):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a VecNormalize")
    _check_stats(getattr(obj, "obs_rms", None), p)
    for name in ("clip_obs", "epsilon"):
        v = getattr(obj, name, None)
        if not isinstance(v, (int, float, np.floating)) or not np.isfinite(v) or v <= 0:
            raise CheckpointError(f"{p}: its {name} is not a positive number")
    if venv is not None:
        obj.set_venv(venv)
    return obj


def _zip_data(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise CheckpointError(f"model file not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            if "data" not in names or "policy.pth" not in names:
                raise CheckpointError(f"{p} is not an SB3 model zip (needs 'data' and 'policy.pth' entries)")
            bad = zf.testzip()
            if bad is not None:
                raise CheckpointError(f"{p} is damaged (entry {bad} fails its CRC check)")
            data = json.loads(zf.read("data").decode("utf-8"))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable SB3 model zip ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{p}: its 'data' entry is not a JSON object")
    return data


def _policy_class(data: dict[str, Any], p: Path, default: type) -> type:
    """The policy class the zip names, from the plain-text module it records (never unpickled): SB3's
    ``SACPolicy`` or the project's ``fggm.ScoresPolicy``; any other class is refused."""
    entry = data.get("policy_class")
    module = entry.get("__module__") if isinstance(entry, dict) else None
    if module in (None, "stable_baselines3.sac.policies"):
        return default
    if module == "fggm.mimo.scores_policy":
        from fggm.mimo.scores_policy import ScoresPolicy

        return ScoresPolicy
    raise CheckpointError(f"{p} names a policy class from {module!r}; only SB3's SACPolicy and fggm.ScoresPolicy load")


def load_sac(path: str | Path, observation_space: Any, action_space: Any) -> Any:
    """``SAC.load`` without unpickling anything from the zip.

    Every cloudpickled value of the zip's ``data`` entry is replaced: the spaces by the given
    ones (those of the environment the checkpoint was trained for), the policy class by
    ``SACPolicy`` or ``fggm.ScoresPolicy`` (the one the zip names), the schedule by a constant one, the buffers by empty ones.  A zip with another
    pickled value, or whose weights do not fit, raises :class:`CheckpointError`.

    Example:
        >>> from fggm.mimo.env import MuMimoEnv; from fggm.mimo.config import EnvConfig   # doctest: +SKIP
        >>> env = MuMimoEnv(EnvConfig())                                                   # doctest: +SKIP
        >>> model = load_sac("data/schedulers/smart16/sac.zip", env.observation_space, env.action_space)  # doctest: +SKIP
    """
    from stable_baselines3 import SAC
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
    from stable_baselines3.sac.policies import SACPolicy

    p = Path(path)
    data = _zip_data(p)
    pickled = sorted(k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v)
    unknown = [k for k in pickled if k not in SAC_PICKLED_KEYS]
    if unknown:
        raise CheckpointError(f"{p} holds pickled value(s) {', '.join(unknown)} that cannot be loaded without "
                              "running code from the file")
    lr = data.get("learning_rate", 3e-4)
    lr = float(lr) if isinstance(lr, (int, float)) else 3e-4
    window = data.get("_stats_window_size", 100)
    window = int(window) if isinstance(window, int) and window > 0 else 100
    custom = {
        "policy_class": _policy_class(data, p, SACPolicy), "observation_space": observation_space,
        "action_space": action_space,
        "lr_schedule": lambda _progress: lr, "train_freq": TrainFreq(1, TrainFrequencyUnit.STEP),
        "replay_buffer_class": ReplayBuffer, "_last_obs": None, "_last_episode_starts": None,
        "_last_original_obs": None, "ep_info_buffer": deque(maxlen=window), "ep_success_buffer": deque(maxlen=window),
        "_vec_normalize_env": None, "action_noise": None,
    }
    try:
        return SAC.load(p, custom_objects=custom, device="cpu")
    except CheckpointError:
        raise
    except Exception as exc:  # weights of another shape, a damaged .pth entry, ...
        raise CheckpointError(f"{p} does not load as a SAC scheduler for this environment ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]})") from None


# --------------------------------------------------------------------------- paths in attack files


def scheduler_ref(scheduler: str | Path, json_dir: str | Path) -> str:
    """How an attack file at ``json_dir`` records a scheduler folder: relative to ``json_dir``
    when the folder was given relative (so the pair can move together), else absolute.

    Example:
        >>> scheduler_ref("data/schedulers/smart16", "data")
        'schedulers/smart16'
    """
    s = Path(scheduler)
    if not str(scheduler) or s.is_absolute():
        return str(scheduler)
    return os.path.relpath(s.resolve(), Path(json_dir).resolve())


def resolve_scheduler_ref(recorded: str, json_path: str | Path) -> Path:
    """The scheduler folder an attack file names: an absolute path as is; a relative one against
    the file's own folder, else (files written before paths were stored that way) against the
    working directory.  A folder found in neither place raises :class:`CheckpointError`.

    Example:
        >>> resolve_scheduler_ref("/nonexistent/smart16", "runs/attack.json")
        Traceback (most recent call last):
        ...
        fggm.mimo.safe_load.CheckpointError: runs/attack.json names scheduler folder /nonexistent/smart16, which does not exist; pass --scheduler
    """
    r = Path(recorded)
    if r.is_absolute():
        if r.is_dir():
            return r
        raise CheckpointError(f"{json_path} names scheduler folder {r}, which does not exist; pass --scheduler")
    near = Path(json_path).parent / r
    if near.is_dir():
        return near
    if r.is_dir():
        return r
    raise CheckpointError(f"{json_path} names scheduler folder {recorded!r}, found neither beside the file "
                          f"({near}) nor in the working directory; pass --scheduler")
