"""Blurring diffusion: the per-mode gain, and its Gaussian oracle drives the samplers to the data spectrum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.blurring import BlurringDiffusion, blurring_oracle
from cloudjax.noise import power_law_spectrum
from cloudjax.spectral import rfft_real, wavenumbers

H = 16
C = power_law_spectrum(H, H, 1.2).astype(np.float32)  # the data's Π variance


def test_gain_is_a_gaussian_blur():
    """At t the signal is α_t times a Gaussian blur of std σ_B(t) (floor d_min); t = 0 is the identity."""
    d = BlurringDiffusion(blur_sigma_max=3.0, schedule="cosine")
    x0 = jax.random.normal(jax.random.key(0), (1, H, H, 1))
    np.testing.assert_allclose(
        d.q_sample(None, x0, 0.0, noise=jnp.zeros_like(x0)), d.alpha_sigma(0.0)[0] * x0, atol=1e-5
    )
    gain = np.asarray(d.gain(jnp.float32(0.5), H, H))[..., 0]
    k = wavenumbers(H, H)
    expected = (0.999 * np.exp(-2 * np.pi**2 * k**2 * (3 * np.sin(np.pi / 4)) ** 2) + 0.001) * d.alpha_sigma(0.5)[0]
    np.testing.assert_allclose(gain, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="min_gain"):
        BlurringDiffusion(min_gain=0.0)


@pytest.mark.parametrize(
    "noise, method", [(cj.WhiteNoise(), "ddim"), (cj.PowerLawNoise(1.5, pad=1), "ddpm")], ids=["white", "cloud"]
)
def test_oracle_drives_the_samplers_to_the_data_spectrum(noise, method):
    """Exact denoiser for Gaussian data ⇒ samples with the data's Π variance C (radially, within 10%; the
    discretisation error of 100 steps is 5–20% at high frequencies, whose gain rises within the last few steps)."""
    d = BlurringDiffusion(noise=noise, blur_sigma_max=2.0)
    n = 1024
    x = cj.sample(blurring_oracle(d, C), d, jax.random.key(1), (n, H, H, 1), steps=300, method=method)
    ratio = np.asarray(jnp.mean(rfft_real(x)[..., 0] ** 2, axis=0)) / C
    k = wavenumbers(H, H)
    radial = [ratio[(k >= a) & (k < a + 0.1)].mean() for a in np.arange(0.0, 0.7, 0.1)]
    assert np.all(np.abs(np.array(radial) - 1) < 0.1), radial
