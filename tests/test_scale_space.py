"""Scale Space Diffusion: resolution schedule, resize operators, marginals, exact and Lanczos posteriors, L = 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.resolution import change_steps, degrade, downsample, downsample_transpose, level_schedule
from cloudjax.scale_space import ScaleSpaceDiffusion
from cloudjax.spectral import rfft_real


def dense(fn, shape):
    """The matrix of a linear map acting on arrays of ``shape`` (flattened)."""
    n = int(np.prod(shape))
    return np.asarray(jax.jit(jax.jacfwd(lambda v: fn(v.reshape(shape)).reshape(-1)))(jnp.zeros(n)), np.float64)


@functools.lru_cache
def dense_resize(resize, fine):
    return dense(lambda x: downsample(x, resize), (*fine, 1))


@functools.lru_cache
def noise_cov(noise, H, W):
    """Dense covariance of a Π-diagonal noise model at (H, W): Fᵀ diag(S) F with F the Π∘FFT matrix."""
    F = dense(lambda x: rfft_real(x), (H, W, 1))
    return F.T @ np.diag(np.asarray(noise.fourier_variance(H, W), np.float64).reshape(-1)) @ F


def test_change_points_match_the_reference_code():
    """64 px, 4 levels, T = 1000, ConvexDecay 0.5: changes at 438, 750, 937 (438/312/187/63 steps per level)."""
    levels = level_schedule(1000, 4)
    np.testing.assert_array_equal(change_steps(levels), [438, 750, 937])
    np.testing.assert_array_equal(np.bincount(levels), [438, 312, 187, 63])
    np.testing.assert_array_equal(change_steps(level_schedule(1000, 4, "equal")), [250, 500, 750])
    d = ScaleSpaceDiffusion(image_size=64, levels=4)
    assert d.resolution(438 / 1000) == (64, 64) and d.resolution(439 / 1000) == (32, 32)
    assert d.resolution(1.0) == (8, 8) and d.resolution(0.0) == (64, 64)
    assert d.is_change(439 / 1000) and not d.is_change(440 / 1000)
    ts = d.time_grid(20)  # step skipping keeps every change step, at the uniform grid's NFE
    assert len(ts) == 21 and np.all(np.diff(ts) < 0) and set(d.change_times) <= set(ts.tolist())
    assert np.all(np.diff(d.level(ts)) <= 0) and np.all(np.diff(d.level(ts)) >= -1)
    with pytest.raises(ValueError, match="steps"):
        d.time_grid(3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=20, levels=4), "levels"),
        (dict(image_size=64, levels=0), "levels"),
        (dict(image_size=64, resolution_schedule="linear"), "resolution_schedule"),
        (dict(image_size=64, resize="bicubic"), "resize"),
        (dict(image_size=64, gamma=0.0), "gamma"),
    ],
)
def test_bad_parameters_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleSpaceDiffusion(**kwargs)


@pytest.mark.parametrize("resize", ["mean", "bilinear"])
def test_transpose_is_the_adjoint(resize):
    M = dense(lambda x: downsample(x, resize), (8, 6, 2))
    Mt = dense(lambda y: downsample_transpose(y, resize), (4, 3, 2))
    np.testing.assert_allclose(Mt, M.T, atol=1e-6)
    if resize == "mean":  # M Mᵀ = I / 4: the posterior has two eigenvalues
        np.testing.assert_allclose(M @ M.T, np.eye(M.shape[0]) / 4, atol=1e-7)


@pytest.mark.parametrize(
    "resize, noise", [("mean", cj.WhiteNoise()), ("bilinear", cj.WhiteNoise()), ("mean", cj.PowerLawNoise(1.5, pad=1))]
)
def test_marginal_is_the_composition_of_the_steps(resize, noise):
    """Brute force at 8×8: push mean and covariance through every step x_i = c_i M_i x_{i−1} + η_i (η_i with the
    step covariance σ_i² Σ_i − c_i² σ_{i−1}² M_i Σ_{i−1} M_iᵀ, which must be PSD) and compare with q_sample."""
    d = ScaleSpaceDiffusion(image_size=8, levels=3, num_steps=8, resize=resize, noise=noise)
    x0 = np.asarray(jax.random.normal(jax.random.key(0), (8, 8, 1)), np.float64)
    levels = d.step_levels
    m, cov, prev_level, prev_alpha = x0.reshape(-1), np.zeros((64, 64)), 0, 1.0
    for i in range(d.num_steps):
        t = (i + 1) / d.num_steps
        alpha, sigma = (float(v) for v in d.alpha_sigma(t))
        size, prev_size = d.size_at(levels[i]), d.size_at(prev_level)
        M = np.eye(m.size) if size == prev_size else dense_resize(resize, prev_size)
        c = alpha / prev_alpha
        Sigma = noise_cov(noise, *size)
        step_cov = sigma**2 * Sigma - c**2 * M @ cov @ M.T
        assert np.linalg.eigvalsh(step_cov).min() > -1e-6, f"step {i} needs a negative variance"
        m, cov = c * M @ m, c**2 * M @ cov @ M.T + step_cov
        # the jump: mean α_t M_{1:t} x0, noise σ_t ε with ε ~ the noise model at r(t)
        jump = lambda x, eps, t=t: np.asarray(d.q_sample(None, jnp.asarray(x[None], jnp.float32), t, noise=eps[None]))
        np.testing.assert_allclose(jump(x0, np.zeros((*size, 1))).reshape(-1), m, atol=1e-5)
        np.testing.assert_allclose(jump(0 * x0, np.ones((*size, 1))), sigma, rtol=1e-6)
        np.testing.assert_allclose(cov, sigma**2 * Sigma, atol=1e-5)
        prev_level, prev_alpha = levels[i], alpha


def dense_posterior(d, x_t, x0, t, s, fine):
    """Gaussian conditioning with dense matrices: mean and covariance of q(x_s | x_t, x0) across one halving."""
    (a_t, s_t), (a_s, s_s) = (tuple(float(v) for v in d.alpha_sigma(u)) for u in (t, s))
    c = a_t / a_s
    M = dense_resize(d.resize, fine)
    Ss, St = noise_cov(d.noise, *fine), noise_cov(d.noise, fine[0] // 2, fine[1] // 2)
    mu = a_s * np.asarray(x0, np.float64).reshape(-1)
    cross = s_s**2 * c * Ss @ M.T  # Cov(x_s, x_t)
    gain = cross @ np.linalg.inv(s_t**2 * St)
    mean = mu + gain @ (np.asarray(x_t, np.float64).reshape(-1) - c * M @ mu)
    return mean, s_s**2 * Ss - gain @ cross.T


@pytest.mark.parametrize("noise", [cj.WhiteNoise(), cj.PowerLawNoise(1.5, pad=1)], ids=["white", "cloud"])
def test_exact_posterior_equals_the_dense_formulas(noise):
    """Block mean: the sampler's mean (ξ = 0) and covariance (J Jᵀ, J its map from ξ) are the dense ones."""
    d = ScaleSpaceDiffusion(image_size=8, levels=2, num_steps=20, noise=noise)
    c = change_steps(d.step_levels)[0]
    t, s = (c + 1) / 20, c / 20
    keys = jax.random.split(jax.random.key(1))
    x_t, x0 = jax.random.normal(keys[0], (1, 4, 4, 1)), jax.random.normal(keys[1], (1, 8, 8, 1))
    mean, cov = dense_posterior(d, x_t, x0, t, s, (8, 8))
    at_t, at_s = d.alpha_sigma(t), d.alpha_sigma(s)
    draw = lambda xi: d.change_posterior(x_t, x0, at_t, at_s, xi.reshape(1, 8, 8, 1)).reshape(-1)
    got_mean, J = jax.jit(lambda xi: (draw(xi), jax.jacfwd(draw)(xi)))(jnp.zeros(64))
    np.testing.assert_allclose(got_mean, mean, atol=1e-5)
    J = np.asarray(J, np.float64)
    np.testing.assert_allclose(J @ J.T, cov, atol=1e-5)
    if isinstance(noise, cj.WhiteNoise):  # two eigenvalues: σ_s²(1 − ρc²/4) (block-constant) and σ_s²
        eig = np.linalg.eigvalsh(cov)
        assert np.ptp(eig[:16]) < 1e-5 and np.ptp(eig[16:]) < 1e-5 and eig[-1] - eig[0] > 1e-4


def test_lanczos_posterior_is_close_to_exact():
    """Bilinear: exact mean; the Lanczos draw (40 iterations, 64-dim coarse space) matches the dense square root."""
    d = ScaleSpaceDiffusion(image_size=16, levels=2, num_steps=20, resize="bilinear")
    c = change_steps(d.step_levels)[0]
    t, s = (c + 1) / 20, c / 20
    keys = jax.random.split(jax.random.key(2), 3)
    x_t, x0 = jax.random.normal(keys[0], (1, 8, 8, 1)), jax.random.normal(keys[1], (1, 16, 16, 1))
    xi = jax.random.normal(keys[2], (1, 16, 16, 1))
    mean, cov = dense_posterior(d, x_t, x0, t, s, (16, 16))
    at_t, at_s = d.alpha_sigma(t), d.alpha_sigma(s)
    got_mean, got = jax.jit(lambda xi: [d.change_posterior(x_t, x0, at_t, at_s, v).reshape(-1) for v in (0 * xi, xi)])(
        xi
    )
    np.testing.assert_allclose(got_mean, mean, atol=1e-5)
    lam, U = np.linalg.eigh(cov)
    exact = U @ (np.sqrt(np.maximum(lam, 0)) * (U.T @ np.asarray(xi, np.float64).reshape(-1)))
    got = np.asarray(got, np.float64) - got_mean
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 1e-4


def test_one_level_is_gaussian_diffusion_with_x0_prediction():
    """L = 1: the same loss as GaussianDiffusion(prediction="x0", loss_weighting="min_snr") for the same key, with
    the branch drawn on device or given (the one branch)."""
    x0 = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    net = lambda x, t: 0.5 * x + t[:, None, None, None]
    for noise in (cj.WhiteNoise(), cj.PowerLawNoise(1.5)):
        ss = ScaleSpaceDiffusion(image_size=8, levels=1, noise=noise, schedule="cosine")
        gd = cj.GaussianDiffusion(noise=noise, schedule="cosine", prediction="x0", loss_weighting="min_snr")
        both = jax.jit(
            lambda key, ss=ss, gd=gd: (ss.loss(net, key, x0), ss.loss(net, key, x0, branch=0), gd.loss(net, key, x0))
        )
        for k in range(3):
            switched, given, gaussian = both(jax.random.key(10 + k))
            np.testing.assert_allclose(switched, gaussian, rtol=1e-6)
            np.testing.assert_allclose(given, gaussian, rtol=1e-6)


@pytest.mark.parametrize("host_branch", [False, True], ids=["switch", "host-branch"])
def test_loss_takes_one_resolution_per_batch(host_branch):
    """Every branch runs at its own resolution; a change step feeds r(t) in and wants r(t − 1) out; whether the
    device (``lax.switch``) or the host (``loss_branch``, as the train step does) picks the branch, t is U(0, 1)."""
    d = ScaleSpaceDiffusion(image_size=8, levels=3, num_steps=30)
    np.testing.assert_allclose(d.loss_branches.sum(), 1.0)
    assert len(d.loss_branches) == 3 + len(change_steps(d.step_levels))
    seen = []

    def net(x, t, upsample=False):
        jax.debug.callback(lambda *a: seen.append(a), x.shape[1], upsample, t.min(), t.max(), t[0])
        return degrade(jnp.zeros((x.shape[0], 8, 8, 1)), int(np.log2(8 // x.shape[1])) - int(upsample))

    x0 = jnp.ones((4, 8, 8, 1))
    loss = jax.jit(lambda k, b: d.loss(net, k, x0, branch=b), static_argnums=1)
    keys = [jax.random.key(k) for k in range(600)]
    weights = d.loss_branches
    branches = [cj.process.loss_branch(weights, k) if host_branch else None for k in keys]
    assert branches == [cj.process.loss_branch(weights, k) if host_branch else None for k in keys]  # deterministic
    for k, b in zip(keys, branches, strict=True):
        loss(k, b).block_until_ready()
    # the loss's own rule: t ∈ (i/T, (i + 1)/T] is step i (the host's d.step adds a 1e-3-step tolerance for grids)
    step = lambda t: np.clip(np.ceil(np.float32(t) * np.float32(d.num_steps)).astype(int) - 1, 0, d.num_steps - 1)
    for size, upsample, lo, hi, _ in seen:
        levels = np.unique(d.step_levels[step([lo, hi])])
        assert len(levels) == 1 and 8 >> int(levels[0]) == size
        assert upsample == (step(lo) in change_steps(d.step_levels)) and (not upsample or lo == hi)
    assert {int(s) for s, *_ in seen} == {8, 4, 2}
    counts = np.bincount(step([t for *_, t in seen]), minlength=d.num_steps)  # uniform t: ~20 per step
    chi2 = np.sum((counts - 20) ** 2 / 20)
    assert chi2 < 65, (chi2, counts)  # 29 degrees of freedom: P(chi2 > 65) < 1e-4


def test_one_level_samples_equal_gaussian_diffusion():
    """L = 1: cj.sample gives GaussianDiffusion(prediction="x0")'s samples for the same key (ddpm and ddim)."""
    net = lambda x, t: 0.8 * x / (1.0 + t[:, None, None, None])
    ss = ScaleSpaceDiffusion(image_size=8, levels=1, schedule="cosine")
    gd = cj.GaussianDiffusion(schedule="cosine", prediction="x0")
    for method in ("ddpm", "ddim"):
        a, b = (cj.sample(net, d, jax.random.key(4), (3, 8, 8, 1), steps=6, method=method) for d in (ss, gd))
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampler_runs_one_stage_per_level(method):
    """Coarsest level first; each change step is one network call with upsample=True; the output is full size."""
    d = ScaleSpaceDiffusion(image_size=16, levels=3, num_steps=100, noise=cj.PowerLawNoise(1.0, pad=1))
    calls = []

    def net(x, t, upsample=False):
        calls.append((x.shape[1], upsample))
        return jnp.zeros((x.shape[0], x.shape[1] * (1 + upsample), x.shape[2] * (1 + upsample), 1))

    out = cj.sample(net, d, jax.random.key(5), (2, 16, 16, 1), steps=8, method=method)
    assert out.shape == (2, 16, 16, 1) and np.all(np.isfinite(out))
    assert (4, True) in calls and (8, True) in calls and calls[-1] == (16, False)
    assert [size for size, up in calls if up] == [4, 8]
