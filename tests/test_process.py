"""The forward-process interface: one registry of names, the split loss, and the one sampler loop (kinds, stages)."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import cloudjax as cj
from cloudjax import registry, samplers
from cloudjax.diffusion import error_norm
from cloudjax.models import PRESETS
from cloudjax.schedules import SCHEDULES


def test_registry_names_match_the_objects_behind_them():
    assert set(registry.SAMPLERS) == set(samplers.METHODS)
    assert set(registry.MODELS) == set(PRESETS)
    assert set(registry.SCHEDULES) == {*SCHEDULES, "calibrated"}
    assert registry.samplers_for("cold") == ("direct", "cold_naive", "cold")  # from one-shot to Algorithm 2
    assert registry.parse_loss("pixel") == ("l2", "none") and registry.parse_loss("min_snr") == ("l2", "min_snr")
    assert registry.parse_loss("mahalanobis+min_snr") == ("mahalanobis", "min_snr")
    with pytest.raises(ValueError, match="loss must be one of"):
        registry.parse_loss("l1")  # not a Gaussian loss
    assert isinstance(cj.GaussianDiffusion(), cj.ForwardProcess) and isinstance(cj.WhiteNoise(), cj.NoiseModel)


def test_loss_is_a_norm_times_a_time_weight():
    names = {n: cj.GaussianDiffusion(loss_weighting=n) for n in registry.LOSSES["gaussian"]}
    assert {n: (d.norm, d.time_weighting) for n, d in names.items()} == {
        "pixel": ("l2", "none"),
        "min_snr": ("l2", "min_snr"),
        "l2": ("l2", "none"),
        "l2+min_snr": ("l2", "min_snr"),
        "mahalanobis": ("mahalanobis", "none"),
        "mahalanobis+min_snr": ("mahalanobis", "min_snr"),
    }
    # the new combination: Mahalanobis norm with min-SNR weights is the weight times the Mahalanobis loss
    t, C = jnp.array([0.2, 0.7]), np.ones((4, 4), np.float32)
    d = cj.GaussianDiffusion(cj.PowerLawNoise(1.0, pad=1), prediction="v", loss_weighting="mahalanobis+min_snr")
    plain = dataclasses.replace(d, loss_weighting="mahalanobis")
    weighted = cj.gaussian_oracle_loss(d, C, (4, 4, 1), t=t)
    np.testing.assert_allclose(
        weighted, d.time_weight(t) * cj.gaussian_oracle_loss(plain, C, (4, 4, 1), t=t), rtol=1e-6
    )
    assert not np.allclose(weighted, cj.gaussian_oracle_loss(plain, C, (4, 4, 1), t=t))
    # l1 is a norm of the library (Cold Diffusion's), not a Gaussian loss
    err = jnp.array([[[[3.0]], [[-4.0]]]])
    np.testing.assert_allclose(error_norm("l1", err), [3.5]) and np.testing.assert_allclose(
        error_norm("l2", err), [12.5]
    )
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        cj.GaussianDiffusion(loss_weighting="l1")


def test_sampler_refuses_a_process_it_does_not_drive():
    with pytest.raises(ValueError, match="drives gaussian .*processes, not _Pyramid"):
        cj.sample(lambda x, t: x, _Pyramid(), jax.random.key(0), (1, 4, 4, 1), steps=2, method="ddim")
    with pytest.raises(ValueError, match="drives cold processes, not GaussianDiffusion"):
        cj.sample(lambda x, t: x, cj.GaussianDiffusion(), jax.random.key(0), (1, 4, 4, 1), steps=2, method="cold")
    with pytest.raises(ValueError, match="method must be one of"):
        cj.sample(lambda x, t: x, cj.GaussianDiffusion(), jax.random.key(0), (1, 4, 4, 1), steps=2, method="alg2")


@struct.dataclass
class _Pyramid:
    """A toy multi-stage process: the state at t is the image at 8 / 2^level(t) px, level = ⌊2t + ½⌋."""

    kind: ClassVar[str] = "pyramid"

    def stages(self, steps, t_start, t_end):
        ts = cj.schedules.time_grid(steps, t_start, t_end)
        level = np.floor(2 * ts + 0.5)
        return tuple(ts[level == v] for v in np.unique(level)[::-1])

    def state_shape(self, shape, stage):
        B, H, W, C = shape
        return (B, H // 2 ** (2 - stage), W // 2 ** (2 - stage), C)

    def coefficients(self, ts):
        return ts

    def prior(self, key, shape, at_start, init):
        return init

    def predict(self, out, x_t, t):
        return out, None

    def output(self, x, x0, at_end):
        return x0


def _nearest(process, step, key, eta, stochasticity):
    return jax.image.resize(step.x0, step.shape, "nearest"), None


def test_stages_scan_per_shape_and_step_between(monkeypatch):
    """The loop runs a process whose state changes shape between stages: each step sees its target shape."""
    monkeypatch.setitem(samplers.METHODS, "nearest", samplers.Sampler(_nearest))
    monkeypatch.setitem(registry.SAMPLERS, "nearest", ("pyramid",))
    x0 = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    calls = []

    def oracle(x, t):  # x0 block-averaged to the state's resolution
        calls.append(x.shape)
        f = 8 // x.shape[1]
        return x0.reshape(2, 8 // f, f, 8 // f, f, 1).mean(axis=(2, 4))

    start = oracle(jnp.zeros((2, 2, 2, 1)), None)
    calls.clear()
    out, trajectory = cj.sample(
        oracle,
        _Pyramid(),
        jax.random.key(0),
        x0.shape,
        steps=4,
        method="nearest",
        init_noise=start,
        return_trajectory=True,
    )
    np.testing.assert_allclose(out, x0, atol=1e-6)
    # stages [1, .75] [.5, .25] [0]: scan, step 2→4 px, scan, step 4→8 px (each traced once), final prediction
    assert [seg["x"].shape for seg in trajectory] == [
        (1, 2, 2, 2, 1),
        (1, 2, 4, 4, 1),
        (1, 2, 4, 4, 1),
        (1, 2, 8, 8, 1),
    ]
    assert sorted(set(calls)) == [(2, 2, 2, 1), (2, 4, 4, 1), (2, 8, 8, 1)]


def _block_mean(x):
    return x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3]).mean((2, 4))


@pytest.mark.parametrize(
    "process, closed_form",
    [
        (cj.GaussianDiffusion(), lambda p, x0, t: p.alpha_sigma(t)[0] * x0),
        (cj.ScaleSpaceDiffusion(8, 2, schedule="cosine"), lambda p, x0, t: p.alpha_sigma(t)[0] * _block_mean(x0)),
        (cj.BlurringDiffusion(), None),  # its closed form: tests/test_blurring.py
    ],
    ids=["gaussian", "scale_space", "blurring"],
)
def test_mean_is_the_expectation_of_q_sample(process, closed_form):
    """A Gaussian-family process's ``mean(x0, t)`` is E[x_t | x0]: the average of 4096 draws of q_sample (within 5
    standard errors), at the resolution r(t) (t = 0.8 is the coarse level of 2-level scale space at 8 px)."""
    x0 = 1.0 + jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t, n = 0.8, 4096
    mean = process.mean(x0, t)
    draws = jax.vmap(lambda k: process.q_sample(k, x0, t))(jax.random.split(jax.random.key(1), n))
    coarse = isinstance(process, cj.ScaleSpaceDiffusion)
    assert mean.shape == draws.shape[1:] == ((2, 4, 4, 1) if coarse else x0.shape)
    tol = 5 * float(process.alpha_sigma(t)[1]) / np.sqrt(n)
    np.testing.assert_allclose(draws.mean(0), mean, atol=tol)
    assert np.abs(mean).mean() > 3 * tol  # the signal is far above the tolerance
    if closed_form is not None:
        np.testing.assert_allclose(mean, closed_form(process, x0, t), atol=1e-6)


# one process of every registered kind, at 8 px: a new kind must be added here to pass the test below
EVERY_PROCESS = {
    "gaussian": lambda: cj.GaussianDiffusion(),
    "cold": lambda: cj.ColdDiffusion(cj.GaussianBlur([1.0] * 4, 5), 4),
    "scale_space": lambda: cj.ScaleSpaceDiffusion(8, 2, schedule="cosine"),
    "blurring": lambda: cj.BlurringDiffusion(blur_sigma_max=5.0),
}


def _zero_denoiser(x, t, upsample=False):
    """Predicts 0; asked to up-sample (a resolution change), at twice x's size."""
    B, H, W, C = x.shape
    return jnp.zeros((B, 2 * H, 2 * W, C) if upsample else x.shape)


@pytest.mark.parametrize("kind", registry.PROCESSES)
def test_every_registered_process_speaks_the_protocol_and_its_declared_capabilities(kind):
    """The protocol and the optional capabilities (process.py), for every process the registry names: the kind,
    a finite, positive loss for a network that predicts 0, the default sampler from ``prior`` to ``output`` at the
    image shape, and what each declared capability promises (branch probabilities sum to 1, D(x, 0) = x)."""
    from cloudjax.process import Degradation, LossBranches, NetworkUpsampling, OwnGaussianStep

    assert set(EVERY_PROCESS) == set(registry.PROCESSES)
    process = EVERY_PROCESS[kind]()
    assert isinstance(process, cj.ForwardProcess) and process.kind == kind
    x0 = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    loss = float(process.loss(_zero_denoiser, jax.random.key(1), x0))
    assert np.isfinite(loss) and loss > 0  # predicting 0 misses every target
    method = registry.samplers_for(kind)[0]
    init = process.degrade(x0, jnp.full((2,), process.steps)) if kind == "cold" else None
    out = cj.sample(_zero_denoiser, process, jax.random.key(2), x0.shape, steps=2, method=method, init_noise=init)
    assert out.shape == x0.shape and np.isfinite(np.asarray(out)).all()
    if isinstance(process, LossBranches):
        np.testing.assert_allclose(np.sum(process.loss_branches), 1.0, rtol=1e-6)
    if isinstance(process, Degradation):
        np.testing.assert_array_equal(process.degrade(x0, jnp.zeros((2,), jnp.int32)), x0)
    assert isinstance(process, NetworkUpsampling) == (kind == "scale_space")  # the one whose state grows
    assert isinstance(process, OwnGaussianStep) == (kind in ("scale_space", "blurring"))
