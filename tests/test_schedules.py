"""Schedules: variance preservation, end points, DDPM's discrete ᾱ, SNR calibration, grids, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.noise import power_law_spectrum
from cloudjax.schedules import time_grid

T = np.linspace(0.0, 1.0, 101, dtype=np.float32)


@pytest.mark.parametrize("name", ["cosine", "offset_cosine", "linear"])
def test_variance_preserving_and_monotone(name):
    schedule = cj.get_schedule(name)
    alpha, sigma = schedule.alpha_sigma(T)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    assert np.all(np.diff(alpha) < 0) and np.all(np.diff(sigma) > 0)
    log_snr = schedule.log_snr(T[1:])
    assert np.all(np.diff(log_snr) < 0)
    np.testing.assert_allclose(log_snr, np.log(alpha[1:] ** 2 / sigma[1:] ** 2), rtol=1e-4, atol=1e-4)


def test_end_points():
    cosine = cj.get_schedule("cosine")
    np.testing.assert_allclose(cosine.log_snr(jnp.array([0.0, 0.5, 1.0])), [15.0, 0.0, -15.0], atol=1e-3)
    offset = cj.get_schedule("offset_cosine")
    alpha, sigma = offset.alpha_sigma(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(alpha, [0.95, 0.02], atol=1e-6)
    # θ is linear in t: equal steps in t rotate by equal angles
    theta = np.arctan2(*offset.alpha_sigma(T)[::-1])
    np.testing.assert_allclose(np.diff(theta), (np.arccos(0.02) - np.arccos(0.95)) / 100, atol=1e-5)


def test_linear_matches_discrete_ddpm():
    schedule = cj.get_schedule("linear")
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    i = np.array([1, 10, 250, 500, 999, 1000])
    alpha, sigma = schedule.alpha_sigma(i / 1000)
    np.testing.assert_allclose(alpha**2, alpha_bar[i - 1], rtol=1e-4)
    np.testing.assert_allclose(sigma**2, 1 - alpha_bar[i - 1], rtol=1e-4)
    assert schedule.alpha_sigma(0.0) == (1.0, 0.0)


def test_calibrated_matches_average_snr():
    C = power_law_spectrum(16, 16, 1.2) * 0.7  # data Π variance
    N = cj.PowerLawNoise(1.5, pad=1).fourier_variance(16, 16)
    base = cj.get_schedule("cosine")
    calibrated = cj.calibrated_schedule(C, N, base="cosine")
    t = np.linspace(0.05, 0.95, 7, dtype=np.float32)
    (a, s), (a2, s2) = base.alpha_sigma(t), calibrated.alpha_sigma(t)
    np.testing.assert_allclose(a2**2 + s2**2, 1.0, atol=1e-6)
    snr_white = np.mean(C[None] * (a**2 / s**2)[:, None, None], axis=(1, 2))
    snr_cloud = np.mean(C[None] / N[None] * (a2**2 / s2**2)[:, None, None], axis=(1, 2))
    np.testing.assert_allclose(snr_cloud, snr_white, rtol=1e-4)
    # Falck et al.'s closed form for EqualSNR noise (N = C): ᾱ_eq = ᾱ m / (1 − ᾱ + ᾱ m), m = mean(C)
    equal = cj.get_schedule("calibrated", data_variance=C, noise_variance=C)
    ab, m = a**2, C.mean()
    np.testing.assert_allclose(equal.alpha_sigma(t)[0] ** 2, ab * m / (1 - ab + ab * m), rtol=1e-5)


def test_jit_vmap_and_pytree():
    schedule = cj.get_schedule("linear")
    jitted = jax.jit(lambda s, t: s.alpha_sigma(t))(schedule, T)
    np.testing.assert_allclose(jitted, schedule.alpha_sigma(T), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(schedule.log_snr)(T[1:]), schedule.log_snr(T[1:]), rtol=1e-6)
    assert jax.tree_util.tree_leaves(schedule) == []  # all static: hashable, usable as a jit static arg
    hash(cj.calibrated_schedule(np.ones((4, 4)), np.ones((4, 4))))


def test_time_grid():
    grid = time_grid(5, t_start=0.95)
    np.testing.assert_allclose(grid, [0.95, 0.76, 0.57, 0.38, 0.19, 0.0], atol=1e-6)
    assert time_grid(1).tolist() == [1.0, 0.0]


def test_bad_input_raises():
    for bad in [
        lambda: cj.get_schedule("sigmoid"),
        lambda: cj.get_schedule("calibrated"),
        lambda: cj.CosineSchedule(alpha_start=0.5, alpha_end=0.6),
        lambda: cj.LinearSchedule(beta_start=0.0),
        lambda: cj.calibrated_schedule(np.ones((4, 4)), np.zeros((4, 4))),
        lambda: cj.calibrated_schedule(np.ones(4), np.ones(4)),
        lambda: time_grid(0),
        lambda: time_grid(3, t_start=0.0),
        lambda: time_grid(3, t_start=1.2),
        lambda: time_grid(3, t_start=0.5, t_end=0.5),
        lambda: cj.GaussianDiffusion(schedule="sigmoid"),
    ]:
        with pytest.raises(ValueError):
            bad()
