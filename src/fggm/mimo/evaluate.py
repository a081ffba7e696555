"""Evaluate schedulers on the same channels: per-user throughput, sum SE, Jain, reward.

Every scheduler runs on its own environment seeded identically, so all see the same channel
realisations (channels do not depend on the actions). ``forged`` (user -> complex [M] channel)
makes those users report a forged channel every TTI; the physical rates still use true channels.
This loop is what the attack code reuses.

Example:
    >>> from fggm.mimo.config import EnvConfig
    >>> from fggm.mimo.schedulers import make_scheduler
    >>> cfg = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2, episode_length=20)
    >>> rows = evaluate_schedulers(cfg, [make_scheduler("round-robin")], ttis=40, seed=0)
    >>> rows[0]["scheduler"], rows[0]["ttis"]
    ('round-robin', 40)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fggm.mimo.config import EnvConfig
from fggm.mimo.env import MuMimoEnv
from fggm.mimo.physics import jain
from fggm.mimo.schedulers import Scheduler


def run_scheduler(
    env_config: EnvConfig,
    scheduler: Scheduler,
    ttis: int,
    seed: int,
    forged: Mapping[int, np.ndarray] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run one scheduler for ``ttis`` TTIs (episodes restart every ``episode_length``); one result row.

    Row keys: ``scheduler, mean_reward, mean_reward_se, mean_reward_jain, sum_se, jain,
    per_user_throughput`` (mean SE per TTI of each user, bit/s/Hz), ``scheduled_share`` (fraction
    of TTIs each user was scheduled; ``scheduled_rate`` is the same list under its older name), the
    index-fairness check of :func:`share_check` (``share_max_rel_dev, share_worst_user,
    share_within_tolerance, share_index_corr``), ``mean_subset_size``, ``episode_user_throughput``
    (per episode and user), ``ttis, seed, forged_users``.

    Example:
        >>> from fggm.mimo.schedulers import make_scheduler
        >>> cfg = EnvConfig(num_antennas=4, num_users=3, max_scheduled=2, episode_length=10)
        >>> row = run_scheduler(cfg, make_scheduler("greedy"), ttis=10, seed=0)
        >>> len(row["per_user_throughput"])
        3
    """
    if ttis < 1:
        raise ValueError("ttis must be >= 1")
    env = MuMimoEnv(env_config)
    for user, h in (forged or {}).items():
        env.report_override(int(user), np.asarray(h))
    K = env.K
    rewards = np.empty(ttis)
    r_se = np.empty(ttis)
    r_jain = np.empty(ttis)
    sum_se = np.empty(ttis)
    total = np.zeros(K)
    counts = np.zeros(K)
    sizes = np.empty(ttis)
    episodes: list[np.ndarray] = []
    obs, _ = env.reset(seed=seed)
    scheduler.reset(env)
    ep_start = 0
    for t in range(ttis):
        idx = scheduler.select(obs, env)
        obs, reward, terminated, truncated, info = env.step_index(idx)
        scheduler.observe(info)
        rewards[t], r_se[t], r_jain[t], sum_se[t] = reward, info["reward_se"], info["reward_jain"], info["sum_se"]
        total += info["se"]
        counts[list(info["scheduled"])] += 1
        sizes[t] = len(info["scheduled"])
        if on_step is not None:
            on_step(1)
        if terminated or truncated or t == ttis - 1:
            episodes.append(info["cumulative_se"] / (t + 1 - ep_start))
            ep_start = t + 1
            if t < ttis - 1:
                obs, _ = env.reset()
                scheduler.reset(env)
    per_user = total / ttis
    share = counts / ttis
    return {
        "scheduler": scheduler.name,
        "mean_reward": float(rewards.mean()),
        "mean_reward_se": float(r_se.mean()),
        "mean_reward_jain": float(r_jain.mean()),
        "sum_se": float(sum_se.mean()),
        "jain": float(jain(per_user)),
        "per_user_throughput": per_user.tolist(),
        "scheduled_rate": share.tolist(),
        "scheduled_share": share.tolist(),
        **share_check(share),
        "mean_subset_size": float(sizes.mean()),
        "episode_user_throughput": [e.tolist() for e in episodes],
        "ttis": int(ttis),
        "seed": int(seed),
        "forged_users": sorted(int(u) for u in (forged or {})),
    }


SHARE_TOLERANCE = 0.25


def share_check(share: np.ndarray, tolerance: float = SHARE_TOLERANCE) -> dict[str, Any]:
    """Fairness across user indices: how far each user's scheduled share is from the mean share.

    ``share_max_rel_dev`` = max_k |share_k / mean(share) - 1|, ``share_worst_user`` its user,
    ``share_within_tolerance`` whether it is <= ``tolerance`` (0.25: every share within +-25 % of the
    mean), ``share_index_corr`` the Spearman rank correlation of share with the user index (near 0
    without an index trend; users' SNRs are drawn independently of their index every episode).

    Example:
        >>> c = share_check(np.array([0.25, 0.25, 0.2, 0.3]))
        >>> round(c["share_max_rel_dev"], 3), c["share_worst_user"], c["share_within_tolerance"]
        (0.2, 2, True)
    """
    s = np.asarray(share, dtype=float).reshape(-1)
    mean = float(s.mean())
    dev = np.abs(s / mean - 1.0) if mean > 0 else np.zeros_like(s)
    worst = int(np.argmax(dev))
    if s.size > 1 and np.ptp(s) > 0:
        ranks = np.argsort(np.argsort(s, kind="stable"), kind="stable").astype(float)
        idx = np.arange(s.size, dtype=float)
        corr = float(np.corrcoef(ranks, idx)[0, 1])
    else:
        corr = 0.0
    return {"share_max_rel_dev": float(dev[worst]), "share_worst_user": worst,
            "share_within_tolerance": bool(dev[worst] <= tolerance), "share_index_corr": corr}


def evaluate_schedulers(
    env_config: EnvConfig,
    schedulers: Sequence[Scheduler],
    ttis: int,
    seed: int,
    forged: Mapping[int, np.ndarray] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate several schedulers on identical channels; one row each (see :func:`run_scheduler`).

    Example:
        >>> from fggm.mimo.schedulers import make_scheduler
        >>> cfg = EnvConfig(num_antennas=4, num_users=4, max_scheduled=2, episode_length=10)
        >>> [r["scheduler"] for r in evaluate_schedulers(cfg, [make_scheduler("pf"), make_scheduler("random")], 10, 0)]
        ['pf', 'random']
    """
    rows = []
    if progress:
        from tqdm.auto import tqdm

        with tqdm(total=ttis * len(schedulers), desc="evaluating", unit="TTI") as bar:
            for s in schedulers:
                bar.set_postfix_str(s.name)
                rows.append(run_scheduler(env_config, s, ttis, seed, forged, on_step=bar.update))
    else:
        rows = [run_scheduler(env_config, s, ttis, seed, forged) for s in schedulers]
    return rows


def write_results(rows: list[dict[str, Any]], out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/results.json`` = ``{"rows": rows, ...extra}``; returns its path.

    Example:
        >>> import tempfile
        >>> p = write_results([{"scheduler": "x"}], tempfile.mkdtemp())
        >>> p.name
        'results.json'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2))
    return path
