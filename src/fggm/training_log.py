"""The progress log every SB3 SAC training run here writes: ``progress.csv`` plus a tqdm bar.

Shared by the MU-MIMO scheduler (:mod:`fggm.mimo.train`) and the knapsack solver
(:mod:`fggm.knapsack.train`); each keeps its own callback (validation, checkpoints, warm starts) and
hands the bookkeeping to one :class:`TrainingLog`.
"""

from __future__ import annotations

import csv
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np

HEADER = ["step", "wall_s", "reward_mean", "val_reward", "actor_loss", "critic_loss", "ent_coef"]
LOSSES = ("train/actor_loss", "train/critic_loss", "train/ent_coef")


class TrainingLog:
    """``progress.csv`` (one row per log interval) and an optional progress bar.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "progress.csv"
        >>> log = TrainingLog(path, steps=10, window=4, t0=time.time(), progress=False)
        >>> log.add_rewards([1.0, 3.0]); log.row(2, "", {})
        >>> log.close(); path.read_text().splitlines()[1].split(",")[2]
        '2.00000'
    """

    def __init__(self, path: str | Path, *, steps: int, window: int, t0: float, progress: bool,
                 desc: str = "training SAC") -> None:
        self.t0 = t0
        self.recent: deque[float] = deque(maxlen=window)
        self.fh = open(path, "w", newline="")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(HEADER)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, desc=desc, unit="step", mininterval=2.0)

    def add_rewards(self, rewards: Any) -> None:
        """The latest (unnormalised) rewards of every env, for the running mean."""
        self.recent.extend(np.asarray(rewards).reshape(-1).tolist())

    def advance(self, n: int) -> None:
        """Move the bar by ``n`` env steps."""
        if self.bar is not None:
            self.bar.update(n)

    def warm_start_row(self, val_reward: float) -> None:
        """Step 0: a warm-started policy's validation reward before any SAC update."""
        self.writer.writerow([0, f"{time.time() - self.t0:.1f}", "nan", f"{val_reward:.5f}", "nan", "nan", "nan"])

    def row(self, step: int, val: str, logged: Mapping[str, float]) -> None:
        """One row at ``step``: running reward mean, validation reward text (``""`` if none) and the
        losses SB3's logger holds (``logged``: ``model.logger.name_to_value``)."""
        mean = np.mean(self.recent)
        self.writer.writerow([step, f"{time.time() - self.t0:.1f}", f"{mean:.5f}", val,
                              *(f"{logged.get(key, float('nan')):.5f}" for key in LOSSES)])
        self.fh.flush()
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{mean:.3f}", val=val or "-")

    def close(self) -> None:
        self.fh.close()
        if self.bar is not None:
            self.bar.close()
