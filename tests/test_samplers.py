"""Samplers driven by the exact Gaussian oracle reproduce the data's Π spectrum; options, determinism, errors; the
one compiled loop equals a step-by-step Python loop for every process and compiles once per sampler."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.noise import power_law_spectrum
from cloudjax.samplers import METHODS, Step, _sample
from cloudjax.scale_space import ScaleSpaceDiffusion
from cloudjax.spectral import irfft_real, radial_bins, radial_profile, rfft_real

H = W = 8
C = power_law_spectrum(H, W, 1.3).astype(np.float32)  # the data's diagonal Π covariance
NOISES = {"white": cj.WhiteNoise(), "cloud": cj.PowerLawNoise(1.3, pad=1)}


def _setup(noise_name, **kw):
    diffusion = cj.GaussianDiffusion(noise=NOISES[noise_name], **kw)
    return diffusion, cj.gaussian_oracle(diffusion, C)


_SETUPS = {name: _setup(name) for name in NOISES}  # one oracle per noise: compiled loops are reused


def _unit_probe(noise) -> jnp.ndarray:
    """ε with Π ε = √N exactly: a deterministic sampler is a per-mode gain G in Π space (oracle and pad=1 noise
    are diagonal there), so its output's squared Π coefficients are G² σ² N, the expected sample spectrum."""
    return irfft_real(np.sqrt(noise.fourier_variance(H, W))[None, :, :, None], axes=(1, 2))


@pytest.mark.parametrize("noise_name", ["white", "cloud"])
@pytest.mark.parametrize("method, steps", [("ddim", 250), ("dpm++2m", 50)])
def test_deterministic_samplers_reproduce_spectrum(noise_name, method, steps):
    diffusion, oracle = _SETUPS[noise_name]
    probe = _unit_probe(diffusion.noise)
    rng = jax.random.normal(jax.random.key(1), (3, H, W, 1))
    eps0 = jnp.concatenate([probe, rng])
    out = cj.sample(oracle, diffusion, jax.random.key(0), eps0.shape, steps=steps, method=method, init_noise=eps0)
    X = rfft_real(out)
    spectrum = np.asarray(X[0, ..., 0] ** 2)
    np.testing.assert_allclose(spectrum, C, rtol=0.03)
    # the sampler is indeed a per-mode linear map: the random inputs get the probe's gain
    gain = X[0] / rfft_real(eps0[:1])[0]
    np.testing.assert_allclose(X[1:], gain * rfft_real(eps0[1:]), rtol=1e-3, atol=1e-4)


def test_few_steps_miss_the_spectrum():
    """The check above has power: 10 DDIM steps shrink the white-noise samples' spectrum by 20-40 %, cloud's
    uniformly by ~22 %; DPM-Solver++ at 10 steps is within 4 % for cloud but not for white."""
    errors = {}
    for name, (diffusion, oracle) in _SETUPS.items():
        probe = _unit_probe(diffusion.noise)
        for method in ("ddim", "dpm++2m"):
            out = cj.sample(
                oracle, diffusion, jax.random.key(0), probe.shape, steps=10, method=method, init_noise=probe
            )
            errors[name, method] = np.abs(np.asarray(rfft_real(out)[0, ..., 0] ** 2) / C - 1).max()
    assert errors["white", "ddim"] > 0.2 and errors["cloud", "ddim"] > 0.2
    assert errors["white", "dpm++2m"] > 0.2 > 0.05 > errors["cloud", "dpm++2m"]


@pytest.mark.parametrize("noise_name", ["white", "cloud"])
def test_ddpm_reproduces_spectrum(noise_name):
    diffusion, oracle = _SETUPS[noise_name]
    n = 2048
    out = cj.sample(oracle, diffusion, jax.random.key(3), (n, H, W, 1), steps=500, method="ddpm")
    _, profile = radial_profile(jnp.mean(rfft_real(out)[..., 0] ** 2, axis=0))
    _, reference = radial_profile(C)
    bins, R = radial_bins(H, W)
    modes_per_bin = np.bincount(bins.ravel(), minlength=R)
    # 2 % for discretisation plus 4 standard errors of a variance estimated from n × (modes in the bin) squares
    tolerance = 0.02 + 4 * np.sqrt(2.0 / (n * modes_per_bin))
    assert np.all(np.abs(np.asarray(profile) / reference - 1) < tolerance)


SMALL = (4, H, W, 1)  # the small tests below share compiled loops: same oracle, shape and step count


def test_ddpm_is_ddim_with_eta_one_and_stochasticity_mixes():
    diffusion, oracle = _SETUPS["cloud"]
    key = jax.random.key(5)
    ddpm = cj.sample(oracle, diffusion, key, SMALL, steps=6, method="ddpm")
    np.testing.assert_allclose(cj.sample(oracle, diffusion, key, SMALL, steps=6, eta=1.0), ddpm, atol=1e-5)
    ddim = cj.sample(oracle, diffusion, key, SMALL, steps=6)
    assert not np.allclose(ddim, ddpm, atol=1e-2)
    mixed = cj.sample(oracle, diffusion, key, SMALL, steps=6, stochasticity=0.5)
    assert not np.allclose(mixed, ddim, atol=1e-2) and not np.allclose(mixed, ddpm, atol=1e-2)


def test_deterministic_per_key_and_trajectory():
    diffusion, oracle = _SETUPS["cloud"]
    a = cj.sample(oracle, diffusion, jax.random.key(0), SMALL, steps=6, method="ddpm")
    b, path = cj.sample(oracle, diffusion, jax.random.key(0), SMALL, steps=6, method="ddpm", return_trajectory=True)
    c = cj.sample(oracle, diffusion, jax.random.key(1), SMALL, steps=6, method="ddpm")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert path["x"].shape == path["x0"].shape == (6, *SMALL)
    # step 4 starts from the state after step 3, at t = 1 − 3/6, and its x̂0 is the oracle's posterior mean there
    alpha, sigma = diffusion.alpha_sigma(jnp.float32(0.5))
    eps_hat = oracle(path["x"][2], jnp.full((4,), 0.5))
    np.testing.assert_allclose(path["x0"][3], (path["x"][2] - sigma * eps_hat) / alpha, atol=1e-4)


def test_t_start_and_other_schedules():
    """t_start = 0.95 with the author's offset cosine schedule (σ_0 = 0.31, so the result is the posterior mean
    from the extra denoiser call at t_end, with a smaller spectrum than the data's) and DDPM's linear schedule
    (σ_0 = 0, x returned as is): the exact spectra of a deterministic flow from σ_start ε."""
    for schedule, t_start in [("offset_cosine", 0.95), ("linear", 1.0)]:
        diffusion, oracle = _setup("cloud", schedule=schedule, prediction="v")
        probe = _unit_probe(diffusion.noise)
        out = cj.sample(oracle, diffusion, jax.random.key(0), probe.shape, 400, t_start=t_start, init_noise=probe)
        (a_s, s_s), (a_e, s_e) = diffusion.alpha_sigma(t_start), diffusion.alpha_sigma(0.0)
        N = diffusion.noise.fourier_variance(H, W)
        # start σ_s ε; the flow scales the marginal's variance α²C + σ²N from t_start to 0; the final posterior
        # mean at t = 0 multiplies by α_e C / (α_e² C + σ_e² N) (= 1 when σ_e = 0)
        marginal_s, marginal_e = a_s**2 * C + s_s**2 * N, a_e**2 * C + s_e**2 * N
        expected = s_s**2 * N / marginal_s * marginal_e * (a_e * C / marginal_e) ** 2
        np.testing.assert_allclose(np.asarray(rfft_real(out)[0, ..., 0] ** 2), expected, rtol=0.03)


def test_jit_and_vmap():
    diffusion, oracle = _SETUPS["cloud"]
    keys = jax.random.split(jax.random.key(2), 3)

    def run(key):
        return cj.sample(oracle, diffusion, key, SMALL, steps=6, method="ddpm")

    looped = jnp.stack([run(k) for k in keys])
    np.testing.assert_allclose(jax.jit(jax.vmap(run))(keys), looped, atol=1e-5)


def test_bad_input_raises():
    diffusion, oracle = _SETUPS["white"]
    shape, key = (2, H, W, 1), jax.random.key(0)
    bad = [
        dict(steps=0),
        dict(steps=2.5),
        dict(steps=3, method="euler"),
        dict(steps=3, t_start=0.0),
        dict(steps=3, t_start=1.5),
        dict(steps=3, t_end=1.0),
        dict(steps=3, eta=1.5),
        dict(steps=3, method="dpm++2m", eta=0.5),
        dict(steps=3, method="dpm++2m", stochasticity=0.5),
        dict(steps=3, init_noise=jnp.zeros((1, H, W, 1))),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            cj.sample(oracle, diffusion, key, shape, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        cj.sample(oracle, diffusion, key, (H, W, 1), steps=3)


def _stepwise(denoise_fn, process, key, shape, steps, method, eta=0.0, stochasticity=0.0, init_noise=None, **times):
    """The reference: the grid, keys and step rule of :func:`cloudjax.sample`, one eager Python step at a time."""
    sampler = METHODS[method]
    stages = process.stages(sampler.steps or steps, **times)
    ts = np.concatenate(stages)
    stage = np.repeat(np.arange(len(stages)), [len(s) for s in stages])  # the stage of each time
    coef = process.coefficients(jnp.asarray(ts))
    at = lambda i: jax.tree.map(lambda c: c[i], coef)
    n, stochastic = len(ts) - 1, method == "ddpm" or eta > 0 or stochasticity > 0
    key_init, key_steps = jax.random.split(key)
    keys = jax.random.split(key_steps, n)
    x, memory = process.prior(key_init, shape, at(0), init_noise), None
    for i in range(n):
        out_shape, t = process.state_shape(shape, stage[i + 1]), jnp.full(shape[:1], ts[i])
        grow = out_shape != x.shape  # a scale-space change step: the network up-samples
        x0, aux = process.predict(denoise_fn(x, t, **({"upsample": True} if grow else {})), x, t)
        if i == 0 or stage[i] != stage[i - 1]:
            memory = sampler.init_memory(x)
        step = Step(x, x0, aux, at(i), at(i + 1), memory, i == n - 1, out_shape)
        key_i = keys[i] if stochastic or grow else None
        x, memory = sampler.step(process, step, key_i, jnp.float32(eta), jnp.float32(stochasticity))
    t = jnp.full(shape[:1], ts[-1])
    return process.output(x, process.predict(denoise_fn(x, t), x, t)[0], at(n))


def _cold_setup():
    gain = jnp.exp(-2 * (np.pi * 0.7) ** 2 * jnp.asarray(cj.wavenumbers(H, W))[..., None] ** 2)
    blur = lambda x, t: cj.irfft_real(gain ** t.astype(jnp.float32)[:, None, None, None] * cj.rfft_real(x))
    restorer = lambda x, t: 0.9 * x + 0.1 * jnp.tanh(x) * t[:, None, None, None]  # imperfect: the steps matter
    start = blur(jax.random.normal(jax.random.key(0), SMALL), jnp.full(SMALL[:1], 8))
    return restorer, cj.ColdDiffusion(blur, 8), {"init_noise": start}


def _scale_space_setup():
    def net(x, t, upsample=False):  # some x̂0 at the output's resolution
        y = 0.7 * x / (1.0 + t[:, None, None, None])
        return jnp.repeat(jnp.repeat(y, 2, 1), 2, 2) if upsample else y

    return net, ScaleSpaceDiffusion(image_size=16, levels=3, num_steps=100, noise=cj.PowerLawNoise(1.0, pad=1)), {}


@pytest.mark.parametrize(
    "setup, method, kw",
    [
        ("cloud", "ddim", {}),
        ("cloud", "ddpm", {"stochasticity": 0.3}),
        ("white", "dpm++2m", {}),
        ("white", "ddim", {"eta": 0.5, "t_start": 0.95, "t_end": 0.1}),
        ("cold", "cold", {}),
        ("cold", "cold_naive", {"t_start": 0.5}),
        ("scale_space", "ddpm", {}),
    ],
)
def test_one_program_equals_the_step_by_step_loop(setup, method, kw):
    """For every process (Gaussian, cold, scale space with its three stages and change steps), sampler and a
    few step counts, the one compiled loop (traced grid and trip counts) gives the samples of the plain loop. The
    Gaussian oracle predicts v: ε-prediction's x̂0 = (x − σ ε̂) / α divides by α_1 = 5.5e-4 at t = 1, which turns
    float32 rounding (it differs between any two compilations of the same arithmetic) into ~10 % of x̂0."""
    if setup == "cold":
        denoise_fn, process, extra = _cold_setup()
        shape, all_steps = SMALL, (1, 3, 4)
    elif setup == "scale_space":
        denoise_fn, process, extra = _scale_space_setup()
        shape, all_steps = (2, 16, 16, 1), (3, 9)  # 3: the finer stages one time each (loops of 0 steps)
    else:
        process, denoise_fn = _setup(setup, prediction="v")
        shape, all_steps, extra = SMALL, (1, 4, 9), {}
    for steps in all_steps:
        key = jax.random.key(steps)
        out = cj.sample(denoise_fn, process, key, shape, steps, method, **kw, **extra)
        reference = _stepwise(denoise_fn, process, key, shape, steps, method, **kw, **extra)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5, err_msg=f"{steps} steps")


def test_one_compile_per_sampler_whatever_the_steps():
    """Steps 4, 9 and 19 share one program per sampler; new parameters of a ``Partial`` denoiser add none; a
    trajectory (static length) compiles per step count; and each program traces the denoiser three times (the
    sampler memory's shape, the loop body, the last prediction), not once per step (``chex.assert_max_traces``:
    5 programs, 15 traces)."""
    diffusion, oracle = _SETUPS["cloud"]
    chex.clear_trace_counter()
    apply = chex.assert_max_traces(lambda scale, x, t: scale * oracle(x, t), n=15)  # a new function: new programs
    before = _sample._cache_size()
    for method in ("ddim", "ddpm", "dpm++2m"):
        for steps, scale in [(4, 1.0), (9, 0.9), (19, 1.1)]:
            denoise_fn = jax.tree_util.Partial(apply, jnp.float32(scale))
            cj.sample(denoise_fn, diffusion, jax.random.key(0), SMALL, steps, method)
    assert _sample._cache_size() - before == 3
    for steps in (4, 9):
        cj.sample(denoise_fn, diffusion, jax.random.key(0), SMALL, steps, return_trajectory=True)
    assert _sample._cache_size() - before == 5
