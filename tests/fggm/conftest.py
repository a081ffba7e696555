"""Shared FGGM fixtures: one tiny SAC scheduler trained once per session, read-only for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from fggm.attack import Victim
from fggm.config import FggmConfig

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def sched_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny scheduler folder (configs/tiny.yaml, no final evaluation); tests must not write into it."""
    from fggm.train import train

    out = tmp_path_factory.mktemp("tiny-scheduler")
    train(FggmConfig.from_file(TINY_CONFIG), out, progress=False, final_eval=False)
    return out


@pytest.fixture(scope="module")
def victim(sched_dir: Path) -> Victim:
    """The tiny scheduler loaded as an attack victim (policy + normaliser)."""
    return Victim.load(sched_dir)
