"""Streaming statistics, the power-law fit, Mahalanobis distances, the stats report and ``cloudjax stats``."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloudjax._progress import Progress
from cloudjax.cli import main
from cloudjax.data.patches import patches
from cloudjax.noise import power_law_noise, power_law_spectrum
from cloudjax.spectral import irfft_real, rfft_real, wavenumbers
from cloudjax.stats import (
    DatasetStats,
    StatsAccumulator,
    dataset_stats,
    fit_power_law,
    fit_power_law_spectrum,
    mahalanobis_between,
    mahalanobis_distance,
    mahalanobis_table,
    mahalanobis_to_center,
    mahalanobis_weight,
    spectral_window,
)

KEY = jax.random.key(0)


# ---------------------------------------------------------------- power-law fit


@pytest.mark.parametrize(("delta", "tol"), [(0.5, 0.05), (1.0, 0.05), (1.5, 0.05), (2.0, 0.1), (2.5, 0.1)])
def test_fit_recovers_delta_of_aperiodic_noise(delta, tol):
    x = power_law_noise(jax.random.key(1), (256, 32, 32, 1), delta)  # pad=3: aperiodic crops
    fit = fit_power_law(x)
    assert abs(fit.delta - delta) < tol
    assert fit.r_value < -0.9


@pytest.mark.parametrize("delta", [1.0, 2.0])
def test_fit_recovers_delta_of_periodic_noise(delta):
    fit = fit_power_law(power_law_noise(jax.random.key(2), (256, 32, 32, 1), delta, pad=1))
    assert abs(fit.delta - delta) < 0.05


def test_plain_fit_is_biased_on_crops_and_the_window_fixes_it():
    x = power_law_noise(jax.random.key(3), (256, 32, 32, 1), 2.0)
    assert fit_power_law(x, window=None).delta < 1.85  # leakage from the aperiodic edges
    assert abs(fit_power_law(x).delta - 2.0) < 0.1


def test_radial_fit_and_plain_fields():
    x = power_law_noise(jax.random.key(4), (256, 32, 32), 1.5, axes=(-2, -1))
    assert abs(fit_power_law(x, axes=(-2, -1), method="radial").delta - 1.5) < 0.05


def test_fit_of_an_exact_power_law_spectrum():
    S = power_law_spectrum(24, 32, 1.7)  # c·|k|^(−3.4) off DC
    fit = fit_power_law_spectrum(S, mask_cross=0)
    assert abs(fit.delta - 1.7) < 1e-9 and abs(fit.r_value + 1) < 1e-9
    off_dc = fit.k > 0
    np.testing.assert_allclose(fit.predict(fit.k[off_dc]), S[off_dc], rtol=1e-9)
    assert fit.mask.sum() == 24 * 32 - 1


def test_cross_mask():
    fit = fit_power_law_spectrum(power_law_spectrum(32, 32, 1.0), mask_cross=4)
    fy = np.abs(np.fft.fftfreq(32) * 32)
    assert fit.mask.sum() == np.sum(fy >= 4) ** 2
    assert not fit.mask[0, 0] and not fit.mask[3, 10] and fit.mask[4, 4] and fit.mask[28, 5]


def test_window_keeps_white_noise_power():
    w = spectral_window(12, 20, "hann")
    assert abs(np.mean(w**2) - 1) < 1e-6 and w.min() > 0
    stats = dataset_stats([jax.random.normal(KEY, (2000, 12, 20, 1))])
    assert abs(stats.fourier_variance.mean() - 1) < 0.02


# ---------------------------------------------------------------- streaming statistics


def test_streaming_equals_whole_array():
    x = patches(100, 16, channels=3, normalize=None) * 3.0 + 5.0  # large mean: tests the shift
    stats = dataset_stats([x[:7], x[7:40], x[40:]])
    mu = x.mean(0, dtype=np.float64)
    np.testing.assert_allclose(stats.mean, mu, rtol=1e-6)
    np.testing.assert_allclose(stats.std, x.std(0, dtype=np.float64), rtol=1e-4, atol=1e-6)
    centred = (x - mu).reshape(-1, 3)
    np.testing.assert_allclose(stats.channel_cov, centred.T @ centred / len(centred), rtol=1e-4)
    w = spectral_window(16, 16, "hann")[:, :, None]
    X = np.asarray(rfft_real(((x - mu) * w).astype(np.float32)), np.float64)
    np.testing.assert_allclose(stats.fourier_variance, (X**2).mean(0), rtol=1e-3, atol=1e-6)
    assert stats.count == 100 and stats.image_shape == (16, 16, 3)


def test_stats_json_round_trip():
    stats = dataset_stats([np.random.default_rng(0).normal(size=(10, 8, 8, 2))], window=None)
    back = DatasetStats.from_json(stats.to_json())
    assert back.count == 10 and back.window is None
    for name in ("mean", "std", "channel_cov", "fourier_variance"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))


# ---------------------------------------------------------------- Mahalanobis distances


def test_distance_zero_symmetric_and_per_example():
    x = jax.random.normal(jax.random.key(5), (4, 8, 8, 2))
    y = jax.random.normal(jax.random.key(6), (4, 8, 8, 2))
    d = mahalanobis_distance(x, y, 1.5)
    assert d.shape == (4,) and np.all(np.asarray(d) > 0)
    np.testing.assert_allclose(mahalanobis_distance(y, x, 1.5), d, rtol=1e-6)
    np.testing.assert_allclose(mahalanobis_distance(x, x, 1.5), 0.0, atol=1e-6)


def test_distance_under_jit_vmap_and_grad():
    x = jax.random.normal(jax.random.key(11), (3, 8, 8, 2))
    y = jax.random.normal(jax.random.key(12), (3, 8, 8, 2))
    d = mahalanobis_distance(x, y, 1.5)
    one = lambda a, b: mahalanobis_distance(a, b, 1.5)
    np.testing.assert_allclose(jax.jit(jax.vmap(one))(x, y), d, rtol=1e-5)
    # ∇_x d² = 2 Πᵀ(w Π(x − y)), and Πᵀ = Π⁻¹ = irfft_real because Π is orthonormal
    grad = jax.grad(lambda a: jnp.sum(mahalanobis_distance(a, y, 1.5) ** 2))(x)
    w = mahalanobis_weight(8, 8, 1.5)[:, :, None]
    np.testing.assert_allclose(grad, 2 * irfft_real(w * rfft_real(x - y)), rtol=1e-4, atol=1e-5)


def test_distance_of_one_mode_scales_as_k_to_the_delta():
    H, W = 16, 12
    k = wavenumbers(H, W)
    for i, j in [(3, 5), (0, 6), (8, 1)]:
        X = np.zeros((H, W), np.float32)
        X[i, j] = 2.5
        x = irfft_real(X, axes=(-2, -1))
        for delta in (0.0, 0.7, 1.5):
            d = mahalanobis_distance(x, 0.0, delta, axes=(-2, -1))
            np.testing.assert_allclose(d, 2.5 * k[i, j] ** delta, rtol=1e-5)


def test_white_noise_distance_matches_the_analytic_expectation():
    """Two independent white images: E d² = 2 C Σ_{k≠0} |k|^{2Δ}."""
    H, W, C, delta = 16, 16, 2, 1.5
    kx, ky = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (3000, H, W, C))
    y = jax.random.normal(ky, (3000, H, W, C))
    d2 = np.asarray(mahalanobis_distance(x, y, delta)) ** 2
    expected = 2 * C * np.sum(wavenumbers(H, W).astype(np.float64) ** (2 * delta))
    assert abs(d2.mean() / expected - 1) < 0.02


def test_set_distances_match_brute_force():
    xs = jax.random.normal(jax.random.key(8), (5, 8, 8, 1))
    ys = jax.random.normal(jax.random.key(9), (3, 8, 8, 1))
    cross = mahalanobis_distance(xs[:, None], ys[None], 1.2)  # (5, 3), from the differences directly
    within = np.asarray(mahalanobis_distance(xs[:, None], xs[None], 1.2))[~np.eye(5, dtype=bool)]
    assert cross.shape == (5, 3) and within.size == 20
    np.testing.assert_allclose(mahalanobis_between(xs, ys, 1.2), cross.mean(), rtol=1e-4)
    np.testing.assert_allclose(mahalanobis_between(xs, None, 1.2), within.mean(), rtol=1e-4)
    np.testing.assert_allclose(mahalanobis_to_center(xs, 1.2), mahalanobis_distance(xs, 0.0, 1.2).mean(), rtol=1e-6)


@pytest.mark.parametrize("source", ["power_law", "patches"])
def test_cloud_noise_is_closer_to_the_data_than_white_noise(source):
    if source == "power_law":
        data, delta = power_law_noise(jax.random.key(10), (256, 32, 32, 1), 1.4), 1.4
    else:
        data = patches(512, 32)
        delta = fit_power_law(data).delta
    table = mahalanobis_table(data, delta, KEY)
    assert table["cloud-images"] < table["white-images"] / 2
    assert table["cloud"] < table["white"] / 2
    if source == "power_law":  # the data is cloud noise: the two sets are alike
        assert abs(table["cloud-images"] / table["cloud-cloud"] - 1) < 0.05


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: fit_power_law(np.zeros((1, 8, 8, 1))), "images"),
        (lambda: fit_power_law(np.zeros((4, 8, 8, 1)), window="hamming"), "window"),
        (lambda: fit_power_law(np.zeros((4, 8, 8, 1)), axes=(-3, -1)), "axes"),
        (lambda: fit_power_law_spectrum(np.ones((8, 8)), method="bins"), "method"),
        (lambda: fit_power_law_spectrum(np.ones((8, 8)), mask_cross=-1), "mask_cross"),
        (lambda: fit_power_law_spectrum(np.ones((8, 8)), mask_cross=4), "mask_cross"),
        (lambda: fit_power_law_spectrum(np.ones(8)), "variance"),
        (lambda: mahalanobis_distance(np.ones((2, 8, 8, 1)), 0.0, -1.0), "delta"),
        (lambda: mahalanobis_between(np.ones((1, 8, 8, 1)), None, 1.0), "xs"),
        (lambda: mahalanobis_between(np.ones((2, 8, 8, 1)), np.ones((2, 4, 4, 1)), 1.0), "ys"),
        (lambda: StatsAccumulator().update(np.ones((8, 8, 1))), "batch"),
    ],
)
def test_bad_input_raises_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_accumulator_rejects_a_changed_image_shape():
    acc = StatsAccumulator()
    acc.update(np.ones((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.ones((2, 8, 6, 1)))


# ---------------------------------------------------------------- report, CLI, progress


def test_cli_stats_end_to_end(tmp_path, capsys):
    out = tmp_path / "stats"
    argv = ["stats", "--data", "patches:300", "--num", "200", "--image-size", "16", "--batch-size", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "stats.json").read_text())
    assert report["count"] == 200 and report["image_shape"] == [16, 16, 1]
    assert 1.0 < report["delta"] < 2.0 and report["r_value"] < -0.9
    table = report["mahalanobis"]
    assert table["cloud-images"] < table["white-images"]
    assert DatasetStats.from_dict(report["dataset"]).count == 200
    for png in ("fit.png", "noise.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Δ =" in capsys.readouterr().out


def test_cli_stats_bad_data_is_one_line(tmp_path, capsys):
    assert main(["stats", "--data", "no_such_data", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_data" in err
    assert not (tmp_path / "x").exists()


def test_progress_prints_one_final_line_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(10, "stats", stream=stream) as bar:
        for _ in range(5):
            bar(2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "10/10" in lines[0] and "/s" in lines[0]
