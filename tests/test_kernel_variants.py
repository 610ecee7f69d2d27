"""The pure kernels keep their defining properties under every JAX transformation a caller may apply:
``chex.variants`` runs each test eagerly, under ``jit`` and ``pmap``-ed over the 8 simulated devices (every device
computes the same call; the first device's result is checked)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.samplers import METHODS, Step

VARIANTS = dict(with_jit=True, without_jit=True, with_pmap=True)


def _images(shape=(4, 8, 8, 1), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class KernelVariants(chex.TestCase):
    @chex.variants(**VARIANTS)
    def test_pi_is_orthonormal_and_inverted_exactly(self):
        x = _images((2, 8, 6, 3))
        X = self.variant(cj.rfft_real)(x)
        np.testing.assert_allclose(np.linalg.norm(X), np.linalg.norm(x), rtol=1e-5)
        np.testing.assert_allclose(self.variant(cj.irfft_real)(X), x, atol=1e-5)

    @chex.variants(**VARIANTS)
    def test_cloud_noise_has_its_fourier_variance(self):
        noise = cj.PowerLawNoise(delta=1.0)
        draw = self.variant(lambda key: noise.sample(key, (512, 8, 8, 1)))
        power = np.mean(np.asarray(cj.rfft_real(draw(jax.random.PRNGKey(0))))[..., 0] ** 2, axis=0)  # (8, 8)
        ratio = power / noise.fourier_variance(8, 8)
        # 512 draws per mode: the bounds are 3.8 and 4.8 standard errors
        assert abs(ratio.mean() - 1) < 0.03 and np.all(np.abs(ratio - 1) < 0.3), ratio

    @chex.variants(**VARIANTS)
    def test_q_sample_is_the_jump(self):
        diffusion = cj.GaussianDiffusion(cj.WhiteNoise())
        x0, eps, t = _images(seed=1), _images(seed=2), np.array([0.1, 0.4, 0.7, 1.0], np.float32)
        x_t = self.variant(lambda x0, t, eps: diffusion.q_sample(None, x0, t, noise=eps))(x0, t, eps)
        alpha, sigma = (np.asarray(c)[:, None, None, None] for c in diffusion.alpha_sigma(t))
        np.testing.assert_allclose(x_t, alpha * x0 + sigma * eps, atol=1e-6)

    @chex.variants(**VARIANTS)
    def test_x0_loss_is_the_mean_squared_error_of_the_prediction(self):
        diffusion = cj.GaussianDiffusion(cj.PowerLawNoise(delta=1.0), prediction="x0")
        x0, key = _images(seed=3), jax.random.PRNGKey(1)
        exact = self.variant(lambda key, x0: diffusion.loss(lambda x_t, t: x0, key, x0))(key, x0)
        zero = self.variant(lambda key, x0: diffusion.loss(lambda x_t, t: jnp.zeros_like(x_t), key, x0))(key, x0)
        assert float(exact) == 0.0
        np.testing.assert_allclose(zero, np.mean(x0**2), rtol=1e-5)

    @chex.variants(**VARIANTS)
    def test_a_ddim_step_with_the_true_x0_keeps_the_noise(self):
        """x_t = α_t x0 + σ_t ε and x̂0 = x0: the deterministic step lands on α_s x0 + σ_s ε."""
        diffusion = cj.GaussianDiffusion(cj.WhiteNoise())
        x0, eps = _images(seed=4), _images(seed=5)
        (a_t, a_s), (s_t, s_s) = diffusion.coefficients(jnp.array([0.8, 0.3]))

        def step(x0, eps):
            x = a_t * x0 + s_t * eps
            state = Step(x, x0, eps, (a_t, s_t), (a_s, s_s), None, jnp.array(False), x.shape)
            return METHODS["ddim"].step(diffusion, state, None, 0.0, 0.0)[0]

        np.testing.assert_allclose(self.variant(step)(x0, eps), a_s * x0 + s_s * eps, atol=1e-5)

    @chex.variants(**VARIANTS)
    def test_degradations_are_the_identity_at_zero_and_blur_keeps_the_mean(self):
        x = _images((4, 8, 8, 3), seed=6)
        kinds = (cj.GaussianBlur((1.0, 2.0), 5), cj.GaussianMask.linear(4, 0.5, 2), cj.Downsample(2), cj.Decolorize(4))
        for degradation in kinds:
            np.testing.assert_array_equal(self.variant(degradation)(x, np.zeros(4, np.int32)), x)
        blurred = self.variant(cj.GaussianBlur((1.0, 2.0), 5))(x, np.full(4, 2, np.int32))
        np.testing.assert_allclose(np.mean(blurred, axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)


def test_shapes_that_would_broadcast_are_refused_at_trace_time():
    """Times, noise and labels of the wrong shape would broadcast silently against the batch: ``ValueError``."""
    diffusion = cj.GaussianDiffusion(cj.WhiteNoise())
    x0 = _images()
    with pytest.raises(ValueError, match=r"t must be a scalar or \(4,\)"):
        jax.jit(diffusion.mean)(x0, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"t must be a scalar or \(4,\)"):
        diffusion.mean(x0, jnp.zeros(2))
    with pytest.raises(ValueError, match="noise must have x0's shape"):
        diffusion.q_sample(None, x0, 0.5, noise=x0[:1])
    with pytest.raises(ValueError, match=r"labels must be \(batch,\)"):
        diffusion.loss(lambda x_t, t, labels: x_t, jax.random.key(0), x0, labels=jnp.zeros((4, 1), jnp.int32))
    np.testing.assert_allclose(diffusion.mean(x0, jnp.full(1, 0.5)), diffusion.mean(x0, 0.5))  # (1,) is every image
