"""The MU-MIMO threat model: who attacks whom, how they may forge their channel reports, what
they assume about everything else, and how they search.

Forgeries (``ThreatModel.forgery``):

* ``fixed`` -- each attacker reports one arbitrary channel vector, the same every TTI, with
  ``||h||^2`` at most the power budget (the paper's threat model);
* ``stealthy`` -- ``fixed``, but every forged entry (Re/Im parts and the single-user SE they imply)
  within the normaliser's ``mean +- stealth_k sigma`` of that attacker's own entries, and the
  channel power within the range the normaliser's statistics give the real users, so a check of
  the normalised observation against ``+- stealth_k`` does not flag it;
* ``pilot`` -- realisable by a single-antenna user: it scales and rotates its own uplink pilot,
  so the base station sees ``c exp(j phi) h_true`` (fading with the true channel); the attack
  picks one ``c exp(j phi)`` with ``c^2`` in ``pilot_gain``.  The attackers' observation entries
  then depend on their TRUE channels, unknown per TTI: the attack treats them as part of the box
  (the attacker's own entries lie in ``mean +- k sigma`` like everybody else's and are mapped
  through the scaling and rotation by interval arithmetic, see :class:`fggm.mimo.forgery.PilotGains`);
* ``silent`` -- the baseline with no optimisation: the attackers send no pilot and no data (the
  base station sees a zero channel, they get no throughput).

Example:
    >>> ThreatModel(attackers=(0, 1), victims=(2,), forgery="pilot").pilot_gain
    (0.1, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from statistics import NormalDist

from fggm.core.threat import DOMAINS, STEP_RULES, AttackError, check_search, parse_ids
from fggm.mimo.config import ConfigError

__all__ = ["ThreatModel", "ThreatModelError", "FORGERIES", "BOXES", "DOMAINS", "STEP_RULES", "union_bound_k"]

FORGERIES = ("fixed", "stealthy", "pilot", "silent")
BOXES = ("sigma", "tight")


class ThreatModelError(ConfigError, AttackError):
    """An invalid threat model (one human-readable sentence)."""


def union_bound_k(n_entries: int, coverage: float) -> float:
    """The ``k`` at which a box ``mean +- k sigma`` over ``n_entries`` Gaussian entries holds every
    entry at once with probability at least ``coverage``, by the union bound:
    ``n * 2 (1 - Phi(k)) <= 1 - coverage``.  Real entries with heavier tails than the normaliser's
    Gaussian are covered less often: the attack reports the measured coverage.

    Example:
        >>> round(union_bound_k(478, 0.5), 2)
        3.28
    """
    if not 0.0 < coverage < 1.0:
        raise ThreatModelError(f"coverage must be in (0, 1), got {coverage}")
    if n_entries < 1:
        raise ThreatModelError("the union bound needs at least one entry")
    return float(NormalDist().inv_cdf(1.0 - (1.0 - coverage) / (2.0 * n_entries)))


@dataclass(frozen=True)
class ThreatModel:
    """Who attacks whom, what the attackers may forge and assume, and how they search.

    Attributes:
        attackers: users who forge their channel reports.
        victims: users the attack keeps from being scheduled (disjoint from ``attackers``).
        k: the box half-width in normaliser standard deviations for every unknown entry.
        forgery: ``fixed``, ``stealthy``, ``pilot`` or ``silent`` (module docstring).
        power_budget: bound on each forged channel's ``||h||^2`` (``fixed``, and a cap for
            ``stealthy``); ``None`` means ``power_factor`` times the largest per-user mean channel
            power in the normaliser's statistics of real channels.
        power_factor: see ``power_budget`` (4 is about a user at the top of a 0-20 dB range).
        stealth_k: ``stealthy``: every forged entry within ``mean +- stealth_k sigma``.
        pilot_gain: ``pilot``: the range of the pilot's power gain ``c^2`` (0.1 to 4: -10 to +6 dB).
        box: ``sigma`` (``mean +- k sigma`` within the clip range and SE >= 0) or ``tight``
            (also what attackers know for sure: each user's single-user SE lies between the
            SEs of the smallest and largest channel norm its box allows, and its cumulative SE
            between 0 and ``horizon`` times that largest single-user SE).
        horizon: ``tight`` box: TTIs of an episode the cumulative SE can have accumulated over
            (``None``: the environment's episode length).
        domain: ``crown`` (linear relaxation) or ``ibp`` (intervals; the ablation).
        step_rule: ``sign`` (projected FGSM-style steps) or ``adam``.
        steps: gradient steps per restart (the same budget for every search).
        step_size: step as a fraction of the forgery's scale (the RMS entry at full budget).
        restarts: random restarts, run as one batch (the first starts at the mean channel).
        seed: seed of the restarts (the crafting seed).

    Example:
        >>> ThreatModel(attackers=(0, 1), victims=(2,), k=3).domain
        'crown'
    """

    attackers: tuple[int, ...] = (0, 1)
    victims: tuple[int, ...] = (2,)
    k: float = 3.0
    forgery: str = "fixed"
    power_budget: float | None = None
    power_factor: float = 4.0
    stealth_k: float = 2.0
    pilot_gain: tuple[float, float] = (0.1, 4.0)
    box: str = "sigma"
    horizon: int | None = None
    domain: str = "crown"
    step_rule: str = "sign"
    steps: int = 60
    step_size: float = 0.2
    restarts: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attackers", parse_ids(self.attackers, "attackers", "user", ThreatModelError))
        object.__setattr__(self, "victims", parse_ids(self.victims, "victims", "user", ThreatModelError))
        both = sorted(set(self.attackers) & set(self.victims))
        if both:
            raise ThreatModelError(f"attackers and victims overlap in user(s) {both}")
        check_search(self.k, self.domain, self.step_rule, self.steps, self.restarts, self.step_size, ThreatModelError)
        if self.forgery not in FORGERIES:
            raise ThreatModelError(f"forgery must be one of {', '.join(FORGERIES)}, got {self.forgery!r}")
        if self.box not in BOXES:
            raise ThreatModelError(f"box must be one of {', '.join(BOXES)}, got {self.box!r}")
        if self.power_budget is not None and not (math.isfinite(self.power_budget) and self.power_budget > 0):
            raise ThreatModelError(f"power_budget must be positive, got {self.power_budget}")
        if not (math.isfinite(self.power_factor) and self.power_factor > 0):
            raise ThreatModelError(f"power_factor must be positive, got {self.power_factor}")
        if not (math.isfinite(self.stealth_k) and self.stealth_k > 0):
            raise ThreatModelError(f"stealth_k must be a positive number of standard deviations, got {self.stealth_k}")
        try:
            g = tuple(float(v) for v in self.pilot_gain)
        except (TypeError, ValueError):
            raise ThreatModelError(f"pilot_gain must be two numbers (min, max), got {self.pilot_gain!r}") from None
        if len(g) != 2 or not (0 < g[0] <= g[1] and math.isfinite(g[1])):
            raise ThreatModelError(f"pilot_gain must be (min, max) with 0 < min <= max, got {self.pilot_gain!r}")
        object.__setattr__(self, "pilot_gain", g)
        if self.horizon is not None and int(self.horizon) < 1:
            raise ThreatModelError(f"horizon must be >= 1 TTI, got {self.horizon}")

    def check_env(self, num_users: int) -> None:
        """Raise :class:`ThreatModelError` if a user id does not exist in an environment of ``num_users``.

        Example:
            >>> ThreatModel(attackers=(0,), victims=(1,)).check_env(4)
        """
        unknown = sorted(u for u in self.attackers + self.victims if u >= num_users)
        if unknown:
            raise ThreatModelError(f"unknown user(s) {unknown}: the environment has users 0..{num_users - 1}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what ``attack.json`` stores).

        Example:
            >>> ThreatModel().to_dict()["attackers"]
            [0, 1]
        """
        d = asdict(self)
        d["attackers"], d["victims"] = list(self.attackers), list(self.victims)
        d["pilot_gain"] = list(self.pilot_gain)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThreatModel":
        """Inverse of :meth:`to_dict` (unknown keys are an error; keys added since an older file was
        written take their defaults, so old ``attack.json`` files still load as ``fixed``).

        Example:
            >>> ThreatModel.from_dict(ThreatModel().to_dict()) == ThreatModel()
            True
        """
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ThreatModelError(f"unknown threat-model key(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "pilot_gain" in d and isinstance(d["pilot_gain"], list):
            d["pilot_gain"] = tuple(d["pilot_gain"])
        return cls(**d)
