"""FGGM on a DRL MU-MIMO scheduler: crafting the attacks, and the ``attack.json`` they are saved as.

The attackers know only the policy and its observation normaliser.  Every observation entry
they do not control lies, they assume, in the box of :mod:`fggm.mimo.setup`; their own entries
follow from the forgery (:mod:`fggm.mimo.forgery`: a fixed or stealthy forged channel, a scaled
and rotated pilot, or silence).  FGGM bounds the policy's output over that whole box with CROWN
(or IBP), differentiably in the forgery's parameters, and projected gradient steps move the
parameters until the goal (no victim scheduled) is certified for the whole box, along the core's
ladder of boxes (:func:`fggm.core.attack.ladder_search`).

Methods (:data:`METHODS`, all with the same step budget ``ThreatModel.steps`` x ``restarts``):
``fggm`` (CROWN), ``fggm-ibp`` (the IBP ablation), ``mean-pgd`` (the goal's point margin at the
normaliser's mean observation), ``eot-pgd`` (its expectation over observations drawn from the
normaliser's Gaussian, clipped to SE >= 0), ``random`` (a random feasible forgery) and
``silent`` (the attackers send nothing).  The white-box ``oracle-pgd`` re-optimises every TTI and
lives with the evaluation (:mod:`fggm.mimo.runner`).  Every crafted forgery is certified the same
way, in float64.

Example:
    >>> victim = Victim.load("data/schedulers/smart16")                       # doctest: +SKIP
    >>> result = run_fggm(victim, ThreatModel(attackers=(0, 1), victims=(2,)))  # doctest: +SKIP
    >>> result.certificate["proved"], result.save("attack.json")              # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fggm.core.attack import Search, certify, eot_search, ladder_search, mean_point_search
from fggm.core.files import read_format, write_json
from fggm.mimo.forgery import ForgedChannels, Report, StealthyChannels, forged_se
from fggm.mimo.setup import AttackSetup
from fggm.mimo.threat import DOMAINS, FORGERIES, STEP_RULES, ThreatModel, ThreatModelError, union_bound_k
from fggm.mimo.victim import Victim

__all__ = ["ThreatModel", "ThreatModelError", "Victim", "AttackSetup", "AttackResult", "METHODS", "check_method", "craft",
           "run_fggm", "mean_point_pgd", "eot_pgd", "random_forged", "silent", "forged_se", "ForgedChannels",
           "StealthyChannels", "Report", "DOMAINS", "STEP_RULES", "FORGERIES", "union_bound_k"]

FORMAT = "fggm-attack/1"
METHODS = ("fggm", "fggm-ibp", "mean-pgd", "eot-pgd", "random", "silent")
EOT_SAMPLES = 64


def _versions() -> dict[str, str]:
    import platform

    import stable_baselines3

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__}


def _report_json(r: Report) -> dict[str, Any]:
    if r.kind == "pilot":
        g = complex(np.asarray(r.value).reshape(-1)[0])
        return {"report": "pilot", "gain_re": g.real, "gain_im": g.imag, "power_gain": abs(g) ** 2,
                "phase": float(np.angle(g))}
    h = np.zeros(0, dtype=complex) if r.value is None else np.asarray(r.value, dtype=complex)
    return {"report": r.kind, "re": h.real.tolist(), "im": h.imag.tolist(), "power": float(np.sum(np.abs(h) ** 2))}


def _report_of(d: dict[str, Any]) -> Report:
    kind = d.get("report", "fixed")
    if kind == "pilot":
        return Report("pilot", np.array([complex(d["gain_re"], d["gain_im"])]))
    if kind == "silent":
        return Report("silent")
    return Report("fixed", np.asarray(d["re"], dtype=float) + 1j * np.asarray(d["im"], dtype=float))


@dataclass
class AttackResult:
    """A crafted attack: each attacker's report, its certificate and how it was made; after an
    evaluation also its ``evaluation`` summary (coverage of real TTIs by the box and by the
    certified box, victims' and attackers' throughput).

    Example:
        >>> res = run_fggm(victim, ThreatModel())   # doctest: +SKIP
        >>> res.save("runs/attack.json")             # doctest: +SKIP
    """

    attack: str
    threat: ThreatModel
    reports: dict[int, Report]
    certificate: dict[str, Any]
    budget: float
    env: dict[str, Any]
    scheduler: str = ""
    steps_done: int = 0
    wall_s: float = 0.0
    history: list[float] = field(default_factory=list)
    ladder: list[dict[str, Any]] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)  # the forgery's parameters [A, ...] (for the oracle's start)
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def forgery(self) -> str:
        """The threat model's forgery (``fixed | stealthy | pilot | silent``)."""
        return self.threat.forgery

    @property
    def forged(self) -> dict[int, np.ndarray]:
        """Each attacker's forged channel (complex ``[M]``) for channel forgeries, its complex pilot
        gain (``[1]``) for ``pilot``, zeros for ``silent``."""
        M = int(self.env.get("num_antennas", 0))
        return {u: (np.zeros(M, dtype=complex) if r.value is None else np.asarray(r.value)) for u, r in self.reports.items()}

    def x(self) -> torch.Tensor:
        """The forgery's parameters ``[1, A, ...]`` (float32)."""
        return torch.tensor(np.asarray(self.params, dtype=np.float32)).unsqueeze(0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``attack.json`` schema)."""
        ev = self.evaluation
        return {
            "format": FORMAT,
            "attack": self.attack,
            "forgery": self.forgery,
            "threat_model": self.threat.to_dict(),
            "forged": {str(u): _report_json(r) for u, r in self.reports.items()},
            "params": self.params,
            "certificate": {**self.certificate, "domain": self.threat.domain, "k": self.threat.k},
            "coverage": ev.get("coverage"),
            "certified_coverage": ev.get("certified_coverage"),
            "attacker_throughput": ev.get("attacker_throughput"),
            "attacker_throughput_no_attack": ev.get("attacker_throughput_no_attack"),
            "victim_throughput": ev.get("victim_throughput"),
            "victim_throughput_no_attack": ev.get("victim_throughput_no_attack"),
            "evaluation": ev,
            "power_budget": self.budget,
            "env": self.env,
            "scheduler": self.scheduler,
            "seed": self.threat.seed,
            "steps_done": self.steps_done,
            "wall_s": round(self.wall_s, 3),
            "loss_history": [round(v, 6) for v in self.history],
            "ladder": self.ladder,
            "versions": _versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``attack.json`` (parents created, written whole or not at all); returns the path.
        The scheduler is recorded relative to the file's folder when that resolves it."""
        from fggm.mimo.safe_load import scheduler_ref

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        d["scheduler"] = scheduler_ref(self.scheduler, p.parent)  # resolvable from the file's folder
        return write_json(p, d)

    @classmethod
    def load(cls, path: str | Path) -> "AttackResult":
        """Read an ``attack.json`` written by :meth:`save` (files from before the threat models load
        as ``fixed``).

        Example:
            >>> AttackResult.load("runs/attack.json").forgery   # doctest: +SKIP
            'fixed'
        """
        p = Path(path)
        d = read_format(p, FORMAT, ThreatModelError, "an FGGM attack file")
        try:
            threat = ThreatModel.from_dict(d["threat_model"])
            reports = {int(u): _report_of(v) for u, v in d["forged"].items()}
            cert = {k: v for k, v in d["certificate"].items() if k not in ("domain", "k")}
            params = d.get("params") or _params_of(threat, reports)
            return cls(attack=d["attack"], threat=threat, reports=reports, certificate=cert,
                       budget=float(d["power_budget"]), env=d["env"], scheduler=d.get("scheduler", ""),
                       steps_done=int(d.get("steps_done", 0)), wall_s=float(d.get("wall_s", 0.0)),
                       history=list(d.get("loss_history", [])), ladder=list(d.get("ladder", [])),
                       params=params, evaluation=dict(d.get("evaluation") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ThreatModelError):
                raise
            raise ThreatModelError(f"{p} is missing or has a malformed field: {exc}") from None


def _params_of(threat: ThreatModel, reports: dict[int, Report]) -> list[Any]:
    """Parameters ``[A, ...]`` from reports (files written before ``params`` was stored)."""
    out = []
    for u in threat.attackers:
        r = reports[u]
        v = np.asarray(r.value if r.value is not None else [], dtype=complex).reshape(-1)
        out.append([v[0].real, v[0].imag] if r.kind == "pilot" else np.concatenate([v.real, v.imag]).tolist())
    return out


# ------------------------------------------------------------------------------ crafting


def _finish(setup: AttackSetup, name: str, search: Search, t0: float) -> AttackResult:
    """Certify the best restart in float64 (core :func:`~fggm.core.attack.certify`) and package it."""
    cert = certify(setup.problem, search.x, search.loss)
    c = setup.certificate(cert.lb, cert.ub)
    c["certified_k"] = cert.certified_k
    x1 = cert.x[0]
    env = {"num_antennas": setup.victim.env.num_antennas, "num_users": setup.victim.env.num_users,
           "max_scheduled": setup.victim.env.max_scheduled, "head": setup.victim.head}
    return AttackResult(attack=name, threat=setup.threat, reports=setup.reports(x1), certificate=c, budget=setup.budget,
                        env=env, scheduler=setup.victim.source, steps_done=search.steps,
                        wall_s=time.perf_counter() - t0, history=search.history, ladder=search.ladder,
                        params=x1.detach().double().tolist())


def check_method(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`, else a one-line :class:`ThreatModelError`.

    Example:
        >>> check_method("eot-pgd")
        'eot-pgd'
    """
    if method not in METHODS:
        raise ThreatModelError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def craft(victim: Victim | str | Path, threat: ThreatModel, method: str = "fggm", *, rungs: int = 12,
          power: dict[int, float] | None = None, on_step: Callable[[int, float], None] | None = None) -> AttackResult:
    """Craft one forgery with ``method`` (:data:`METHODS`) under ``threat``; every result is
    certified the same way.  ``silent`` threat models craft nothing whatever the method.
    ``power`` (``random`` with a channel forgery): each attacker's power (default: the budget).

    Example:
        >>> craft("data/schedulers/smart16", ThreatModel(forgery="pilot"), "eot-pgd").reports   # doctest: +SKIP
    """
    check_method(method)
    if not isinstance(victim, Victim):
        victim = Victim.load(victim)
    t0 = time.perf_counter()
    if method == "silent" and threat.forgery != "silent":
        threat = replace(threat, forgery="silent")
    tm = replace(threat, domain="ibp") if method == "fggm-ibp" else threat
    setup = AttackSetup.build(victim, tm)
    ctl = setup.controlled
    if tm.forgery == "silent":
        x = torch.zeros(1, *ctl.shape)
        with torch.no_grad():
            loss = setup.problem.loss(x)
        return _finish(setup, "silent", Search(x, loss, [float(loss)], 0), t0)
    x0 = ctl.init(tm.restarts, tm.seed)
    if method in ("fggm", "fggm-ibp"):
        s = ladder_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size, rungs=rungs, seed=tm.seed,
                          on_step=on_step)
    elif method == "mean-pgd":
        s = mean_point_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size)
    elif method == "eot-pgd":
        s = eot_search(setup.problem, x0, tm.steps, tm.step_rule, tm.step_size, samples=EOT_SAMPLES, seed=tm.seed)
    else:
        p = None
        if power and isinstance(ctl, ForgedChannels) and not isinstance(ctl, StealthyChannels):
            p = torch.tensor([power.get(u, setup.budget) for u in tm.attackers], dtype=torch.float32)
        x = ctl.sample(1, tm.seed + 7919, p) if p is not None else ctl.sample(1, tm.seed + 7919)
        with torch.no_grad():
            loss = setup.problem.loss(x)
        s = Search(x, loss, [float(loss)], 0)
    return _finish(setup, method, s, t0)


def run_fggm(victim: Victim | str | Path, threat: ThreatModel, *, rungs: int = 12,
             on_step: Callable[[int, float], None] | None = None) -> AttackResult:
    """Craft one forgery per attacker that certifiably keeps the victims unscheduled (``fggm`` with
    ``threat.domain = "crown"``, ``fggm-ibp`` with ``"ibp"``).

    Minimises the distance of the certified bounds from the goal by projected sign or Adam steps
    on the forgery's parameters, all restarts as one batch, along the core's ladder of boxes
    ``k/2^(rungs-1), ..., k/2, k``; the result is certified on the full box when the last rung
    succeeds, otherwise it is the forgery certified on the largest box reached
    (``certificate["certified_k"]``).  The final certificate is recomputed in float64.

    Example:
        >>> res = run_fggm("data/schedulers/smart16", ThreatModel(attackers=(0, 1), victims=(2,)))  # doctest: +SKIP
        >>> res.certificate["proved"], res.certificate["certified_k"]                              # doctest: +SKIP
        (False, 0.1)
    """
    method = "fggm" if threat.domain == "crown" else "fggm-ibp"
    return craft(victim, threat, method, rungs=rungs, on_step=on_step)


def mean_point_pgd(victim: Victim, threat: ThreatModel) -> AttackResult:
    """Grey-box baseline: the same search on the normaliser's single mean observation, no bounds.

    Example:
        >>> mean_point_pgd(victim, ThreatModel()).attack   # doctest: +SKIP
        'mean-pgd'
    """
    return craft(victim, threat, "mean-pgd")


def eot_pgd(victim: Victim, threat: ThreatModel) -> AttackResult:
    """Grey-box baseline (EOT-PGD): the expected point margin over observations drawn from the
    normaliser's Gaussian (clipped to SE >= 0), no bounds.

    Example:
        >>> eot_pgd(victim, ThreatModel()).attack   # doctest: +SKIP
        'eot-pgd'
    """
    return craft(victim, threat, "eot-pgd")


def random_forged(victim: Victim, threat: ThreatModel, power: dict[int, float] | None = None) -> AttackResult:
    """Baseline: a random feasible forgery (channel forgeries: CN(0, I) directions at ``power``,
    default the full budget; pilot: a random gain and phase).

    Example:
        >>> random_forged(victim, ThreatModel()).attack   # doctest: +SKIP
        'random'
    """
    return craft(victim, threat, "random", power=power)


def silent(victim: Victim, threat: ThreatModel) -> AttackResult:
    """Baseline: the attackers go silent (no pilot, no data); certified like any forgery.

    Example:
        >>> silent(victim, ThreatModel()).forgery   # doctest: +SKIP
        'silent'
    """
    return craft(victim, threat, "silent")
