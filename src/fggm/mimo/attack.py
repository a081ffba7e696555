"""FGGM: the formal grey-box gradient attack on a DRL MU-MIMO scheduler.

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

from fggm.core import bounds
from fggm.mimo.config import ConfigError, EnvConfig
from fggm.mimo.env import observation_indices
from fggm.mimo.physics import SubsetCodec

__all__ = ["ThreatModel", "ThreatModelError", "Victim", "AttackSetup", "AttackResult", "run_fggm",
           "mean_point_pgd", "random_forged", "forged_se"]

DOMAINS = ("crown", "ibp")
STEP_RULES = ("sign", "adam")
FORMAT = "fggm-attack/1"


class ThreatModelError(ConfigError):
    """An invalid threat model (one human-readable sentence)."""


def _users(x: Any, what: str) -> tuple[int, ...]:
    if isinstance(x, (int, np.integer)):
        x = (x,)
    try:
        users = tuple(int(u) for u in x)
    except (TypeError, ValueError):
        raise ThreatModelError(f"{what} must be a list of user ids, got {x!r}") from None
    if not users:
        raise ThreatModelError(f"give at least one {what[:-1]}")
    if len(set(users)) != len(users):
        raise ThreatModelError(f"{what} lists a user twice: {list(users)}")
    if min(users) < 0:
        raise ThreatModelError(f"{what} must be user ids >= 0, got {list(users)}")
    return tuple(sorted(users))


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
        object.__setattr__(self, "attackers", _users(self.attackers, "attackers"))
        object.__setattr__(self, "victims", _users(self.victims, "victims"))
        both = sorted(set(self.attackers) & set(self.victims))
        if both:
            raise ThreatModelError(f"attackers and victims overlap in user(s) {both}")
        if not (math.isfinite(self.k) and self.k > 0):
            raise ThreatModelError(f"k must be a positive number of standard deviations, got {self.k}")
        if self.power_budget is not None and not (math.isfinite(self.power_budget) and self.power_budget > 0):
            raise ThreatModelError(f"power_budget must be positive, got {self.power_budget}")
        if not (math.isfinite(self.power_factor) and self.power_factor > 0):
            raise ThreatModelError(f"power_factor must be positive, got {self.power_factor}")
        if self.domain not in DOMAINS:
            raise ThreatModelError(f"domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        if self.step_rule not in STEP_RULES:
            raise ThreatModelError(f"step_rule must be one of {', '.join(STEP_RULES)}, got {self.step_rule!r}")
        if self.steps < 1 or self.restarts < 1:
            raise ThreatModelError("steps and restarts must be >= 1")
        if not self.step_size > 0:
            raise ThreatModelError(f"step_size must be positive, got {self.step_size}")

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


@dataclass
class AttackSetup:
    """Everything precomputed for one (victim, threat model): box, indices, target runs, budget.

    Example:
        >>> setup = AttackSetup.build(victim, ThreatModel())   # doctest: +SKIP
    """

    victim: Victim
    threat: ThreatModel
    codec: SubsetCodec
    base_lo: torch.Tensor  # [obs] raw-space box for every entry (attackers' are overwritten)
    base_up: torch.Tensor
    ch_idx: torch.Tensor  # [A, 2M] observation index of each attacker's Re then Im entries
    se_idx: torch.Tensor  # [A] observation index of each attacker's single-user SE entry
    budget: float
    free: np.ndarray  # [N] bool: subset contains no victim
    runs: np.ndarray  # [R, 2] first/last index of each run of victim-free subsets
    run_lo: torch.Tensor  # [R] pre-tanh lower end each run needs (-inf at the grid's start)
    run_hi: torch.Tensor  # [R] pre-tanh upper end (+inf at the grid's end)
    mean_forged: torch.Tensor  # [A, 2M] attackers' entries at the normaliser mean

    @classmethod
    def build(cls, victim: Victim, threat: ThreatModel) -> "AttackSetup":
        env = victim.env
        M, K = env.num_antennas, env.num_users
        threat.check_env(K)
        victim.check()
        mean, sigma = victim.mean, np.sqrt(victim.var)
        clip_half = victim.clip_obs * np.sqrt(victim.var + victim.epsilon)
        lo = np.maximum(mean - threat.k * sigma, mean - clip_half)
        up = np.minimum(mean + threat.k * sigma, mean + clip_half)
        nonneg = np.arange(2 * K)  # single-user SE and cumulative SE are >= 0
        lo[nonneg], up[nonneg] = np.maximum(lo[nonneg], 0.0), np.maximum(up[nonneg], 0.0)
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
        runs = _runs(free)
        if len(runs) == 0:
            raise ThreatModelError("every subset contains a victim: nothing to attack towards")
        n = codec.n
        half = 1.0 / max(n - 1, 1)
        margin = 0.01 * half  # stay clear of rounding ties at the grid's decision boundaries
        a_lo = np.array([-np.inf if s == 0 else codec.index_to_action(int(s)) - half + margin for s, _ in runs])
        a_hi = np.array([np.inf if e == n - 1 else codec.index_to_action(int(e)) + half - margin for _, e in runs])
        return cls(
            victim=victim, threat=threat, codec=codec,
            base_lo=torch.tensor(lo, dtype=torch.float32), base_up=torch.tensor(up, dtype=torch.float32),
            ch_idx=torch.tensor(ch, dtype=torch.long), se_idx=torch.tensor(se_idx, dtype=torch.long),
            budget=float(budget), free=free, runs=runs,
            run_lo=torch.tensor(_atanh(a_lo), dtype=torch.float64),
            run_hi=torch.tensor(_atanh(a_hi), dtype=torch.float64),
            mean_forged=torch.tensor(mean[ch], dtype=torch.float32),
        )

    # -- boxes ---------------------------------------------------------------------------------
    def box(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners ``[B, obs]`` with the attackers' entries set from forged channels ``x [B, A, 2M]``."""
        B = x.shape[0]
        lo = self.base_lo.to(dtype).expand(B, -1).clone()
        up = self.base_up.to(dtype).expand(B, -1).clone()
        x = x.to(dtype)
        idx = torch.cat([self.ch_idx.flatten(), self.se_idx])
        vals = torch.cat([x.reshape(B, -1), forged_se(x)], 1)
        lo = lo.index_put((torch.arange(B)[:, None], idx[None, :]), vals)
        up = up.index_put((torch.arange(B)[:, None], idx[None, :]), vals)
        return lo, up

    def point(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Observations ``obs [B, obs]`` with the attackers' entries replaced by forged ``x [B, A, 2M]``."""
        B = x.shape[0]
        idx = torch.cat([self.ch_idx.flatten(), self.se_idx])
        vals = torch.cat([x.reshape(B, -1), forged_se(x)], 1).to(obs.dtype)
        return obs.index_put((torch.arange(B)[:, None], idx[None, :]), vals)

    def mean_observation(self) -> torch.Tensor:
        """The normaliser's mean observation (physical limits applied), ``[obs]``."""
        m = torch.tensor(self.victim.mean, dtype=torch.float32)
        return torch.minimum(torch.maximum(m, self.base_lo), self.base_up)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project each forged channel onto ``||h||^2 <= budget``."""
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x * torch.clamp(math.sqrt(self.budget) / norm, max=1.0)

    def bound(self, x: torch.Tensor, domain: str | None = None, dtype: torch.dtype = torch.float32,
              view: nn.Sequential | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified pre-tanh action interval ``[B, 1]`` each over the box of forged channels ``x``."""
        lo, up = self.box(x, dtype)
        net = view if view is not None else self.victim.view
        if (domain or self.threat.domain) == "crown":
            return bounds.crown(net, lo, up)
        return bounds.ibp(net, lo, up)

    # -- objective -----------------------------------------------------------------------------
    def run_costs(self, lb: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` distance of the certified interval from fitting inside each victim-free run."""
        lo, hi = self.run_lo.to(lb.dtype), self.run_hi.to(lb.dtype)
        return torch.relu(lo - lb) + torch.relu(ub - hi)

    def point_margin(self, mu: torch.Tensor) -> torch.Tensor:
        """``[B]`` signed distance of a point action from the best run (negative = inside, deeper)."""
        lo, hi = self.run_lo.to(mu.dtype), self.run_hi.to(mu.dtype)
        inside = torch.maximum(lo - mu, mu - hi)  # [B, R]; -inf-safe for the end runs
        return inside.min(-1).values

    def certificate(self, lb: float, ub: float) -> dict[str, Any]:
        """Proved (inside one victim-free run) and the certified share of victim-free subsets."""
        a_lo, a_hi = math.tanh(lb), math.tanh(ub)
        i_lo, i_hi = self.codec.action_to_index(a_lo), self.codec.action_to_index(a_hi)
        share = float(self.free[i_lo : i_hi + 1].mean())
        proved, target = False, None
        for r, (s, e) in enumerate(self.runs):
            if float(self.run_lo[r]) <= lb and ub <= float(self.run_hi[r]):
                proved, target = True, [int(s), int(e)]
                break
        return {"proved": proved, "certified_share": 1.0 if proved else share, "bound": [lb, ub],
                "action_interval": [a_lo, a_hi], "index_range": [i_lo, i_hi], "target_run": target,
                "victim_free_share_of_all_subsets": float(self.free.mean())}


def _atanh(a: np.ndarray) -> np.ndarray:
    """arctanh with the grid's open ends (|a| >= 1) mapped to +-inf."""
    out = np.where(a <= -1, -np.inf, np.where(a >= 1, np.inf, 0.0))
    inner = np.abs(a) < 1
    out[inner] = np.arctanh(a[inner])
    return out


def _runs(free: np.ndarray) -> np.ndarray:
    """Maximal runs ``[start, end]`` of True in a boolean vector."""
    edges = np.diff(np.concatenate([[0], free.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return np.stack([starts, ends], 1) if len(starts) else np.zeros((0, 2), dtype=np.int64)


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


def _init(setup: AttackSetup, restarts: int, seed: int) -> torch.Tensor:
    """Restart 0 at the mean channel (projected); the others random at 50-100% of the budget."""
    gen = torch.Generator().manual_seed(seed)
    A, D = setup.mean_forged.shape
    x = torch.randn(restarts, A, D, generator=gen)
    scale = math.sqrt(setup.budget) * (0.5 + 0.5 * torch.rand(restarts, A, 1, generator=gen))
    x = x / x.norm(dim=-1, keepdim=True) * scale
    x[0] = setup.mean_forged
    return setup.project(x)


def _optimise(setup: AttackSetup, loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
              steps: int, step_rule: str, step_size: float,
              done: Callable[[torch.Tensor], torch.Tensor] | None = None,
              on_step: Callable[[int, float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """Projected descent of ``loss_fn`` ([B] per restart); keeps each restart's best point."""
    D = x0.shape[-1]
    scale = step_size * math.sqrt(setup.budget / D)  # per-coordinate step at full budget
    x = x0.clone().requires_grad_(True)
    best_x, best_loss = x0.clone(), torch.full((x0.shape[0],), float("inf"))
    opt = torch.optim.Adam([x], lr=scale) if step_rule == "adam" else None
    history: list[float] = []
    step = 0
    for step in range(steps + 1):
        loss = loss_fn(x)
        with torch.no_grad():
            better = loss.detach() < best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_x[better] = x.detach()[better]
        history.append(float(best_loss.min()))
        if on_step is not None:
            on_step(step, history[-1])
        if step == steps or (done is not None and bool(done(best_loss).any())):
            break
        grad = torch.autograd.grad(loss.sum(), x)[0]
        with torch.no_grad():
            if opt is None:
                decay = 1.0 - 0.9 * step / max(steps - 1, 1)
                x -= scale * decay * grad.sign()
            else:
                x.grad = grad
                opt.step()
            x.copy_(setup.project(x))
    return best_x, best_loss, history, step


def run_fggm(victim: Victim | str | Path, threat: ThreatModel, *, rungs: int = 12,
             on_step: Callable[[int, float], None] | None = None) -> AttackResult:
    """Craft one fixed forged CSI per attacker that certifiably keeps the victims unscheduled.

    Minimises ``min_r [relu(L_r - lb) + relu(ub - U_r)]`` -- how far the certified pre-tanh
    interval ``[lb, ub]`` is from fitting inside victim-free run ``r`` -- by projected sign or
    Adam steps on the forged channels, all restarts as one batch.  The box grows along a
    ladder ``k/2^(rungs-1), ..., k/2, k``: each rung starts from the previous rung's certified
    channels and stops as soon as one restart is certified; the ladder stops at the first rung
    that cannot be certified within its share of the steps.  The result is certified on the
    full box when the last rung succeeds; otherwise it is the channel certified on the largest
    box reached (``certificate["certified_k"]``), which is what "maximise the certified
    share" means here.  The final certificate is recomputed in float64.

    Example:
        >>> res = run_fggm("data/schedulers/smart16", ThreatModel(attackers=(0, 1), victims=(2,)))  # doctest: +SKIP
        >>> res.certificate["proved"], res.certificate["certified_k"]                              # doctest: +SKIP
        (False, 0.375)
    """
    from dataclasses import replace

    if not isinstance(victim, Victim):
        victim = Victim.load(victim)
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    x = _init(setup, threat.restarts, threat.seed)
    gen = torch.Generator().manual_seed(threat.seed + 1)
    history: list[float] = []
    log: list[dict[str, Any]] = []
    best_x, best_loss = x, torch.full((x.shape[0],), float("inf"))
    budget, done_steps = threat.steps, 0
    chunk = max(4, threat.steps // 8)
    k_try, k_ok, k_fail = threat.k / 2 ** (max(1, rungs) - 1), 0.0, None
    while budget > 0:
        rung = AttackSetup.build(victim, replace(threat, k=k_try))

        def loss_fn(z: torch.Tensor, rung: AttackSetup = rung) -> torch.Tensor:
            lb, ub = rung.bound(z)
            return rung.run_costs(lb.double(), ub.double()).min(-1).values

        offset = len(history)
        rx, rloss, rhist, used = _optimise(
            rung, loss_fn, x, min(chunk, budget), threat.step_rule, threat.step_size, done=lambda bl: bl <= 0,
            on_step=(lambda j, v, o=done_steps: on_step(o + j, v)) if on_step else None)
        history.extend(rhist)
        budget, done_steps = budget - max(used, 1), done_steps + used
        certified = bool((rloss <= 0).any())
        log.append({"k": k_try, "start": offset, "steps": used, "certified": certified, "loss": float(rloss.min())})
        if certified:
            best_x, best_loss, k_ok = rx, rloss, k_try
            if k_try >= threat.k:
                break  # proved on the full box
            if k_fail is not None and k_fail / k_ok < 1.1:
                break  # bracketed to within 10%
            k_try = min(threat.k, 2 * k_try) if k_fail is None else math.sqrt(k_ok * k_fail)
        else:
            if k_ok == 0.0 and (len(log) == 1 or float(rloss.min()) < float(best_loss.min())):
                best_x, best_loss = rx, rloss  # nothing certified yet: keep the closest
            k_fail = k_try
            if k_ok == 0.0:
                k_try = k_try / 2  # not even the smallest box: shrink
            else:
                if k_fail / k_ok < 1.1:
                    break
                k_try = math.sqrt(k_ok * k_fail)
        # next rung starts from the best channels so far, plus jittered copies as the other restarts
        j = int(torch.argmin(best_loss))
        noise = torch.randn(best_x.shape, generator=gen) * (0.05 * math.sqrt(setup.budget / best_x.shape[-1]))
        x = setup.project(best_x[j : j + 1] + noise)
        x[0] = best_x[j]
    res = _finish(setup, "fggm" if threat.domain == "crown" else "fggm-ibp", best_x, best_loss, history,
                  done_steps, t0)
    res.ladder = log
    return res


def _finish(setup: AttackSetup, name: str, best_x: torch.Tensor, best_loss: torch.Tensor,
            history: list[float], steps_done: int, t0: float) -> AttackResult:
    """Pick the best restart, certify it in float64 (CROWN and IBP, the tighter), package it."""
    i = int(torch.argmin(best_loss))
    x = best_x[i : i + 1]
    view64 = _double(setup.victim.view)
    with torch.no_grad():
        cl, cu = setup.bound(x, "crown", torch.float64, view64)
        il, iu = setup.bound(x, "ibp", torch.float64, view64)
        lb, ub = float(torch.maximum(cl, il)), float(torch.minimum(cu, iu))
    cert = setup.certificate(lb, ub)
    cert["certified_k"] = _certified_k(setup, x, view64, lb, ub)
    M = setup.victim.env.num_antennas
    forged = {u: _to_complex(x[0, a], M) for a, u in enumerate(setup.threat.attackers)}
    env = {"num_antennas": M, "num_users": setup.victim.env.num_users, "max_scheduled": setup.victim.env.max_scheduled}
    return AttackResult(attack=name, threat=setup.threat, forged=forged, certificate=cert, budget=setup.budget,
                        env=env, scheduler=setup.victim.source, steps_done=steps_done,
                        wall_s=time.perf_counter() - t0, history=history)


def _certified_k(setup: AttackSetup, x: torch.Tensor, view64: nn.Sequential, lb: float, ub: float,
                 iters: int = 12) -> float:
    """Largest k' <= k (bisection, float64 CROWN) at which these forged channels are proved.

    0 when not even the point at the normaliser mean is inside a victim-free run.
    """
    from dataclasses import replace

    if setup.certificate(lb, ub)["proved"]:
        return setup.threat.k

    def proved(k: float) -> bool:
        sub = AttackSetup.build(setup.victim, replace(setup.threat, k=k))
        with torch.no_grad():
            l, u = sub.bound(x, "crown", torch.float64, view64)
        return bool(sub.certificate(float(l), float(u))["proved"])

    lo, hi = 0.0, setup.threat.k
    if not proved(1e-6 * hi):
        return 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if proved(mid) else (lo, mid)
    return lo


def _double(view: nn.Sequential) -> nn.Sequential:
    import copy

    return copy.deepcopy(view).double()


def mean_point_pgd(victim: Victim, threat: ThreatModel) -> AttackResult:
    """Grey-box baseline: the same search on the single mean observation, no bounds.

    Maximises how deep the policy's action at the normaliser mean lies inside a victim-free run.

    Example:
        >>> mean_point_pgd(victim, ThreatModel()).attack   # doctest: +SKIP
        'mean-pgd'
    """
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    obs = setup.mean_observation().unsqueeze(0)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        mu = victim.view(setup.point(x, obs.expand(x.shape[0], -1)))
        return setup.point_margin(mu.double())

    x0 = _init(setup, threat.restarts, threat.seed)
    best_x, best_loss, history, steps_done = _optimise(setup, loss_fn, x0, threat.steps, threat.step_rule,
                                                       threat.step_size)
    return _finish(setup, "mean-pgd", best_x, best_loss, history, steps_done, t0)


def random_forged(victim: Victim, threat: ThreatModel, power: dict[int, float] | None = None) -> AttackResult:
    """Baseline: random forged channels (CN(0, I) directions) at the given per-attacker power
    (default: the full budget).

    Example:
        >>> random_forged(victim, ThreatModel()).attack   # doctest: +SKIP
        'random'
    """
    t0 = time.perf_counter()
    setup = AttackSetup.build(victim, threat)
    gen = torch.Generator().manual_seed(threat.seed + 7919)
    A, D = setup.mean_forged.shape
    x = torch.randn(1, A, D, generator=gen)
    p = torch.tensor([[(power or {}).get(u, setup.budget)] for u in threat.attackers], dtype=torch.float32)
    x = x / x.norm(dim=-1, keepdim=True) * p.sqrt().unsqueeze(0)
    with torch.no_grad():
        loss = setup.run_costs(*[b.double() for b in setup.bound(x)]).min(-1).values
    return _finish(setup, "random", x, loss, [float(loss)], 0, t0)
