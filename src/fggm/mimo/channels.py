"""Seeded uplink channel generation, batched over TTIs.

A channel matrix ``H`` has shape ``[T, M, K]`` (TTIs, BS antennas, users), complex128, and already
includes each user's large-scale gain relative to a unit noise power: ``E|H[t, m, k]|^2 = snr_k``
(linear), with ``snr_k`` drawn once per episode from ``snr_db_range`` (the users' path loss).
Small-scale models: i.i.d. Rayleigh, exponential correlation at the BS array, one-ring (angular
spread around a per-user angle of arrival), and 3GPP UMi traces read from an ``.npz`` (see
:func:`make_umi_traces`, which needs the optional ``quadriga`` extra). Consecutive TTIs may be correlated
(Gauss-Markov ``time_correlation``).

Example:
    >>> import numpy as np
    >>> gen = ChannelGenerator(ChannelConfig(), num_antennas=4, num_users=3)
    >>> gen.episode(np.random.default_rng(0), 10).shape
    (10, 4, 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fggm.mimo.config import ChannelConfig, ConfigError


def crandn(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Circularly-symmetric complex Gaussian CN(0, 1) samples.

    Example:
        >>> crandn(np.random.default_rng(0), (2, 3)).dtype
        dtype('complex128')
    """
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)


def exponential_correlation(num_antennas: int, rho: float) -> np.ndarray:
    """Exponential correlation matrix ``R[m, n] = rho^|m - n|`` of a uniform linear array.

    Example:
        >>> exponential_correlation(3, 0.5)[0]
        array([1.  , 0.5 , 0.25])
    """
    idx = np.arange(num_antennas)
    return rho ** np.abs(idx[:, None] - idx[None, :]).astype(float)


def one_ring_correlation(num_antennas: int, angle: float, spread: float, spacing: float = 0.5, points: int = 64) -> np.ndarray:
    """One-ring correlation of a ULA: average of steering outer products over ``angle +- spread`` (rad).

    Example:
        >>> R = one_ring_correlation(4, 0.3, 0.1)
        >>> bool(np.allclose(np.diag(R), 1.0))
        True
    """
    thetas = angle + np.linspace(-spread, spread, points)
    m = np.arange(num_antennas)
    a = np.exp(-2j * np.pi * spacing * m[None, :] * np.sin(thetas)[:, None])  # [P, M]
    return (a.T @ a.conj()) / points


def _psd_sqrt(R: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(R)
    return (V * np.sqrt(np.clip(w, 0.0, None))[..., None, :])


def normalize_columns(H: np.ndarray) -> np.ndarray:
    """Scale every user's vector (column) so that its squared norm equals M (as SMART does).

    Example:
        >>> H = normalize_columns(crandn(np.random.default_rng(0), (2, 4, 3)))
        >>> bool(np.allclose(np.sum(np.abs(H) ** 2, axis=-2), 4.0))
        True
    """
    M = H.shape[-2]
    norms = np.linalg.norm(H, axis=-2, keepdims=True)
    return H * (np.sqrt(M) / np.maximum(norms, 1e-12))


def _gauss_markov(rng: np.random.Generator, T: int, M: int, K: int, rho: float) -> np.ndarray:
    W = crandn(rng, (T, M, K))
    if rho <= 0.0 or T == 1:
        return W
    out = np.empty_like(W)
    out[0] = W[0]
    innov = np.sqrt(1.0 - rho * rho)
    for t in range(1, T):
        out[t] = rho * out[t - 1] + innov * W[t]
    return out


class ChannelGenerator:
    """Draw one episode of true channels ``[T, M, K]`` for a :class:`ChannelConfig`.

    Per episode: the users' SNRs (uniform in dB in ``snr_db_range``) and, for ``one-ring``, their
    angles of arrival (uniform in [-60, 60] degrees). Per TTI: small-scale fading.

    Example:
        >>> gen = ChannelGenerator(ChannelConfig(model="one-ring"), 8, 4)
        >>> H = gen.episode(np.random.default_rng(1), 5)
        >>> H.shape, H.dtype
        ((5, 8, 4), dtype('complex128'))
    """

    def __init__(self, config: ChannelConfig, num_antennas: int, num_users: int) -> None:
        self.config = config
        self.M = num_antennas
        self.K = num_users
        self._trace: np.ndarray | None = None
        self._trace_snr: np.ndarray | None = None
        if config.model == "correlated":
            self._sqrt_R = _psd_sqrt(exponential_correlation(num_antennas, config.correlation))
        if config.model == "umi":
            self._load_trace(Path(str(config.trace_file)))

    def _load_trace(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"UMi trace file not found: {path} (make one with `fggm.channels.make_umi_traces`, extra 'quadriga')")
        with np.load(path) as data:
            H = np.asarray(data["H"])
        if H.ndim != 3 or H.shape[1] != self.M or H.shape[2] != self.K:
            raise ConfigError(f"UMi trace {path} has shape {tuple(H.shape)}, expected [T, {self.M}, {self.K}]")
        self._trace = H.astype(np.complex128)

    def user_snr_db(self, rng: np.random.Generator) -> np.ndarray:
        """Per-user SNR (dB) for one episode.

        Example:
            >>> g = ChannelGenerator(ChannelConfig(snr_db_range=(0, 20)), 4, 3)
            >>> bool(np.all((g.user_snr_db(np.random.default_rng(0)) >= 0)))
            True
        """
        lo, hi = self.config.snr_db_range
        return rng.uniform(lo, hi, size=self.K) if hi > lo else np.full(self.K, lo)

    def episode(self, rng: np.random.Generator, num_ttis: int) -> np.ndarray:
        """True channels of one episode, shape ``[num_ttis, M, K]`` (gain relative to unit noise).

        Example:
            >>> g = ChannelGenerator(ChannelConfig(snr_db_range=(10, 10)), 64, 2)
            >>> H = g.episode(np.random.default_rng(0), 200)
            >>> 8.0 < float(np.mean(np.abs(H) ** 2)) < 12.0
            True
        """
        cfg, T, M, K = self.config, num_ttis, self.M, self.K
        if cfg.model == "umi":
            return self._trace_window(rng, T)
        snr_lin = 10.0 ** (self.user_snr_db(rng) / 10.0)
        W = _gauss_markov(rng, T, M, K, cfg.time_correlation)
        if cfg.model == "rayleigh":
            H = W
        elif cfg.model == "correlated":
            H = np.einsum("mn,tnk->tmk", self._sqrt_R, W)
        else:  # one-ring
            angles = rng.uniform(-np.pi / 3, np.pi / 3, size=K)
            spread = np.deg2rad(cfg.angular_spread_deg)
            L = np.stack([_psd_sqrt(one_ring_correlation(M, a, spread, cfg.antenna_spacing)) for a in angles])  # [K, M, M]
            H = np.einsum("kmn,tnk->tmk", L, W)
        if cfg.normalize_columns:
            H = normalize_columns(H)
        return H * np.sqrt(snr_lin)[None, None, :]

    def _trace_window(self, rng: np.random.Generator, T: int) -> np.ndarray:
        assert self._trace is not None
        total = self._trace.shape[0]
        start = int(rng.integers(0, max(total - T, 0) + 1))
        idx = (start + np.arange(T)) % total
        # a random permutation of users makes every episode a different drop of the same trace
        perm = rng.permutation(self.K)
        H = self._trace[idx][:, :, perm]
        if self.config.normalize_columns:
            H = normalize_columns(H) * np.sqrt(np.mean(np.abs(H) ** 2, axis=(0, 1), keepdims=True))
        return H


# ---------------------------------------------------------------------------------------------
# 3GPP UMi traces (optional extra ``quadriga``: quadriga-lib computes the array responses)
# ---------------------------------------------------------------------------------------------

#: ray offsets inside a cluster (3GPP TR 38.901 Table 7.5-3), in units of the cluster spread
_RAY_OFFSETS = np.array([0.0447, 0.1413, 0.2492, 0.3715, 0.5129, 0.6797, 0.8844, 1.1481, 1.5195, 2.1551])
_RAY_OFFSETS = np.concatenate([_RAY_OFFSETS, -_RAY_OFFSETS])


def _require_quadriga() -> Any:
    try:
        import quadriga_lib  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "3GPP UMi traces need quadriga-lib, the optional extra 'quadriga': "
            "pip install 'safety-glasses-fggm[quadriga]'"
        ) from None
    return quadriga_lib


def umi_los_probability(d2d: np.ndarray) -> np.ndarray:
    """LOS probability of 3GPP TR 38.901 UMi street canyon.

    Example:
        >>> umi_los_probability(np.array([10.0, 18.0, 100.0])).round(3).tolist()
        [1.0, 1.0, 0.231]
    """
    d = np.maximum(np.asarray(d2d, dtype=float), 1e-9)
    return np.where(d <= 18.0, 1.0, 18.0 / d + np.exp(-d / 36.0) * (1.0 - 18.0 / d))


def umi_path_loss_db(d3d: np.ndarray, carrier_hz: float, los: np.ndarray, h_ut: float = 1.5) -> np.ndarray:
    """Path loss (dB) of 3GPP TR 38.901 UMi street canyon (LOS, or NLOS floored by LOS).

    Example:
        >>> round(float(umi_path_loss_db(np.array([100.0]), 3.5e9, np.array([True]))[0]), 1)
        85.3
    """
    fc = carrier_hz / 1e9
    d = np.asarray(d3d, dtype=float)
    pl_los = 32.4 + 21.0 * np.log10(d) + 20.0 * np.log10(fc)
    pl_nlos = 35.3 * np.log10(d) + 22.4 + 21.3 * np.log10(fc) - 0.3 * (h_ut - 1.5)
    return np.where(los, pl_los, np.maximum(pl_los, pl_nlos))


def make_umi_traces(
    path: str | Path,
    num_antennas: int = 16,
    num_users: int = 16,
    num_snapshots: int = 2000,
    seed: int = 0,
    carrier_hz: float = 3.5e9,
    snapshot_s: float = 1e-3,
    speed_mps: float = 1.0,
    distance_range: tuple[float, float] = (10.0, 100.0),
    bandwidth_hz: float = 20e6,
    noise_figure_db: float = 5.0,
    max_power_dbm: float = 23.0,
    p0_dbm: float = -60.0,
    pc_alpha: float = 0.8,
) -> Path:
    """Write an ``.npz`` of narrowband uplink channels ``H [T, M, K]`` in a 3GPP UMi street canyon.

    Users are dropped in a 120-degree sector (``distance_range`` metres from a 10 m high BS with a
    half-wavelength ULA), then walk in straight lines at ``speed_mps`` (one snapshot per TTI of
    ``snapshot_s``). Per user: LOS state, path loss, log-normal shadowing and the delay, angular
    and K-factor statistics of TR 38.901 UMi (clusters of 20 rays around per-cluster angles at the BS,
    scatterers fixed in space, so the fading is spatially consistent as users move). quadriga-lib
    computes each path's spherical-wave response on the array. Gains are relative to the noise power
    (``-174 dBm/Hz + 10 log10(bandwidth) + NF``) with open-loop fractional power control
    ``P = min(Pmax, P0 + alpha * PL)``.

    Example:
        >>> # make_umi_traces("data/channels/umi16.npz", 16, 16, 2000, seed=0)
    """
    q = _require_quadriga()
    rng = np.random.default_rng(seed)
    M, K, T = num_antennas, num_users, num_snapshots
    lam = 299792458.0 / carrier_hz
    bs_pos = np.array([0.0, 0.0, 10.0])
    bs_ant = q.arrayant.generate("3GPP", 10.0, carrier_hz, M=1, N=M, pol=1, spacing=0.5)
    ut_ant = q.arrayant.generate("omni", 10.0)
    noise_dbm = -174.0 + 10.0 * np.log10(bandwidth_hz) + noise_figure_db
    fc_ghz = carrier_hz / 1e9
    H = np.zeros((T, M, K), dtype=np.complex128)
    info = {"snr_db": np.zeros(K), "los": np.zeros(K, dtype=bool), "distance": np.zeros(K)}
    positions = np.zeros((T, 3, K))
    for k in range(K):
        d0 = rng.uniform(*distance_range)
        az = rng.uniform(-np.pi / 3, np.pi / 3)
        start = np.array([d0 * np.cos(az), d0 * np.sin(az), 1.5])
        heading = rng.uniform(0, 2 * np.pi)
        step = speed_mps * snapshot_s * np.array([np.cos(heading), np.sin(heading), 0.0])
        traj = start[None, :] + np.arange(T)[:, None] * step[None, :]
        positions[:, :, k] = traj
        los = bool(rng.uniform() < umi_los_probability(np.array([d0]))[0])
        d3d = float(np.linalg.norm(start - bs_pos))
        pl = float(umi_path_loss_db(np.array([d3d]), carrier_hz, np.array([los]))[0]) + rng.normal(0, 4.0 if los else 7.82)
        p_tx = min(max_power_dbm, p0_dbm + pc_alpha * pl)
        snr_db = p_tx - pl - noise_dbm
        info["snr_db"][k], info["los"][k], info["distance"][k] = snr_db, los, d0
        # large-scale parameters of TR 38.901 Table 7.5-6 (UMi street canyon)
        n_clusters = 12 if los else 19
        lg_ds = rng.normal(-0.24 * np.log10(1 + fc_ghz) - (7.14 if los else 6.83), 0.38 if los else 0.28)
        lg_asd = rng.normal(-0.05 * np.log10(1 + fc_ghz) + 1.21, 0.41) if los else rng.normal(-0.23 * np.log10(1 + fc_ghz) + 1.53, 0.33)
        ds, asd = 10.0**lg_ds, min(10.0**lg_asd, 104.0)
        r_tau = 3.0 if los else 2.1
        tau = np.sort(-r_tau * ds * np.log(rng.uniform(size=n_clusters)))
        tau -= tau[0]
        pw = np.exp(-tau * (r_tau - 1) / (r_tau * ds)) * 10 ** (-rng.normal(0, 3.0, n_clusters) / 10)
        pw /= pw.sum()
        k_factor = 10 ** (rng.normal(9.0, 5.0) / 10) if los else 0.0
        los_az = np.arctan2(start[1], start[0])
        phi = 2 * (asd / 1.4) * np.sqrt(-np.log(np.maximum(pw / pw.max(), 1e-9))) / 1.273
        phi = phi * rng.choice([-1.0, 1.0], n_clusters) + rng.normal(0, asd / 7, n_clusters)
        phi = los_az + np.deg2rad(phi - (phi[0] if los else 0.0))
        c_asd = np.deg2rad(3.0)
        ray_az = (phi[:, None] + c_asd * _RAY_OFFSETS[None, :]).ravel()  # [n_clusters * 20]
        ray_pw = np.repeat(pw / 20.0, 20) / (1.0 + k_factor)
        # single-bounce scatterers along each ray's direction seen from the BS, fixed in space
        r = rng.uniform(0.3, 1.2, ray_az.size) * d0
        scat = np.stack([r * np.cos(ray_az), r * np.sin(ray_az), rng.uniform(1.5, 15.0, ray_az.size)])
        gains, scat_pos = ray_pw, scat
        if los:
            mid = (start + bs_pos) / 2
            gains = np.concatenate([[k_factor / (1.0 + k_factor)], ray_pw])
            scat_pos = np.concatenate([mid[:, None], scat], axis=1)
        phases = np.exp(1j * rng.uniform(0, 2 * np.pi, gains.size))
        if los:
            phases[0] = 1.0
        pol = np.zeros((8, gains.size))
        pol[0], pol[6] = 1.0, -1.0
        # quadriga-lib: per-path spherical-wave response of the BS array at the first position;
        # as the user walks, every path's length changes by the user-to-scatterer distance only
        # (scatterers are fixed), which turns into a per-path phase rotation (Doppler).
        def lengths(ut: np.ndarray) -> np.ndarray:
            d = np.linalg.norm(scat_pos - ut[:, None], axis=0) + np.linalg.norm(bs_pos[:, None] - scat_pos, axis=0)
            if los:
                d[0] = np.linalg.norm(bs_pos - ut)  # the direct path (its "scatterer" sits on the line)
            return d

        len0 = lengths(traj[0])
        re, im, _ = q.arrayant.get_channels_spherical(
            ut_ant, bs_ant, scat_pos, scat_pos, gains, len0, pol, traj[0], np.zeros(3), bs_pos, np.zeros(3), center_freq=carrier_hz
        )
        coeff = (np.asarray(re) + 1j * np.asarray(im))[:, 0, :] * phases[None, :]  # [M, P]
        dlen = np.stack([lengths(traj[t]) for t in range(T)]) - len0[None, :]  # [T, P]
        H[:, :, k] = np.exp(-2j * np.pi * dlen / lam) @ coeff.T
        # remove the element gain of the pattern so that E|h|^2 = 1 before applying the SNR
        H[:, :, k] *= np.sqrt(10 ** (snr_db / 10) / max(np.mean(np.abs(H[:, :, k]) ** 2), 1e-30))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, H=H, positions=positions, snr_db=info["snr_db"], los=info["los"], distance=info["distance"],
        carrier_hz=carrier_hz, snapshot_s=snapshot_s, speed_mps=speed_mps, seed=seed, wavelength=lam,
    )
    return out
