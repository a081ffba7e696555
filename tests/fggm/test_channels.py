"""Channel models: shapes, seeding, powers, correlations, traces."""

from __future__ import annotations

import numpy as np
import pytest

from fggm.channels import ChannelGenerator, exponential_correlation, normalize_columns, one_ring_correlation
from fggm.config import ChannelConfig, ConfigError


@pytest.mark.parametrize("model", ["rayleigh", "correlated", "one-ring"])
def test_shapes_and_seeding(model: str) -> None:
    gen = ChannelGenerator(ChannelConfig(model=model, snr_db_range=(0, 20)), 8, 5)
    a = gen.episode(np.random.default_rng(7), 12)
    b = gen.episode(np.random.default_rng(7), 12)
    c = gen.episode(np.random.default_rng(8), 12)
    assert a.shape == (12, 8, 5) and a.dtype == np.complex128
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("model", ["rayleigh", "correlated", "one-ring"])
def test_average_power_equals_user_snr(model: str) -> None:
    gen = ChannelGenerator(ChannelConfig(model=model, snr_db_range=(10, 10)), 16, 4)
    H = gen.episode(np.random.default_rng(0), 3000)
    power = np.mean(np.abs(H) ** 2, axis=(0, 1))
    np.testing.assert_allclose(power, 10.0, rtol=0.08)


def test_snr_range_spreads_users_within_bounds() -> None:
    gen = ChannelGenerator(ChannelConfig(snr_db_range=(0, 20)), 32, 16)
    snr_db = gen.user_snr_db(np.random.default_rng(3))
    assert np.all((snr_db >= 0) & (snr_db <= 20)) and snr_db.std() > 3


def test_exponential_correlation_is_measured() -> None:
    rho = 0.7
    gen = ChannelGenerator(ChannelConfig(model="correlated", correlation=rho, snr_db_range=(0, 0)), 6, 1)
    H = gen.episode(np.random.default_rng(1), 20000)[:, :, 0]
    emp = np.mean(H[:, 2] * np.conj(H[:, 3])).real
    emp2 = np.mean(H[:, 1] * np.conj(H[:, 3])).real
    assert abs(emp - rho) < 0.03 and abs(emp2 - rho**2) < 0.03
    np.testing.assert_allclose(exponential_correlation(3, 0.5), [[1, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 1]])


def test_one_ring_correlation_properties() -> None:
    R = one_ring_correlation(8, 0.4, np.deg2rad(5))
    np.testing.assert_allclose(R, R.conj().T, atol=1e-12)
    assert np.linalg.eigvalsh(R).min() > -1e-9
    np.testing.assert_allclose(np.diag(R).real, 1.0)
    # a narrow angular spread concentrates the energy in few eigen-directions
    w = np.sort(np.linalg.eigvalsh(R))[::-1]
    assert w[:2].sum() / w.sum() > 0.9


def test_time_correlation() -> None:
    gen = ChannelGenerator(ChannelConfig(time_correlation=0.9, snr_db_range=(0, 0)), 4, 2)
    H = gen.episode(np.random.default_rng(0), 5000)
    emp = np.mean(H[1:] * np.conj(H[:-1])).real
    assert abs(emp - 0.9) < 0.05


def test_normalize_columns() -> None:
    gen = ChannelGenerator(ChannelConfig(normalize_columns=True, snr_db_range=(3, 3)), 8, 3)
    H = gen.episode(np.random.default_rng(0), 5)
    np.testing.assert_allclose(np.sum(np.abs(H) ** 2, axis=1), 8 * 10 ** 0.3)
    X = normalize_columns(np.ones((2, 4, 3), dtype=complex) * 2)
    np.testing.assert_allclose(np.abs(X), 1.0)


def test_umi_trace_file_errors_and_windows(tmp_path) -> None:
    with pytest.raises(ConfigError, match="trace_file"):
        ChannelConfig(model="umi")
    with pytest.raises(ConfigError, match="not found"):
        ChannelGenerator(ChannelConfig(model="umi", trace_file=str(tmp_path / "none.npz")), 4, 2)
    bad = tmp_path / "bad.npz"
    np.savez(bad, H=np.zeros((10, 3, 2), dtype=complex))
    with pytest.raises(ConfigError, match="shape"):
        ChannelGenerator(ChannelConfig(model="umi", trace_file=str(bad)), 4, 2)
    good = tmp_path / "good.npz"
    trace = np.arange(50 * 4 * 2).reshape(50, 4, 2).astype(complex)
    np.savez(good, H=trace)
    gen = ChannelGenerator(ChannelConfig(model="umi", trace_file=str(good)), 4, 2)
    H = gen.episode(np.random.default_rng(0), 20)
    assert H.shape == (20, 4, 2)
    # a window of consecutive snapshots (users moving), users possibly permuted
    d = np.diff(H[:, 0, :].real, axis=0)
    assert np.all((d == 8) | (d == 8 - 50 * 8))


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"snr_db_range": (10, 0)}, "negative range"),
        ({"model": "nope"}, "unknown channel model"),
        ({"correlation": 1.0}, "correlation"),
    ],
)
def test_bad_channel_configs(kwargs, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        ChannelConfig(**kwargs)


def test_umi_traces_with_quadriga(tmp_path) -> None:
    pytest.importorskip("quadriga_lib")
    from fggm.channels import make_umi_traces
    from fggm.env import MuMimoEnv
    from fggm.config import EnvConfig

    path = make_umi_traces(tmp_path / "umi.npz", num_antennas=4, num_users=3, num_snapshots=40, seed=1)
    data = np.load(path)
    H = data["H"]
    assert H.shape == (40, 4, 3) and np.all(np.isfinite(H))
    np.testing.assert_allclose(10 * np.log10(np.mean(np.abs(H) ** 2, axis=(0, 1))), data["snr_db"], atol=1e-6)
    # users walk 1 mm per TTI: consecutive snapshots are strongly correlated, but not identical
    h0, h1 = H[0, :, 0], H[1, :, 0]
    corr = abs(np.vdot(h0, h1)) / (np.linalg.norm(h0) * np.linalg.norm(h1))
    assert 0.95 < corr and not np.allclose(h0, h1)
    assert np.all(np.diff(data["positions"][:, 0, :], axis=0) != 0) or np.all(np.diff(data["positions"][:, 1, :], axis=0) != 0)
    env = MuMimoEnv(EnvConfig(num_antennas=4, num_users=3, max_scheduled=2, episode_length=20,
                              channel=ChannelConfig(model="umi", trace_file=str(path))))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2 * 3 + 2 * 4 * 3,)


def test_umi_without_the_extra_names_it(monkeypatch, tmp_path) -> None:
    import sys

    from fggm.channels import make_umi_traces

    monkeypatch.setitem(sys.modules, "quadriga_lib", None)
    with pytest.raises(ConfigError, match="extra 'quadriga'"):
        make_umi_traces(tmp_path / "x.npz", 4, 2, 5)
