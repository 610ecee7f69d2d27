"""Cold Diffusion: the time grid, Algorithms 1 and 2 and the direct reconstruction with exact and imperfect
restorers, the mean prior (EM mixture) and generation from flat images. Degradations here are user functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.cold import fit_gmm

T, H, W = 8, 8, 8
K2 = np.asarray(cj.wavenumbers(H, W), np.float32)[..., None] ** 2


def blur(x, t):
    """Circular Gaussian blur, t steps of std 0.7 px, as a per-Π-mode gain g^t (linear, exact)."""
    gain = jnp.exp(-2 * (np.pi * 0.7) ** 2 * K2)
    return cj.irfft_real(gain ** t.astype(jnp.float32)[:, None, None, None] * cj.rfft_real(x))


def fade(x, t):
    """Linear fade to the per-channel mean: D(x, T) is flat."""
    f = (t.astype(jnp.float32) / T)[:, None, None, None]
    return (1 - f) * x + f * jnp.mean(x, axis=(1, 2), keepdims=True)


def squash(x, t):
    """A non-linear degradation: interpolate towards tanh(3x)."""
    f = (t.astype(jnp.float32) / T)[:, None, None, None]
    return (1 - f) * x + f * jnp.tanh(3 * x)


X0 = jax.random.normal(jax.random.key(0), (3, H, W, 2))


def _run(process, restorer, method, steps, start):
    return cj.sample(restorer, process, jax.random.key(1), start.shape, steps=steps, method=method, init_noise=start)


def test_time_grid_and_bad_settings():
    process = cj.ColdDiffusion(blur, steps=T)
    np.testing.assert_array_equal(process.stages(8)[0] * T, np.arange(8, -1, -1))
    np.testing.assert_array_equal(process.stages(3)[0] * T, [8, 5, 3, 0])  # evenly skipped, distinct
    np.testing.assert_array_equal(process.coefficients(jnp.asarray(process.stages(3)[0])), [8, 5, 3, 0])
    for bad, match in [
        (lambda: process.stages(9), "steps must be an integer in \\[1, 8\\]"),
        (lambda: process.stages(0), "steps"),
        (lambda: cj.ColdDiffusion(blur, steps=0), "steps must be an integer T >= 1"),
        (lambda: cj.ColdDiffusion("blur", steps=4), "degradation must be a callable"),
        (lambda: cj.ColdDiffusion(blur, steps=4, loss_weighting="mahalanobis"), "loss_weighting"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()
    with pytest.raises(ValueError, match="init_noise"):
        cj.sample(lambda x, t: x, process, jax.random.key(0), X0.shape, steps=2, method="cold", init_noise=X0[:, :4])
    with pytest.raises(ValueError, match="no mean_prior"):
        cj.sample(lambda x, t: x, process, jax.random.key(0), X0.shape, steps=2, method="cold")


BUILT_IN = [
    cj.GaussianBlur.from_routine("incremental", T, 0.5, kernel_size=5, padding="reflect"),
    cj.GaussianMask.linear(T, std=0.5, initial=1.0),
    cj.Downsample(steps=2),
    cj.Decolorize(T),
]


@pytest.mark.parametrize("degradation", [blur, fade, squash, *BUILT_IN], ids=lambda d: type(d).__name__)
def test_exact_restorer_returns_x0(degradation):
    """With x̂0 = x0, Algorithm 1 ends at D(x0, 0) = x0 and Algorithm 2 telescopes to x_T − D(x0, T) + x0 = x0."""
    process = cj.ColdDiffusion(degradation, steps=getattr(degradation, "steps", T))
    start = degradation(X0, jnp.full((3,), process.steps))
    assert float(jnp.abs(start - X0).max()) > 0.1
    seen = []
    exact = lambda x, t: (seen.append(t.shape), X0)[1]
    for method, steps in [("cold", 2), ("cold_naive", process.steps), ("direct", 1)]:
        np.testing.assert_allclose(_run(process, exact, method, steps, start), X0, atol=1e-5)
    assert set(seen) == {(3,)}


@pytest.mark.parametrize(
    "D", [blur, cj.GaussianBlur.from_routine("constant", T, 0.7, kernel_size=5)], ids=["fft", "built-in"]
)
def test_algorithm_2_cancels_a_smooth_error_that_algorithm_1_keeps(D):
    """x̂0 = x0 + δ with δ smooth: Algorithm 2 ends at x0 + δ − D(δ, T), Algorithm 1 at x0 + δ (the paper's point)."""
    process = cj.ColdDiffusion(D, steps=T)
    key_offset, key_field = jax.random.split(jax.random.key(2))
    smooth = blur(jax.random.normal(key_field, X0.shape), jnp.full((3,), T))
    delta = 0.3 * jax.random.normal(key_offset, (3, 1, 1, 2)) + smooth  # a colour offset and a smooth field
    restorer = lambda x, t: X0 + delta
    start = D(X0, jnp.full((3,), T))
    err2 = _run(process, restorer, "cold", T, start) - X0
    err1 = _run(process, restorer, "cold_naive", T, start) - X0
    np.testing.assert_allclose(err2, delta - D(delta, jnp.full((3,), T)), atol=1e-5)
    np.testing.assert_allclose(err1, delta, atol=1e-5)
    assert float(jnp.sqrt(jnp.mean(err2**2))) < 0.5 * float(jnp.sqrt(jnp.mean(err1**2)))


def test_loss_is_l1_on_x0_with_t_uniform_on_1_to_T():
    process = cj.ColdDiffusion(fade, steps=T)
    seen = []

    def net(x_t, t):
        seen.append(t)
        return x_t

    x0 = jnp.broadcast_to(X0[:1], (64, H, W, 2))
    loss = process.loss(net, jax.random.key(0), x0)
    t = np.asarray(seen[0]) * T
    np.testing.assert_allclose(t, np.round(t), atol=1e-5)
    assert t.min() >= 1 and t.max() <= T and len(np.unique(t)) == T  # every step drawn in 64
    expected = np.mean([np.mean(np.abs(fade(X0[:1], jnp.array([round(s)])) - X0[:1])) for s in t])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert process.loss(lambda x, t: x0, jax.random.key(0), x0) == 0
    l2 = cj.ColdDiffusion(fade, steps=T, loss_weighting="l2").loss(lambda x, t: x0 + 0.5, jax.random.key(0), x0)
    np.testing.assert_allclose(l2, 0.25, rtol=1e-6)


def test_gmm_recovers_a_two_component_mixture():
    rng = np.random.default_rng(0)
    n = 4000
    first = rng.multivariate_normal([-2.0, 1.0], [[0.3, 0.1], [0.1, 0.2]], int(0.3 * n))
    second = rng.multivariate_normal([1.5, -1.0], [[0.1, 0.0], [0.0, 0.4]], n - len(first))
    weights, means, covs = fit_gmm(np.concatenate([first, second]), components=2)
    order = np.argsort(means[:, 0])
    np.testing.assert_allclose(weights[order], [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(means[order], [[-2.0, 1.0], [1.5, -1.0]], atol=0.05)
    np.testing.assert_allclose(covs[order], [[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]]], atol=0.04)


def test_generation_from_flat_images_needs_the_broken_symmetry_noise():
    """Deterministic Algorithm 2 from a flat start: images with equal per-channel means give equal samples;
    the prior's noise (added once) makes them differ."""
    images = np.random.default_rng(1).normal(size=(256, H, W, 2)).astype(np.float32) + np.array([0.5, -1.0])
    prior = cj.MeanPrior.fit(images, components=1, noise=0.0)
    assert float(np.abs(np.asarray(prior.means) - images.mean(axis=(0, 1, 2))).max()) < 1e-4
    restorer = lambda x, t: x + jnp.sin(4 * x) * t[:, None, None, None]  # any deterministic non-linear R
    a, b = X0[:1], X0[1:2]
    b = b - b.mean(axis=(1, 2), keepdims=True) + a.mean(axis=(1, 2), keepdims=True)  # equal means, other image
    process = cj.ColdDiffusion(fade, steps=T)
    starts = fade(jnp.concatenate([a, b]), jnp.full((2,), T))
    out = _run(process, restorer, "cold", T, starts)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    # with a prior, sample() draws the start itself: flat images (noise 0), or noisy ones that break the tie
    flat = cj.sample(restorer, process.replace(mean_prior=prior), jax.random.key(3), (4, H, W, 2), T, "cold_naive")
    noisy = process.replace(mean_prior=prior.replace(noise=0.002))
    start = noisy.prior(jax.random.key(3), (64, H, W, 2), None, None)
    np.testing.assert_allclose(start.std(axis=(1, 2)), 0.002, rtol=0.25)
    colours = np.asarray(start.mean(axis=(1, 2)))
    assert np.abs(colours.mean(0) - [0.5, -1.0]).max() < 0.1 and np.all(colours.std(0) < 0.2)
    np.testing.assert_allclose(flat.std(axis=(1, 2)), 0, atol=1e-6)  # flat start, R keeps flat images flat
