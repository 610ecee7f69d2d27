"""Metrics respond to what they claim to measure: blur, added noise, mean shifts, class structure."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax import metrics

N, SIZE = 256, 32
SWD = functools.partial(metrics.sliced_wasserstein, num_patches=4096, num_projections=128)


@pytest.fixture(scope="module")
def images():
    """Two independent sets from one stationary Gaussian image distribution with a natural-image spectrum."""
    x = cj.power_law_noise(jax.random.key(1), (N, SIZE, SIZE, 1), 1.2)
    y = cj.power_law_noise(jax.random.key(2), (N, SIZE, SIZE, 1), 1.2)
    return x, y


def blur(x, sigma):
    """Periodic Gaussian blur of (N, H, W, 1) images with std ``sigma`` pixels."""
    f = np.fft.fftfreq(x.shape[1])
    gain = np.exp(-2 * np.pi**2 * sigma**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(x[..., 0]) * gain))[..., None]


def add_noise(x, amplitude):
    return x + amplitude * jax.random.normal(jax.random.key(7), x.shape)


def test_laplacian_pyramid_reconstructs_the_image(images):
    x = images[0][:8]
    levels = metrics.laplacian_pyramid(x, min_resolution=8)
    assert [lv.shape[1] for lv in levels] == [32, 16, 8]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + metrics._upsample(rebuilt, band.shape[1:3])
    np.testing.assert_allclose(rebuilt, x, atol=1e-5)
    # the finest band is high-pass: it carries no image mean
    assert abs(float(levels[0].mean())) < 0.05 * float(x.std())


def test_swd_near_zero_for_one_distribution_and_grows_with_blur(images):
    x, y = images
    key = jax.random.key(0)
    swd = [SWD(x, blur(y, s), key) for s in (0.0, 0.5, 1.0, 2.0)]
    assert set(swd[0]) == {"32x32", "16x16", "8x8", "mean"}
    assert float(swd[0]["32x32"]) < 0.2 * float(swd[1]["32x32"])  # 4096 patches: sampling floor ≈ 0.03
    for level in ("32x32", "16x16", "mean"):
        values = [float(s[level]) for s in swd]
        assert values == sorted(values), (level, values)
    # blur reaches the coarse bands last: at sigma 0.5 the finest band has moved most
    assert float(swd[1]["32x32"]) > 3 * float(swd[1]["16x16"])


def test_swd_level_is_the_mean_one_dimensional_wasserstein_distance_over_projections(images):
    """Each level's SWD equals SciPy's 1-D Wasserstein-1 distance per projection, averaged over projections."""
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = images[0][:32], blur(images[1][:32], 1.0)
    kwargs = dict(patch_size=7, num_patches=512, num_projections=16, min_resolution=8)
    swd = metrics.sliced_wasserstein(x, y, jax.random.key(3), **kwargs)
    projections = metrics._swd_projections(x, y, jax.random.key(3), **kwargs)
    for level, (px, py) in projections.items():
        px, py = np.asarray(px, np.float64), np.asarray(py, np.float64)
        expected = np.mean([scipy_stats.wasserstein_distance(px[:, j], py[:, j]) for j in range(px.shape[1])])
        np.testing.assert_allclose(swd[level], expected, rtol=1e-5)
    assert swd["mean"] == pytest.approx(np.mean([swd[level] for level in projections]))


def test_swd_grows_with_added_noise(images):
    x, y = images
    key = jax.random.key(0)
    swd = [SWD(x, add_noise(y, a), key) for a in (0.0, 0.2, 0.5, 1.0)]
    for level in ("32x32", "mean"):
        values = [float(s[level]) for s in swd]
        assert values == sorted(values) and values[-1] > 10 * values[0], (level, values)


def test_swd_sees_a_gain_mismatch(images):
    """Both sets are normalised with the reference statistics, so a global gain is not normalised away."""
    x, y = images
    key = jax.random.key(0)
    assert float(SWD(x, 1.5 * y, key)["mean"]) > 5 * float(SWD(x, y, key)["mean"])


def test_spectral_distance_flags_blur_not_resampling(images):
    x, y = images
    same = float(metrics.spectral_distance(x, y))
    blurred = [float(metrics.spectral_distance(x, blur(y, s))) for s in (0.5, 1.0, 2.0)]
    assert same < 0.1
    assert blurred == sorted(blurred) and blurred[0] > 10 * same
    k, log_p = metrics.log_power_spectrum(blur(y, 1.0))
    _, log_p0 = metrics.log_power_spectrum(y)
    assert k[0] == 0 and log_p.shape == k.shape
    assert float(log_p0[-1] - log_p[-1]) > float(log_p0[2] - log_p[2]) + 1  # blur removes high |k| first


def test_frechet_distance_zero_for_one_gaussian_and_grows_with_mean_shift():
    rng = np.random.default_rng(0)
    fx, fy = rng.normal(size=(4000, 6)), rng.normal(size=(4000, 6))
    assert metrics.frechet_distance(fx, fy) < 0.02
    shifts = [0.25, 0.5, 1.0]
    d = [metrics.frechet_distance(fx, fy + s) for s in shifts]
    assert d == sorted(d)
    np.testing.assert_allclose(d, [6 * s**2 for s in shifts], rtol=0.1)  # ‖Δμ‖² = D s²


def test_frechet_distance_matches_closed_form_for_different_covariances():
    """For commuting covariances diag(a), diag(b): d² = Σ (√a − √b)² (+ mean term)."""
    rng = np.random.default_rng(1)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    fx = rng.normal(size=(50000, 3)) * np.sqrt(a)
    fy = rng.normal(size=(50000, 3)) * np.sqrt(b) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(fx, fy) == pytest.approx(expected, rel=0.05)


def test_flat_fourier_features_give_the_pixel_space_frechet_distance(images):
    x, y = images[0][:64, :16, :16], blur(images[1][:64, :16, :16], 1.0)
    pixel = metrics.frechet_distance(np.asarray(x).reshape(64, -1), np.asarray(y).reshape(64, -1))
    fourier = metrics.frechet_distance(
        metrics.fourier_features(x, radial=False), metrics.fourier_features(y, radial=False)
    )
    assert fourier == pytest.approx(pixel, rel=1e-3)
    radial = metrics.fourier_features(x)
    assert radial.shape[0] == 64 and radial.ndim == 2


def test_high_frequency_test_chance_for_one_distribution_and_one_for_blur(images):
    x, y = images
    key = jax.random.key(3)
    same = float(metrics.high_frequency_test(x, y, key))
    blurred = float(jax.jit(metrics.high_frequency_test)(x, blur(y, 1.0), key))
    assert abs(same - 0.5) < 0.1  # 512 held-out predictions: std of chance accuracy ≈ 0.022
    assert blurred > 0.95


def _stripes(rng, n, size=16):
    """Three classes: horizontal stripes, vertical stripes, a centred blob; random phase and noise."""
    labels = rng.integers(0, 3, n)
    yy, xx = np.mgrid[:size, :size] / size
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    freq = rng.uniform(2, 4, (n, 1, 1))
    horizontal = np.sin(2 * np.pi * freq * yy + phase)
    vertical = np.sin(2 * np.pi * freq * xx + phase)
    blob = 2 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * freq * 10) - 0.5
    images = np.choose(labels[:, None, None], [horizontal, vertical, blob])
    images = images + 0.5 * rng.normal(size=images.shape)
    return images[..., None].astype(np.float32), labels


def test_classifier_features_separate_classes_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train_x, train_y = _stripes(rng, 512)
    test_x, test_y = _stripes(rng, 300)
    model = metrics.train_classifier(train_x, train_y, steps=150, batch_size=64, width=8, features=16)
    assert float((np.argmax(model(test_x), axis=-1) == test_y).mean()) > 0.9
    feats = metrics.classifier_features(model, test_x, batch_size=128)
    assert feats.shape == (300, 16)
    centroids = np.stack([feats[test_y == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((feats[:, None] - centroids) ** 2).sum(-1), axis=1)
    assert float((nearest == test_y).mean()) > 0.9
    # a classifier Fréchet distance between classes dwarfs the one within a class
    a, b = feats[test_y == 0], feats[test_y == 1]
    half = len(a) // 2
    assert metrics.frechet_distance(a, b) > 10 * metrics.frechet_distance(a[:half], a[half:])
    path = tmp_path / "classifier.npz"
    metrics.save_classifier(model, path)
    loaded = metrics.load_classifier(path)
    assert loaded.config == model.config
    np.testing.assert_array_equal(
        metrics.classifier_features(loaded, test_x), metrics.classifier_features(model, test_x)
    )


def test_bad_inputs_raise_value_errors(images):
    x, y = images
    with pytest.raises(ValueError, match="image shape"):
        SWD(x, y[:, :16, :16], jax.random.key(0))
    with pytest.raises(ValueError, match="min_resolution"):
        SWD(x[:, :6, :6], y[:, :6, :6], jax.random.key(0))
    with pytest.raises(ValueError, match="feat_x"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="labels"):
        metrics.train_classifier(np.zeros((4, 8, 8, 1)), np.zeros(4), steps=1)
    with pytest.raises(ValueError, match="folds"):
        metrics.high_frequency_test(x[:3], y[:3], jax.random.key(0))
