"""GaussianDiffusion: jump-trick marginals, prediction conversions, losses and their Gaussian minimum, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.diffusion import from_x0_eps, to_x0_eps, whiten
from cloudjax.noise import power_law_spectrum
from cloudjax.spectral import irfft_real, rfft_real

H = W = 8
C = power_law_spectrum(H, W, 1.2).astype(np.float32)  # data Π variance (diagonal)


def gaussian_data(key, n, channels=1):
    """n zero-mean Gaussian images whose Π covariance is diag(C)."""
    z = jax.random.normal(key, (n, H, W, channels))
    return irfft_real(np.sqrt(C)[..., None] * z)


@pytest.mark.parametrize("noise", [cj.WhiteNoise(), cj.PowerLawNoise(1.5, pad=1), cj.PowerLawNoise(1.5, pad=3)])
def test_q_sample_marginal_spectrum(noise):
    """Per Π mode, Var(x_t) = α² C + σ² N (N = the noise's exact Π variance)."""
    n, t = 4096, 0.4
    diffusion = cj.GaussianDiffusion(noise=noise)
    x0 = gaussian_data(jax.random.key(0), n)
    x_t = diffusion.q_sample(jax.random.key(1), x0, jnp.full((n,), t))
    alpha, sigma = diffusion.alpha_sigma(t)
    expected = alpha**2 * C + sigma**2 * noise.fourier_variance(H, W)
    ratio = np.asarray(jnp.mean(rfft_real(x_t)[..., 0] ** 2, axis=0)) / expected
    se = np.sqrt(2.0 / n)  # relative standard error of a variance from n squares
    assert np.all(np.abs(ratio - 1) < 4 * se)
    assert abs(ratio.mean() - 1) < 4 * se / np.sqrt(ratio.size) * 1.5  # modes nearly independent
    # a scalar t broadcasts like a (batch,) t
    np.testing.assert_allclose(diffusion.q_sample(jax.random.key(1), x0, t), x_t, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_are_lossless(prediction):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (3, H, W, 2)), jax.random.normal(k2, (3, H, W, 2))
    for alpha, sigma in [(0.8, 0.6), (0.02, 0.9998), (0.3, 2.0)]:  # the last is not variance preserving
        x_t = alpha * x0 + sigma * eps
        out = from_x0_eps(prediction, x0, eps, alpha, sigma)
        x0_back, eps_back = to_x0_eps(prediction, out, x_t, alpha, sigma)
        np.testing.assert_allclose(x0_back, x0, atol=2e-3 if alpha == 0.02 else 1e-5)
        np.testing.assert_allclose(eps_back, eps, atol=1e-5)
    np.testing.assert_allclose(from_x0_eps("v", x0, eps, 0.8, 0.6), 0.8 * eps - 0.6 * x0, atol=1e-6)


ORACLE_CASES = [
    (cj.WhiteNoise(), "cosine", "eps", "pixel"),
    (cj.PowerLawNoise(1.2, pad=1), "cosine", "v", "mahalanobis"),
    (cj.PowerLawNoise(1.2, pad=1), "offset_cosine", "x0", "min_snr"),
    (cj.WhiteNoise(), "linear", "eps", "min_snr"),
]


@pytest.mark.parametrize("noise, schedule, prediction, weighting", ORACLE_CASES)
def test_oracle_reaches_the_analytic_minimum_loss(noise, schedule, prediction, weighting):
    diffusion = cj.GaussianDiffusion(noise=noise, schedule=schedule, prediction=prediction, loss_weighting=weighting)
    oracle = cj.gaussian_oracle(diffusion, C)
    minimum = float(cj.gaussian_oracle_loss(diffusion, C, (H, W, 1)))

    @jax.jit
    def losses(offset):  # the oracle plus offset · x_t: any offset adds offset² E[x_t²] to the expected loss
        keys = jax.random.split(jax.random.key(0), 8)
        x0 = jax.vmap(lambda k: gaussian_data(k, 512))(keys)
        return jax.vmap(lambda k, x: diffusion.loss(lambda x_t, t: oracle(x_t, t) + offset * x_t, k, x))(keys, x0)

    optimal = np.asarray(losses(0.0))
    mean, se = optimal.mean(), optimal.std(ddof=1) / np.sqrt(len(optimal))
    assert abs(mean - minimum) < max(4 * se, 1e-3 * minimum)
    assert abs(mean / minimum - 1) < 0.03
    assert np.asarray(losses(0.2)).mean() > minimum + 4 * se  # a worse denoiser does measurably worse


def test_analytic_loss_per_t():
    """At a fixed t the minimum is the mean over modes of the oracle's error variance; the x0 error of mode i is
    C σ² N / (α² C + σ² N) and the ε error is α/σ times it (checked against a direct Monte Carlo)."""
    diffusion = cj.GaussianDiffusion(noise=cj.PowerLawNoise(1.5, pad=1))
    oracle = cj.gaussian_oracle(diffusion, C)
    n, t = 4096, 0.3
    x0 = gaussian_data(jax.random.key(0), n)
    eps = diffusion.noise.sample(jax.random.key(1), x0.shape)
    t_batch = jnp.full((n,), t)
    err = oracle(diffusion.q_sample(None, x0, t_batch, noise=eps), t_batch) - eps
    analytic = cj.gaussian_oracle_loss(diffusion, C, (H, W, 1), t=jnp.array([t]))
    np.testing.assert_allclose(jnp.mean(err**2), analytic[0], rtol=0.02)


@pytest.mark.parametrize(
    "noise, channels",
    [
        (cj.WhiteNoise(), 1),
        (cj.PowerLawNoise(1.5, pad=3), 1),
        (cj.PowerLawNoise(1.0, pad=1, channel_cov=np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.5], [0.2, 0.5, 1.0]])), 3),
    ],
)
def test_whitening_makes_the_noise_white(noise, channels):
    """whiten(ε) has unit variance at every Π mode and channel, so the Mahalanobis loss of a zero ε prediction
    is 1 per pixel for every noise (the loss scale does not depend on the noise)."""
    n = 4096
    eps = noise.sample(jax.random.key(0), (n, H, W, channels))
    per_mode = np.asarray(jnp.mean(whiten(noise, eps) ** 2, axis=0))
    assert np.all(np.abs(per_mode - 1) < 4 * np.sqrt(2.0 / n))
    diffusion = cj.GaussianDiffusion(noise=noise, loss_weighting="mahalanobis")
    loss = jax.jit(lambda key, x0: diffusion.loss(lambda x_t, t: jnp.zeros_like(x_t), key, x0))
    np.testing.assert_allclose(loss(jax.random.key(1), jnp.zeros((n, H, W, channels))), 1, rtol=0.03)


def test_mahalanobis_norm():
    """White noise: the Mahalanobis norm is the pixel MSE. Cloud noise with pad = 1: it is the author's
    Σ |k|^{2Δ} (Π e)², normalised so that the noise itself scores 1 per pixel."""
    err = jax.random.normal(jax.random.key(0), (4, H, W, 1))
    norm = {
        (name, weighting): cj.GaussianDiffusion(noise=noise, loss_weighting=weighting).squared_error(err)
        for name, noise in [("white", cj.WhiteNoise()), ("cloud", cj.PowerLawNoise(1.5, pad=1))]
        for weighting in ("pixel", "mahalanobis")
    }
    np.testing.assert_allclose(norm["white", "mahalanobis"], norm["white", "pixel"], rtol=1e-5)
    np.testing.assert_allclose(norm["cloud", "pixel"], norm["white", "pixel"])
    k = np.maximum(cj.wavenumbers(H, W), 1 / max(H, W))
    weights = k**3.0 / np.mean(k**-3.0) ** -1  # 1 / power_law_spectrum(H, W, 1.5)
    author = np.mean(weights[..., None] * np.asarray(rfft_real(err)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(norm["cloud", "mahalanobis"], author, rtol=1e-4)


def test_min_snr_weights():
    t = jnp.linspace(0.05, 0.95, 10)
    weights = {
        p: cj.GaussianDiffusion(prediction=p, loss_weighting="min_snr").time_weight(t) for p in ("eps", "x0", "v")
    }
    alpha, sigma = cj.get_schedule("cosine").alpha_sigma(t)
    snr = alpha**2 / sigma**2
    np.testing.assert_allclose(weights["x0"], jnp.minimum(snr, 5.0), rtol=1e-5)
    # the same x0-space weight on every parametrisation: ε error = √SNR x0 error, v error = √(SNR + 1) x0 error
    np.testing.assert_allclose(weights["eps"] * snr, weights["x0"], rtol=1e-5)
    np.testing.assert_allclose(weights["v"] * (snr + 1), weights["x0"], rtol=1e-5)


def test_loss_jit_grad_and_determinism():
    diffusion = cj.GaussianDiffusion(noise=cj.PowerLawNoise(1.5, pad=1), prediction="v", loss_weighting="mahalanobis")
    x0 = gaussian_data(jax.random.key(0), 16)

    def loss(d, gain, key):
        return d.loss(lambda x_t, t: gain * x_t * (1 - t)[:, None, None, None], key, x0)

    jitted = jax.jit(loss)  # the diffusion passed as a pytree argument
    key = jax.random.key(1)
    value = jitted(diffusion, 0.3, key)
    assert value.shape == () and np.isfinite(value)
    assert jitted(diffusion, 0.3, key) == value
    assert jitted(diffusion, 0.3, jax.random.key(2)) != value
    grad = jax.jit(jax.grad(loss, argnums=1))(diffusion, 0.3, key)
    assert np.isfinite(grad) and grad != 0
    # q_sample under vmap over keys equals the loop
    keys = jax.random.split(key, 3)
    q_sample = jax.jit(lambda k: diffusion.q_sample(k, x0, 0.5))
    np.testing.assert_allclose(jax.vmap(q_sample)(keys)[2], q_sample(keys[2]), atol=1e-6)


def test_bad_input_raises():
    colour = cj.PowerLawNoise(1.0, channel_cov=np.eye(3))
    for bad in [
        lambda: cj.GaussianDiffusion(prediction="score"),
        lambda: cj.GaussianDiffusion(loss_weighting="l1"),
        lambda: cj.GaussianDiffusion(min_snr_gamma=0.0),
        lambda: cj.GaussianDiffusion().loss(lambda x, t: x, jax.random.key(0), jnp.zeros((8, 8, 1))),
        lambda: cj.gaussian_oracle(cj.GaussianDiffusion(noise=colour), C)(jnp.zeros((1, H, W, 3)), jnp.ones(1)),
        lambda: cj.gaussian_oracle(cj.GaussianDiffusion(), C[:4])(jnp.zeros((1, H, W, 1)), jnp.ones(1)),
        lambda: to_x0_eps("score", jnp.zeros(2), jnp.zeros(2), 1.0, 1.0),
    ]:
        with pytest.raises(ValueError):
            bad()
