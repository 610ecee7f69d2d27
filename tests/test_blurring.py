"""Blurring diffusion: the paper's DCT heat-equation blur (against the heat equation and scipy's DCT), the per-mode
posterior, the Gaussian oracle driving the samplers to the data spectrum in both bases, and runs of older versions."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

import cloudjax as cj
from cloudjax.blurring import BlurringDiffusion, blurring_oracle, laplacian_eigenvalues
from cloudjax.noise import power_law_spectrum
from cloudjax.spectral import dct2, idct2, wavenumbers
from cloudjax.train import Run, TrainConfig

H = 16


@pytest.mark.parametrize("shape", [(3, 16, 16, 2), (3, 12, 20, 1)], ids=["square", "non-square"])
def test_mean_is_alpha_times_the_dct_blur(shape):
    """``BlurringDiffusion().mean(x0, t) = α_t IDCT(d_t DCT(x0))``: orthonormal DCT-II on H and W, σ_B,max = 20·S/32,
    σ_B = σ_B,max sin²(πt/2), d_t = 0.999 exp(−λ σ_B² / 2) + 0.001, λ = (π k_y / H)² + (π k_x / W)²."""
    _, h, w, _ = shape
    d = BlurringDiffusion()
    x0 = np.asarray(jax.random.normal(jax.random.key(0), shape), np.float64)
    t = np.array([0.0, 0.45, 1.0])
    sigma_b = 20 * max(h, w) / 32 * np.sin(np.pi * t / 2) ** 2
    lam = (np.pi * np.arange(h)[:, None] / h) ** 2 + (np.pi * np.arange(w)[None, :] / w) ** 2
    gain = 0.999 * np.exp(-lam * sigma_b[:, None, None] ** 2 / 2) + 0.001
    alpha = np.asarray(d.alpha_sigma(jnp.asarray(t, jnp.float32))[0], np.float64)
    blurred = scipy.fft.idctn(
        gain[..., None] * scipy.fft.dctn(x0, axes=(1, 2), norm="ortho"), axes=(1, 2), norm="ortho"
    )
    expected = alpha[:, None, None, None] * blurred
    np.testing.assert_allclose(d.mean(x0.astype(np.float32), t), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected[1] - alpha[1] * x0[1]).max() > 0.1  # the blur is visible at t = 0.45
    np.testing.assert_allclose(idct2(dct2(x0)), x0, atol=1e-5)  # dct2 is exactly invertible


def test_gain_solves_the_heat_equation_with_reflecting_boundaries():
    """D_t x0 = (1 − d_min) u(τ) + d_min x0, u the heat equation ∂u/∂τ = Δu on [0, H] × [0, W] with zero-flux
    boundaries, τ = σ_B² / 2, from the field the pixels sample (at the pixel centres): solved by explicit finite
    differences on a 7× finer grid with mirrored ghost cells. The periodic basis misses it (the test can fail)."""
    h, w, m = 6, 5, 7
    x0 = np.asarray(jax.random.normal(jax.random.key(1), (h, w)), np.float64)
    coef = scipy.fft.dctn(x0, norm="ortho") * np.sqrt(np.where(np.arange(h) == 0, 1, 2) / h)[:, None]
    coef = coef * np.sqrt(np.where(np.arange(w) == 0, 1, 2) / w)
    yf, xf = (np.arange(m * h) + 0.5) / m, (np.arange(m * w) + 0.5) / m
    u = np.cos(np.pi * np.outer(yf, np.arange(h)) / h) @ coef @ np.cos(np.pi * np.outer(np.arange(w), xf) / w)
    d = BlurringDiffusion(blur_sigma_max=3.0, schedule="cosine")
    t = 0.7
    tau = float(d.blur_sigma(t, h, w)) ** 2 / 2
    steps = int(np.ceil(tau / (0.2 / m**2)))
    dt = tau / steps
    for _ in range(steps):
        p = np.pad(u, 1, mode="edge")  # mirrored ghost cells: zero flux through the boundary
        u = u + dt * m**2 * (p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * u)
    centres = (m // 2 + m * np.arange(h))[:, None], (m // 2 + m * np.arange(w))[None, :]
    expected = float(d.alpha_sigma(t)[0]) * (0.999 * u[centres] + 0.001 * x0)
    got = np.asarray(d.mean(x0[None, ..., None].astype(np.float32), t))[0, ..., 0]
    np.testing.assert_allclose(got, expected, atol=5e-4)
    periodic = dataclasses.replace(d, basis="fourier")
    assert np.abs(np.asarray(periodic.mean(x0[None, ..., None], t))[0, ..., 0] - expected).max() > 0.05


def test_fourier_variant_is_a_periodic_gaussian_blur():
    """cloudjax's periodic variant: per Π mode α_t (0.999 exp(−2π²|k|² σ_B²) + 0.001), here with the sin schedule
    of older runs; t = 0 is the identity; the names and the basis/noise pairing are checked."""
    d = BlurringDiffusion(blur_sigma_max=3.0, basis="fourier", blur_schedule="sin")
    x0 = jax.random.normal(jax.random.key(0), (1, H, H, 1))
    np.testing.assert_allclose(d.mean(x0, 0.0), d.alpha_sigma(0.0)[0] * x0, atol=1e-5)
    gain = np.asarray(d.gain(jnp.float32(0.5), H, H))[..., 0]
    k = wavenumbers(H, H)
    expected = (0.999 * np.exp(-2 * np.pi**2 * k**2 * (3 * np.sin(np.pi / 4)) ** 2) + 0.001) * d.alpha_sigma(0.5)[0]
    np.testing.assert_allclose(gain, expected, rtol=1e-5)
    assert BlurringDiffusion().basis == "dct" and BlurringDiffusion(cj.PowerLawNoise(1.5)).basis == "fourier"
    with pytest.raises(ValueError, match="basis 'dct' needs white noise"):
        BlurringDiffusion(cj.PowerLawNoise(1.5), basis="dct")
    for bad, match in [
        (dict(min_gain=0.0), "min_gain"),
        (dict(basis="dst"), "basis"),
        (dict(blur_schedule="cos"), "blur_schedule"),
    ]:
        with pytest.raises(ValueError, match=match):
            BlurringDiffusion(**bad)


def test_step_is_the_papers_posterior_per_dct_mode():
    """η = 1: X_s ~ N((α_{t|s} σ_s²/σ_t²) X_t + (σ²_{t|s}/σ_t²) A_s X0, σ²_{t|s} σ_s²/σ_t²) per DCT mode with
    α_{t|s} = A_t / A_s and σ²_{t|s} = σ_t² − α_{t|s}² σ_s² (mean exact, variance from 4096 draws within 8 %)."""
    d = BlurringDiffusion()
    n, h, w = 4096, 4, 6
    t, s = 0.6, 0.45
    kx, k0, kn = jax.random.split(jax.random.key(2), 3)
    x_t, x0 = jax.random.normal(kx, (1, h, w, 1)), jax.random.normal(k0, (1, h, w, 1))
    A_t, A_s = np.asarray(d.gain(t, h, w), np.float64), np.asarray(d.gain(s, h, w), np.float64)
    s_t, s_s = (float(d.alpha_sigma(v)[1]) for v in (t, s))
    a_ts = A_t / A_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = a_ts * s_s**2 / s_t**2 * np.asarray(dct2(x_t)) + var_ts / s_t**2 * A_s * np.asarray(dct2(x0))
    np.testing.assert_allclose(dct2(d.ddim_update(x_t, x0, t, s, None, 1.0)), mean, atol=1e-5)
    draws = jax.vmap(lambda k: d.ddim_update(x_t, x0, t, s, k, 1.0)[0])(jax.random.split(kn, n))
    var = np.asarray(jnp.var(dct2(draws), axis=0), np.float64)
    np.testing.assert_allclose(var, var_ts * s_s**2 / s_t**2, rtol=0.08)
    assert np.ptp(var_ts) > 0.05  # the modes' variances differ: a per-mode test


def _dct_power_law(h, w, delta):
    """``(h, w)`` power-law variance per DCT mode, ∝ max(√λ, π / max(h, w))^(−2Δ), mean 1."""
    k = np.maximum(np.sqrt(laplacian_eigenvalues("dct", h, w)), np.pi / max(h, w))
    C = k ** (-2 * delta)
    return (C / C.mean()).astype(np.float32)


@pytest.mark.parametrize(
    "noise, method",
    [(cj.WhiteNoise(), "ddim"), (cj.WhiteNoise(), "ddpm"), (cj.PowerLawNoise(1.5, pad=1), "ddpm")],
    ids=["dct-ddim", "dct-ddpm", "fourier-cloud-ddpm"],
)
def test_oracle_drives_the_samplers_to_the_data_spectrum(noise, method):
    """Exact denoiser for Gaussian data with variance C per mode of the process's basis (DCT for white noise, Π
    for cloud) ⇒ samples with that variance (radially, within 10%; 512 samples, 300 steps: 6 % off at most, from
    the steps' discretisation, as with 1024 samples)."""
    d = BlurringDiffusion(noise=noise, blur_sigma_max=2.0)
    dct = d.basis == "dct"
    C = _dct_power_law(H, H, 1.2) if dct else power_law_spectrum(H, H, 1.2).astype(np.float32)
    x = cj.sample(blurring_oracle(d, C), d, jax.random.key(1), (512, H, H, 1), steps=300, method=method)
    ratio = np.asarray(jnp.mean(d.to_modes(x)[..., 0] ** 2, axis=0)) / C
    k = np.sqrt(laplacian_eigenvalues("dct", H, H)) / (2 * np.pi) if dct else wavenumbers(H, H)
    radial = [ratio[(k >= a) & (k < a + 0.1)].mean() for a in np.arange(0.0, 0.7, 0.1)]
    assert np.all(np.abs(np.array(radial) - 1) < 0.1), radial


def test_config_defaults_and_runs_of_older_versions():
    """A new run stores the paper's blur (σ_B,max = 20·S/32, DCT, sin²); a run.json without these fields (older
    versions) reads as the periodic sin blur of 20 px it was trained with; the settings are checked."""
    config = TrainConfig.from_flat(dict(image_size=8, model="tiny", process="blurring"))
    spec = config.process
    assert (spec.blur_sigma_max, spec.blur_basis, spec.blur_schedule) == (5.0, "dct", "sin2")
    run = Run(config, mean=(0.0,), std=(1.0,))
    assert Run.from_json(run.to_json()) == run
    process = run.diffusion
    assert (process.blur_sigma_max, process.basis, process.blur_schedule) == (5.0, "dct", "sin2")
    older = json.loads(run.to_json())  # the one flat config of older versions, without the blur's fields
    older["config"] = {k: v for k, v in config.flat().items() if not k.startswith("blur_")}
    process = Run.from_json(json.dumps(older)).diffusion
    assert (process.blur_sigma_max, process.basis, process.blur_schedule) == (20.0, "fourier", "sin")
    k = wavenumbers(8, 8)
    expected = 0.999 * np.exp(-2 * np.pi**2 * k**2 * (20 * np.sin(np.pi * 0.3 / 2)) ** 2) + 0.001
    np.testing.assert_allclose(process.gain(0.3, 8, 8)[..., 0], process.alpha_sigma(0.3)[0] * expected, rtol=1e-5)
    cloud = TrainConfig.from_flat(dict(image_size=8, model="tiny", process="blurring", noise="cloud", delta=1.0))
    assert cloud.process.blur_basis == "fourier"
    bad = [
        (dict(process="gaussian", blur_sigma_max=3.0), "blur_sigma_max does not apply to process 'gaussian'"),
        (dict(process="blurring", noise="cloud", blur_basis="dct"), "needs white noise"),
        (dict(process="blurring", blur_sigma_max=-1.0), "blur_sigma_max must be >= 0"),
        (dict(process="blurring", blur_schedule="cos"), "blur_schedule must be one of"),
    ]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_flat(dict(image_size=8, model="tiny", **fields))
