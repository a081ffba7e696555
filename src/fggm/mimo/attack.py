"""FGGM on a DRL MU-MIMO scheduler: the MU-MIMO problem plugged into :mod:`fggm.core`.

The attackers know only the policy and its observation normaliser.  Every observation entry
they do not control lies, they assume, in the box ``mean +- k*sigma`` of the normaliser's
statistics (intersected with physical limits -- SE >= 0 -- and the normaliser's clip range);
their own entries are a point: the forged channel's Re/Im parts and the single-user SE that
follows from it, ``log2(1 + ||h||^2)``.  :func:`fggm.bounds.crown` (or ``ibp``) bounds the
policy's pre-tanh action over that whole box, differentiably in the forged channel, and
projected sign (FGSM-style) or Adam steps move the forged channels until the certified action
interval lies inside one run of subset indices whose subsets contain no victim -- then, for
every observation in the box, no victim is scheduled.  When no run can be reached the attack
reports the certified share: the fraction of victim-free subsets among those the certified
interval can still reach.

What is MU-MIMO here: the threat model (users, power budget), the victim checkpoint, the
forged-channel map (:class:`ForgedChannels`), the victim-free runs of the subset grid and the
certificate's subset indices.  The box, the specification's loss, the gradient loop, the
ladder of boxes and the float64 certificate are :mod:`fggm.core`'s.

Example:
    >>> victim = Victim.load("data/schedulers/smart16")                       # doctest: +SKIP
    >>> result = run_fggm(victim, ThreatModel(attackers=(0, 1), victims=(2,)))  # doctest: +SKIP
    >>> result.certificate["proved"], result.save("attack.json")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fggm.core.attack import BoxProblem, Certified, certify, ladder_search, mean_point_search
from fggm.core.spec import RunSpec
from fggm.core.threat import DOMAINS, STEP_RULES, AttackError, Controlled, NormaliserStats, check_search, parse_ids
from fggm.mimo.config import ConfigError, EnvConfig
from fggm.mimo.env import observation_indices
from fggm.mimo.physics import SubsetCodec

__all__ = ["ThreatModel", "ThreatModelError", "Victim", "AttackSetup", "AttackResult", "run_fggm",
           "mean_point_pgd", "random_forged", "forged_se", "ForgedChannels", "DOMAINS", "STEP_RULES"]

FORMAT = "fggm-attack/1"


class ThreatModelError(ConfigError, AttackError):
    """An invalid threat model (one human-readable sentence)."""


@dataclass(frozen=True)
class ThreatModel:
    """Who attacks whom, what the attackers assume, and how they search.

    Attributes:
        attackers: users who forge their channel reports.
        victims: users the attack keeps from being scheduled (disjoint from ``attackers``).
        k: the box half-width in normaliser standard deviations for every unknown entry.
        power_budget: bound on each forged channel's ``||h||^2``; ``None`` means
            ``power_factor`` times the largest per-user mean channel power in the normaliser's
            statistics of real channels.
        power_factor: see ``power_budget`` (4 is about a user at the top of a 0-20 dB range).
        domain: ``crown`` (linear relaxation) or ``ibp`` (intervals; the ablation).
        step_rule: ``sign`` (projected FGSM-style steps) or ``adam``.
        steps: gradient steps per restart.
        step_size: step as a fraction of the forged channel's RMS entry at full budget.
        restarts: random restarts, run as one batch (the first starts at the mean channel).
        seed: seed of the restarts.

    Example:
        >>> ThreatModel(attackers=(0, 1), victims=(2,), k=3).domain
        'crown'
    """

    attackers: tuple[int, ...] = (0, 1)
    victims: tuple[int, ...] = (2,)
    k: float = 3.0
    power_budget: float | None = None
    power_factor: float = 4.0
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
        if self.power_budget is not None and not (math.isfinite(self.power_budget) and self.power_budget > 0):
            raise ThreatModelError(f"power_budget must be positive, got {self.power_budget}")
        if not (math.isfinite(self.power_factor) and self.power_factor > 0):
            raise ThreatModelError(f"power_factor must be positive, got {self.power_factor}")

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThreatModel":
        """Inverse of :meth:`to_dict` (unknown keys are an error).

        Example:
            >>> ThreatModel.from_dict(ThreatModel().to_dict()) == ThreatModel()
            True
        """
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ThreatModelError(f"unknown threat-model key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# ------------------------------------------------------------------------------ the victim


@dataclass
class Victim:
    """What the attackers know: the attacker's view (normaliser + actor) and the normaliser's
    statistics; plus, for evaluation only, the SB3 model and ``VecNormalize``.

    Example:
        >>> victim = Victim.load("data/schedulers/smart16")   # doctest: +SKIP
        >>> victim.view(torch.zeros(1, 544)).shape               # doctest: +SKIP
        torch.Size([1, 1])
    """

    view: nn.Sequential
    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip_obs: float
    env: EnvConfig
    source: str = ""
    model: Any = None
    vecnormalize: Any = None

    @classmethod
    def load(cls, scheduler_dir: str | Path, env_config: EnvConfig | None = None) -> "Victim":
        """Load a checkpoint written by :func:`fggm.train.train` (size-checked against ``env_config``).

        Example:
            >>> Victim.load("data/schedulers/smart16").env.num_users   # doctest: +SKIP
            16
        """
        from fggm.mimo.policy import extract_policy
        from fggm.mimo.train import load_scheduler

        model, vecnorm, cfg = load_scheduler(scheduler_dir, env_config)
        if vecnorm is None or not getattr(vecnorm, "norm_obs", False):
            raise ThreatModelError(f"{scheduler_dir} has no observation normaliser: FGGM's box needs its statistics")
        view = extract_policy(model, vecnorm)
        return cls(view=view, mean=np.asarray(vecnorm.obs_rms.mean, dtype=np.float64),
                   var=np.asarray(vecnorm.obs_rms.var, dtype=np.float64), epsilon=float(vecnorm.epsilon),
                   clip_obs=float(vecnorm.clip_obs), env=cfg, source=str(scheduler_dir), model=model,
                   vecnormalize=vecnorm)

    def check(self) -> None:
        """The view, the statistics and the environment must agree on the observation size.

        Example:
            >>> victim.check()   # doctest: +SKIP
        """
        first = next((m for m in self.view if isinstance(m, nn.Linear)), None)
        n = self.env.obs_dim
        sizes = {"normaliser mean": self.mean.shape[0], "normaliser var": self.var.shape[0]}
        if first is not None:
            sizes["policy input"] = first.in_features
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            what = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise ThreatModelError(
                f"checkpoint/environment mismatch: the environment (M={self.env.num_antennas}, "
                f"K={self.env.num_users}) has {n} observation entries but the {what}"
            )


def forged_se(x: torch.Tensor) -> torch.Tensor:
    """Single-user SE ``log2(1 + ||h||^2)`` of forged channels given as ``[..., 2M]`` (Re then Im),
    as :func:`fggm.mimo.single_user_se` computes it for the observation (noise power 1).

    Example:
        >>> forged_se(torch.tensor([1.0, 1.0, 1.0, 1.0]))   # ||h||^2 = 4
        tensor(2.3219)
    """
    return torch.log2(1.0 + (x * x).sum(-1))


# ------------------------------------------------------------------------------ setup


class ForgedChannels(Controlled):
    """What MU-MIMO attackers control: their forged channels ``x [B, A, 2M]`` (Re then Im), written
    to their channel entries and, through :func:`forged_se`, their single-user-SE entries;
    each channel projected onto ``||h||^2 <= budget``.

    Example:
        >>> ctl = ForgedChannels(torch.tensor([[2, 3]]), torch.tensor([0]), 4.0, torch.zeros(1, 2))
        >>> ctl.values(torch.tensor([[[1.0, 1.0]]])).tolist()
        [[1.0, 1.0, 1.5849624872207642]]
    """

    def __init__(self, ch_idx: torch.Tensor, se_idx: torch.Tensor, budget: float, mean_forged: torch.Tensor) -> None:
        self.ch_idx, self.se_idx, self.budget, self.mean_forged = ch_idx, se_idx, float(budget), mean_forged
        self.indices = torch.cat([ch_idx.flatten(), se_idx])
        self.shape = tuple(mean_forged.shape)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(x.shape[0], -1), forged_se(x)], 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x * torch.clamp(math.sqrt(self.budget) / norm, max=1.0)

    def init(self, restarts: int, seed: int) -> torch.Tensor:
        """Restart 0 at the mean channel (projected); the others random at 50-100% of the budget."""
        gen = torch.Generator().manual_seed(seed)
        A, D = self.mean_forged.shape
        x = torch.randn(restarts, A, D, generator=gen)
        scale = math.sqrt(self.budget) * (0.5 + 0.5 * torch.rand(restarts, A, 1, generator=gen))
        x = x / x.norm(dim=-1, keepdim=True) * scale
        x[0] = self.mean_forged
        return self.project(x)

    def step_scale(self, step_size: float) -> float:
        return step_size * math.sqrt(self.budget / self.shape[-1])  # per-coordinate step at full budget

    def sample(self, n: int, seed: int, power: torch.Tensor | None = None) -> torch.Tensor:
        """Random CN(0, I) directions at ``power`` ``[A]`` (default: the full budget)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *self.shape, generator=gen)
        p = power if power is not None else torch.full((self.shape[0],), self.budget)
        return x / x.norm(dim=-1, keepdim=True) * p.reshape(1, -1, 1).sqrt()


@dataclass
class AttackSetup:
    """Everything precomputed for one (victim, threat model): the core problem (box, forged
    channels, victim-free runs as a :class:`~fggm.core.spec.RunSpec`), the codec and budget.

    Example:
        >>> setup = AttackSetup.build(victim, ThreatModel())   # doctest: +SKIP
    """

    victim: Victim
    threat: ThreatModel
    codec: SubsetCodec
    problem: BoxProblem
    free: np.ndarray  # [N] bool: subset contains no victim

    @classmethod
    def build(cls, victim: Victim, threat: ThreatModel) -> "AttackSetup":
        env = victim.env
        M, K = env.num_antennas, env.num_users
        threat.check_env(K)
        victim.check()
        mean = victim.mean
        phys_lo = np.full(mean.shape, -np.inf)
        phys_lo[: 2 * K] = 0.0  # single-user SE and cumulative SE are >= 0
        ch_idx, se_idx = [], []
        for u in threat.attackers:
            ix = observation_indices(M, K, u)
            ch_idx.append(np.concatenate([ix["re"], ix["im"]]))
            se_idx.append(int(ix["su_se"][0]))
        ch = np.stack(ch_idx)
        powers = []  # mean channel power of each user in the normaliser's statistics
        for u in range(K):
            ix = observation_indices(M, K, u)
            entries = np.concatenate([ix["re"], ix["im"]])
            powers.append(float(np.sum(mean[entries] ** 2 + victim.var[entries])))
        budget = threat.power_budget if threat.power_budget is not None else threat.power_factor * max(powers)
        codec = SubsetCodec(K, env.max_scheduled)
        free = ~codec.masks[:, list(threat.victims)].any(axis=1)
        spec = RunSpec.from_grid(free)  # runs of victim-free subsets, 1% of a half step inside
        if len(spec.runs) == 0:
            raise ThreatModelError("every subset contains a victim: nothing to attack towards")
        controlled = ForgedChannels(torch.tensor(ch, dtype=torch.long), torch.tensor(se_idx, dtype=torch.long),
                                    float(budget), torch.tensor(mean[ch], dtype=torch.float32))
        stats = NormaliserStats(victim.mean, victim.var, victim.epsilon, victim.clip_obs)
        problem = BoxProblem(victim.view, stats, controlled, spec, threat.k, threat.domain, phys_lo=phys_lo)
        return cls(victim=victim, threat=threat, codec=codec, problem=problem, free=free)

    # -- the core problem's parts under their MU-MIMO names -----------------------------------
    @property
    def controlled(self) -> ForgedChannels:
        return self.problem.controlled  # type: ignore[return-value]

    @property
    def spec(self) -> RunSpec:
        return self.problem.spec  # type: ignore[return-value]

    @property
    def base_lo(self) -> torch.Tensor:
        """``[obs]`` raw-space box of every entry (the attackers' are overwritten by :meth:`box`)."""
        return self.problem.base_lo

    @property
    def base_up(self) -> torch.Tensor:
        return self.problem.base_up

    @property
    def ch_idx(self) -> torch.Tensor:
        """``[A, 2M]`` observation index of each attacker's Re then Im entries."""
        return self.controlled.ch_idx

    @property
    def se_idx(self) -> torch.Tensor:
        """``[A]`` observation index of each attacker's single-user SE entry."""
        return self.controlled.se_idx

    @property
    def budget(self) -> float:
        return self.controlled.budget

    @property
    def mean_forged(self) -> torch.Tensor:
        """``[A, 2M]`` attackers' entries at the normaliser mean."""
        return self.controlled.mean_forged

    @property
    def runs(self) -> np.ndarray:
        """``[R, 2]`` first/last index of each run of victim-free subsets."""
        return self.spec.runs

    @property
    def run_lo(self) -> torch.Tensor:
        """``[R]`` pre-tanh lower end each run needs (-inf at the grid's start)."""
        return self.spec.run_lo

    @property
    def run_hi(self) -> torch.Tensor:
        return self.spec.run_hi

    def box(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners ``[B, obs]`` with the attackers' entries set from forged channels ``x [B, A, 2M]``."""
        return self.problem.box(x, dtype)

    def point(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Observations ``obs [B, obs]`` with the attackers' entries replaced by forged ``x [B, A, 2M]``."""
        return self.problem.point(x, obs)

    def mean_observation(self) -> torch.Tensor:
        """The normaliser's mean observation (physical limits applied), ``[obs]``."""
        return self.problem.mean_observation()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project each forged channel onto ``||h||^2 <= budget``."""
        return self.controlled.project(x)

    def bound(self, x: torch.Tensor, domain: str | None = None, dtype: torch.dtype = torch.float32,
              view: nn.Sequential | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified pre-tanh action interval ``[B, 1]`` each over the box of forged channels ``x``."""
        return self.problem.bound(x, domain, dtype, view)

    # -- objective -----------------------------------------------------------------------------
    def run_costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` distance of the certified interval from fitting inside each victim-free run."""
        return self.spec.costs(lb, ub)

    def point_margin(self, mu: torch.Tensor) -> torch.Tensor:
        """``[B]`` signed distance of a point action from the best run (negative = inside, deeper)."""
        return self.spec.point_margin(mu)

    def certificate(self, lb: float, ub: float) -> dict[str, Any]:
        """Proved (inside one victim-free run) and the certified share of victim-free subsets."""
        a_lo, a_hi = math.tanh(lb), math.tanh(ub)
        i_lo, i_hi = self.codec.action_to_index(a_lo), self.codec.action_to_index(a_hi)
        share = float(self.free[i_lo : i_hi + 1].mean())
        r = self.spec.which(lb, ub)
        proved, target = r is not None, None if r is None else [int(self.runs[r][0]), int(self.runs[r][1])]
        return {"proved": proved, "certified_share": 1.0 if proved else share, "bound": [lb, ub],
                "action_interval": [a_lo, a_hi], "index_range": [i_lo, i_hi], "target_run": target,
                "victim_free_share_of_all_subsets": float(self.free.mean())}


# ------------------------------------------------------------------------------ result


def _versions() -> dict[str, str]:
    import platform

    import stable_baselines3

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__}


@dataclass
class AttackResult:
    """A crafted attack: forged channels per attacker, its certificate and how it was made.

    Example:
        >>> res = run_fggm(victim, ThreatModel())   # doctest: +SKIP
        >>> res.save("runs/attack.json")             # doctest: +SKIP
    """

    attack: str
    threat: ThreatModel
    forged: dict[int, np.ndarray]  # user -> complex [M]
    certificate: dict[str, Any]
    budget: float
    env: dict[str, Any]
    scheduler: str = ""
    steps_done: int = 0
    wall_s: float = 0.0
    history: list[float] = field(default_factory=list)
    ladder: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``attack.json`` schema)."""
        return {
            "format": FORMAT,
            "attack": self.attack,
            "threat_model": self.threat.to_dict(),
            "forged": {str(u): {"re": h.real.tolist(), "im": h.imag.tolist(), "power": float(np.sum(np.abs(h) ** 2))}
                       for u, h in self.forged.items()},
            "certificate": {**self.certificate, "domain": self.threat.domain, "k": self.threat.k},
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
        """Write ``attack.json`` (parents created); returns the path."""
        from fggm.mimo.safe_load import scheduler_ref

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        d["scheduler"] = scheduler_ref(self.scheduler, p.parent)  # resolvable from the file's folder
        p.write_text(json.dumps(d, indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "AttackResult":
        """Read an ``attack.json`` written by :meth:`save`.

        Example:
            >>> AttackResult.load("runs/attack.json").forged   # doctest: +SKIP
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"attack file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ThreatModelError(f"{p} is not valid JSON: {exc.msg}") from None
        if d.get("format") != FORMAT:
            raise ThreatModelError(f"{p} is not an FGGM attack file (format {d.get('format')!r})")
        forged = {int(u): np.asarray(v["re"]) + 1j * np.asarray(v["im"]) for u, v in d["forged"].items()}
        cert = {k: v for k, v in d["certificate"].items() if k not in ("domain", "k")}
        return cls(attack=d["attack"], threat=ThreatModel.from_dict(d["threat_model"]), forged=forged,
                   certificate=cert, budget=float(d["power_budget"]), env=d["env"], scheduler=d.get("scheduler", ""),
                   steps_done=int(d.get("steps_done", 0)), wall_s=float(d.get("wall_s", 0.0)),
                   history=list(d.get("loss_history", [])), ladder=list(d.get("ladder", [])))


# ------------------------------------------------------------------------------ attacks


def _to_complex(x: torch.Tensor, M: int) -> np.ndarray:
    v = x.detach().double().numpy()
    return v[..., :M] + 1j * v[..., M:]


def run_fggm(victim: Victim | str | Path, threat: ThreatModel, *, rungs: int = 12,
             on_step: Callable[[int, float], None] | None = None) -> AttackResult:
    """Craft one fixed forged CSI per attacker that certifiably keeps the victims unscheduled.

    Minimises ``min_r [relu(L_r - lb) + relu(ub - U_r)]`` -- how far the certified pre-tanh
    interval ``[lb, ub]`` is from fitting inside victim-free run ``r`` -- by projected sign or
    Adam steps on the forged channels, all restarts as one batch, along the core's ladder of
    boxes (:func:`fggm.core.attack.ladder_search`): ``k/2^(rungs-1), ..., k/2, k``, each rung
    starting from the previous rung's certified channels.  The result is certified on the full
    box when the last rung succeeds; otherwise it is the channel certified on the largest box
    reached (``certificate["certified_k"]``), which is what "maximise the certified share" means
    here.  The final certificate is recomputed in float64.

    Example:
        >>> res = run_fggm("data/schedulers/smart16", ThreatModel(attackers=(0, 1), victims=(2,)))  # doctest: +SKIP
        >>> res.certificate["proved"], res.certificate["certified_k"]                              # doctest: +SKIP
        (False, 0.375)
    """
    if not isinstance(victim, Victim):
        victim = Victim.load(victim)
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    x0 = setup.controlled.init(threat.restarts, threat.seed)
    search = ladder_search(setup.problem, x0, threat.steps, threat.step_rule, threat.step_size, rungs=rungs,
                           seed=threat.seed, on_step=on_step)
    res = _finish(setup, "fggm" if threat.domain == "crown" else "fggm-ibp", search.x, search.loss, search.history,
                  search.steps, t0)
    res.ladder = search.ladder
    return res


def _finish(setup: AttackSetup, name: str, best_x: torch.Tensor, best_loss: torch.Tensor,
            history: list[float], steps_done: int, t0: float) -> AttackResult:
    """Certify the best restart (core :func:`~fggm.core.attack.certify`) and package it."""
    cert: Certified = certify(setup.problem, best_x, best_loss)
    c = setup.certificate(float(cert.lb), float(cert.ub))
    c["certified_k"] = cert.certified_k
    M = setup.victim.env.num_antennas
    forged = {u: _to_complex(cert.x[0, a], M) for a, u in enumerate(setup.threat.attackers)}
    env = {"num_antennas": M, "num_users": setup.victim.env.num_users, "max_scheduled": setup.victim.env.max_scheduled}
    return AttackResult(attack=name, threat=setup.threat, forged=forged, certificate=c, budget=setup.budget,
                        env=env, scheduler=setup.victim.source, steps_done=steps_done,
                        wall_s=time.perf_counter() - t0, history=history)


def mean_point_pgd(victim: Victim, threat: ThreatModel) -> AttackResult:
    """Grey-box baseline: the same search on the single mean observation, no bounds.

    Maximises how deep the policy's action at the normaliser mean lies inside a victim-free run
    (:func:`fggm.core.attack.mean_point_search`).

    Example:
        >>> mean_point_pgd(victim, ThreatModel()).attack   # doctest: +SKIP
        'mean-pgd'
    """
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    x0 = setup.controlled.init(threat.restarts, threat.seed)
    s = mean_point_search(setup.problem, x0, threat.steps, threat.step_rule, threat.step_size)
    return _finish(setup, "mean-pgd", s.x, s.loss, s.history, s.steps, t0)


def random_forged(victim: Victim, threat: ThreatModel, power: dict[int, float] | None = None) -> AttackResult:
    """Baseline: random forged channels (CN(0, I) directions) at the given per-attacker power
    (default: the full budget).

    Example:
        >>> random_forged(victim, ThreatModel()).attack   # doctest: +SKIP
        'random'
    """
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    p = torch.tensor([(power or {}).get(u, setup.budget) for u in threat.attackers], dtype=torch.float32)
    x = setup.controlled.sample(1, threat.seed + 7919, p)
    with torch.no_grad():
        loss = setup.problem.loss(x)
    return _finish(setup, "random", x, loss, [float(loss)], 0, t0)
