"""Power-law noise: unit variance everywhere, aperiodic, exact Π variance, Gaussian closure, colour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj


def _draw(delta, pad, n=6000, H=16, W=12, seed=0):
    return np.asarray(cj.power_law_noise(jax.random.key(seed), (n, H, W, 1), delta, pad=pad), np.float64)[..., 0]


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, 2.5])
@pytest.mark.parametrize("pad", [1, 3])
def test_unit_variance_at_every_pixel_and_zero_mean(delta, pad):
    x = _draw(delta, pad)
    var = x.var(0)
    # 6000 draws: the sampling error of a variance is sqrt(2/6000) ≈ 0.018 per pixel.
    assert np.abs(var - 1).max() < 0.09, (var.min(), var.max())
    assert abs(var.mean() - 1) < 0.04
    edges = np.concatenate([var[0], var[-1], var[:, 0], var[:, -1]])
    assert abs(edges.mean() - var[4:-4, 4:-4].mean()) < 0.05  # edges as noisy as the centre
    assert np.abs(x.mean(0)).max() < 0.07  # per-pixel mean of 6000 unit-variance draws: σ ≈ 0.013


@pytest.mark.parametrize("delta,pad", [(1.0, 1), (1.5, 3), (2.5, 3), (1.5, 2)])
def test_fourier_variance_matches_samples(delta, pad):
    x = cj.power_law_noise(jax.random.key(1), (8000, 16, 12), delta, axes=(-2, -1), pad=pad)
    measured = np.asarray((cj.rfft_real(x, axes=(-2, -1)) ** 2).mean(0), np.float64)
    exact = cj.PowerLawNoise(delta, pad).fourier_variance(16, 12)
    assert exact.min() > 0 and abs(exact.mean() - 1) < 1e-5
    rel = measured / exact - 1
    assert np.median(np.abs(rel)) < 0.03 and np.abs(rel).max() < 0.1


def test_fourier_variance_is_the_power_law_for_the_periodic_field():
    for H, W in [(8, 8), (7, 9), (6, 5)]:
        np.testing.assert_allclose(
            cj.PowerLawNoise(1.5, pad=1).fourier_variance(H, W), cj.power_law_spectrum(H, W, 1.5), rtol=1e-5
        )
    k = cj.wavenumbers(8, 8)
    S = cj.power_law_spectrum(8, 8, 1.5)
    slope = np.polyfit(np.log(k[k > 0]), np.log(S[k > 0]), 1)[0]
    np.testing.assert_allclose(slope, -3.0, atol=1e-6)
    assert S[0, 0] > 0  # the mean (DC) mode is noised too


def test_no_toroidal_periodicity():
    """Opposite edges of the padded crop are far less alike than neighbours; in the periodic field they are alike."""

    def wrap_vs_neighbour(pad):
        x = _draw(1.5, pad, n=3000, H=16, W=16, seed=2)
        wrap = np.mean(x[:, 0, :] * x[:, -1, :])
        neighbour = np.mean(x[:, 7, :] * x[:, 8, :])
        return wrap, neighbour

    wrap, neighbour = wrap_vs_neighbour(pad=1)
    assert wrap > 0.8 * neighbour  # periodic: the edges touch
    wrap, neighbour = wrap_vs_neighbour(pad=3)
    assert wrap < 0.5 * neighbour


def test_cloud_plus_cloud_is_the_same_cloud():
    """a·ε₁ + b·ε₂ with a² + b² = 1 has exactly the spectrum of ε (the jump trick)."""
    k1, k2 = jax.random.split(jax.random.key(3))
    shape = (6000, 12, 12)
    e1 = cj.power_law_noise(k1, shape, 1.5, axes=(-2, -1))
    e2 = cj.power_law_noise(k2, shape, 1.5, axes=(-2, -1))
    mix = 0.6 * e1 + 0.8 * e2
    spec = lambda e: np.asarray((cj.rfft_real(e, axes=(-2, -1)) ** 2).mean(0))
    exact = cj.PowerLawNoise(1.5).fourier_variance(12, 12)
    assert np.median(np.abs(spec(mix) / exact - 1)) < 0.03
    assert np.median(np.abs(spec(mix) / spec(e1) - 1)) < 0.04


def test_deterministic_per_key_and_delta_zero_is_white():
    a = cj.power_law_noise(jax.random.key(4), (2, 8, 8, 1), 1.5)
    b = cj.power_law_noise(jax.random.key(4), (2, 8, 8, 1), 1.5)
    c = cj.power_law_noise(jax.random.key(5), (2, 8, 8, 1), 1.5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(
        cj.power_law_noise(jax.random.key(4), (3, 8, 8, 1), 0.0), jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    )
    assert a.dtype == jnp.float32


def test_models_under_jit_and_as_pytrees():
    noise = cj.PowerLawNoise(1.5)
    sample = jax.jit(lambda n, k: n.sample(k, (2, 8, 8, 1)))
    eager = noise.sample(jax.random.key(0), (2, 8, 8, 1))
    np.testing.assert_allclose(sample(noise, jax.random.key(0)), eager, rtol=1e-5, atol=1e-6)  # fusion reorders sums
    assert jax.tree_util.tree_leaves(noise) == []  # delta and pad are static
    colour = cj.PowerLawNoise(1.5, channel_cov=np.diag([2.0, 1.0, 0.5]))
    assert jax.tree_util.tree_leaves(colour) == [] and hash(colour) == hash(
        cj.PowerLawNoise(1.5, channel_cov=np.diag([2.0, 1.0, 0.5]))
    )
    draw = jax.jit(lambda n, k: n.sample(k, (2, 8, 8, 3)))  # the model passed into jit as an argument
    np.testing.assert_allclose(
        draw(colour, jax.random.key(0)), colour.sample(jax.random.key(0), (2, 8, 8, 3)), rtol=1e-5, atol=1e-6
    )
    variance = jax.jit(lambda: jnp.asarray(noise.fourier_variance(8, 8)))()  # a constant, also under jit
    np.testing.assert_allclose(variance, noise.fourier_variance(8, 8))
    np.testing.assert_array_equal(cj.WhiteNoise().fourier_variance(4, 5), np.ones((4, 5)))


def test_colour_noise_has_the_channel_covariance():
    cov = np.array([[2.73, 0.2, 0.0], [0.2, 0.217, 0.01], [0.0, 0.01, 0.053]])
    noise = cj.PowerLawNoise(1.5, channel_cov=jnp.asarray(cov))
    x = np.asarray(noise.sample(jax.random.key(6), (4000, 8, 8, 3)), np.float64).reshape(-1, 3)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.06)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="delta"):
        cj.PowerLawNoise(-1.0)
    with pytest.raises(ValueError, match="pad"):
        cj.PowerLawNoise(1.5, pad=0)
    with pytest.raises(ValueError, match="pad"):
        cj.power_law_noise(jax.random.key(0), (8, 8), 1.5, axes=(0, 1), pad=1.5)
    with pytest.raises(ValueError, match="axes"):
        cj.power_law_noise(jax.random.key(0), (8, 8), 1.5)
    with pytest.raises(ValueError, match="channel"):
        cj.PowerLawNoise(1.5, channel_cov=jnp.eye(3)).sample(jax.random.key(0), (1, 4, 4, 2))
    with pytest.raises(ValueError, match="semi-definite"):
        cj.PowerLawNoise(1.5, channel_cov=jnp.asarray([[1.0, 2.0], [2.0, 1.0]])).sample(jax.random.key(0), (1, 4, 4, 2))
