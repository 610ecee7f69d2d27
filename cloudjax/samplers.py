"""Samplers for :class:`~cloudjax.diffusion.GaussianDiffusion` over any noise model: DDIM, DDPM, DPM-Solver++(2M).

Why they hold for correlated (cloud) noise. The forward process is ``x_t = α_t x0 + σ_t ε`` with ε ~ N(0, Σ).
Its posterior ``q(x_s | x_t, x0)`` (s < t) is Gaussian with mean ``α_s x0 + √(σ_s² − σ̃²) ε`` and covariance
``σ̃² Σ`` where ``σ̃² = (σ_s² / σ_t²)(σ_t² − (α_t / α_s)² σ_s²)``: the same algebra as for white noise, because
N(0, cΣ) is closed under the linear combinations involved. Every update below is a linear combination of x_t,
the prediction x̂0 (equivalently ε̂) and fresh noise drawn from the *same* noise model, so each step keeps the
noise part of x_s distributed as N(0, σ_s² Σ) and nothing here assumes Σ = I.

Methods (registry :data:`METHODS`, name → step function):

* ``"ddim"`` (Song et al.): ``x_s = α_s x̂0 + a ε̂ + b z`` with z a fresh noise-model draw,
  ``σ_η = η σ̃``, ``a = √(σ_s² − σ_η²) cos(sπ/2)``, ``b = √(σ_s² − a²)``. η = 0 is the deterministic
  probability-flow discretisation, η = 1 ancestral sampling; ``stochasticity`` s is the Cloud Diffusion
  author's mixing ε' = cos(sπ/2) ε̂ + sin(sπ/2) ε_new of the predicted noise with fresh noise.
* ``"ddpm"``: ancestral sampling from the posterior with x0 = x̂0, i.e. DDIM with η = 1.
* ``"dpm++2m"`` (Lu et al. 2022): the second-order multistep solver of the probability-flow ODE in
  λ = log(α/σ), ``x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D`` with h = λ_s − λ_t and
  ``D = x̂0 + (h / 2h_prev)(x̂0 − x̂0_prev)``; first order (D = x̂0) on the first step, which has no history,
  and on the last, whose λ step into t ≈ 0 is too long to extrapolate over (Lu et al.'s "lower order final").

Start. At ``t_start`` the state is ``x = σ_start ε``, ε from the noise model: the noise part of the marginal
``α x0 + σ ε``; its data part has mean α E[x0] = 0 for normalised data and is dropped (for t_start = 1 it is
≤ α_1 ≈ 0.0006 of the signal with the cosine schedule; the author started cloud sampling at t = 0.95).
End. After the last step the sampler calls the denoiser once more at ``t_end`` and returns x̂0 (x itself
where σ(t_end) = 0): ``steps + 1`` network evaluations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from cloudjax.diffusion import check_output
from cloudjax.schedules import time_grid

__all__ = ["sample", "METHODS"]


class Step(NamedTuple):
    """One step t → s: the state, the predictions at t, the schedule at both ends and the multistep memory."""

    x: jnp.ndarray
    x0: jnp.ndarray
    eps: jnp.ndarray
    alpha_t: jnp.ndarray
    sigma_t: jnp.ndarray
    alpha_s: jnp.ndarray
    sigma_s: jnp.ndarray
    prev_x0: jnp.ndarray  # x̂0 of the previous step (zeros on the first)
    prev_h: jnp.ndarray  # λ step of the previous step (0 on the first)
    last: jnp.ndarray  # bool, the final step


def _ddim(step: Step, fresh: Callable[[], jnp.ndarray] | None, eta, stochasticity) -> jnp.ndarray:
    """DDIM with η and the author's stochasticity s; η = 1 is DDPM's ancestral step. ``fresh`` draws noise
    (None when η = s = 0)."""
    a_t, s_t, a_s, s_s = step.alpha_t, step.sigma_t, step.alpha_s, step.sigma_s
    posterior_var = (s_s**2 / s_t**2) * jnp.maximum(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
    a = jnp.sqrt(jnp.maximum(s_s**2 - eta**2 * posterior_var, 0.0)) * jnp.cos(stochasticity * math.pi / 2)
    x = a_s * step.x0 + a * step.eps
    if fresh is None:
        return x
    return x + jnp.sqrt(jnp.maximum(s_s**2 - a**2, 0.0)) * fresh()


def _dpmpp_2m(step: Step, fresh: Callable[[], jnp.ndarray] | None, eta, stochasticity) -> jnp.ndarray:
    """DPM-Solver++(2M), data-prediction form; deterministic."""
    del fresh, eta, stochasticity
    h = (jnp.log(step.alpha_s) - jnp.log(step.sigma_s)) - (jnp.log(step.alpha_t) - jnp.log(step.sigma_t))
    second_order = (step.prev_h > 0) & ~step.last
    c = jnp.where(second_order, h / (2.0 * jnp.where(second_order, step.prev_h, 1.0)), 0.0)
    d = step.x0 + c * (step.x0 - step.prev_x0)
    return (step.sigma_s / step.sigma_t) * step.x - step.alpha_s * jnp.expm1(-h) * d


def _ddpm(step: Step, fresh: Callable[[], jnp.ndarray] | None, eta, stochasticity) -> jnp.ndarray:
    """DDPM's ancestral step: a draw from q(x_s | x_t, x0 = x̂0), which is DDIM with η = 1."""
    del eta
    return _ddim(step, fresh, 1.0, stochasticity)


# name → step(step: Step, fresh: () -> noise draw or None, eta, stochasticity) -> x_s
METHODS = {"ddim": _ddim, "ddpm": _ddpm, "dpm++2m": _dpmpp_2m}


def _check(method: str, eta: float, stochasticity: float, shape) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if eta != 0 and method != "ddim":
        raise ValueError(f"eta applies to method 'ddim' only (got method {method!r}, eta {eta})")
    if not 0.0 <= stochasticity <= 1.0:
        raise ValueError(f"stochasticity must be in [0, 1], got {stochasticity}")
    if stochasticity != 0 and method == "dpm++2m":
        raise ValueError("stochasticity applies to 'ddim' and 'ddpm', not the ODE solver 'dpm++2m'")
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be (batch, H, W, C) with positive sizes, got {tuple(shape)}")


def sample(
    denoise_fn: Callable,
    diffusion,
    key: jax.Array,
    shape: tuple[int, int, int, int],
    steps: int,
    method: str = "ddim",
    eta: float = 0.0,
    t_start: float = 1.0,
    t_end: float = 0.0,
    stochasticity: float = 0.0,
    return_trajectory: bool = False,
    init_noise: jnp.ndarray | None = None,
):
    """Draw samples by integrating the reverse process from ``t_start`` to ``t_end`` in ``steps`` uniform steps.

    Args:
      denoise_fn: ``denoise_fn(x_t, t)`` → the diffusion's prediction (ε, x0 or v) for x_t ``shape`` and t
        ``(batch,)`` float32. The loop is compiled once per (function, shape, steps, method, stochastic or
        not) and reused for the same function object, so values a function closes over are compiled in as
        constants: pass parameters that change (a model being trained) as arguments,
        ``jax.tree_util.Partial(apply, params)`` with ``apply(params, x_t, t)``.
      diffusion: a :class:`~cloudjax.diffusion.GaussianDiffusion`.
      key: PRNG key; the same key gives the same samples.
      shape: ``(batch, H, W, C)``.
      steps: number of steps, >= 1.
      method: a name in :data:`METHODS`.
      eta: DDIM's η in [0, 1] (method ``"ddim"`` only).
      t_start: start time in (0, 1]; t_end: end time in [0, t_start).
      stochasticity: the author's s in [0, 1] (``"ddim"`` and ``"ddpm"``).
      return_trajectory: also return ``{"x": x_s after each step, "x0": x̂0 at each step}``, each
        ``(steps, *shape)``.
      init_noise: the starting ε of ``shape`` (the state at t_start is σ_start ε); default a draw from the
        noise model. Pass the same ε to compare methods or step counts on equal footing.

    Returns:
      the final denoised x̂0 ``shape`` (float32), or ``(x̂0, trajectory)``.
    """
    shape = tuple(int(s) for s in shape)
    _check(method, eta, stochasticity, shape)
    ts = time_grid(steps, t_start, t_end)
    if init_noise is not None and jnp.shape(init_noise) != shape:
        raise ValueError(f"init_noise must have shape {shape}, got {jnp.shape(init_noise)}")
    if not isinstance(denoise_fn, Partial):
        denoise_fn = Partial(denoise_fn)
    stochastic = method == "ddpm" or eta > 0 or stochasticity > 0
    options = (shape, method, stochastic, bool(return_trajectory))
    return _sample(denoise_fn, diffusion, key, ts, init_noise, jnp.float32(eta), jnp.float32(stochasticity), *options)


@functools.partial(jax.jit, static_argnums=(7, 8, 9, 10))
def _sample(
    denoise_fn, diffusion, key, ts, init_noise, eta, stochasticity, shape, method, stochastic, return_trajectory
):
    step_fn = METHODS[method]
    batch = shape[0]
    alpha, sigma = diffusion.alpha_sigma(ts)

    def predict(x, t):
        t = jnp.full((batch,), t, jnp.float32)
        return diffusion.to_x0_eps(check_output(denoise_fn(x, t), x), x, t)

    def body(carry, inputs):
        x, prev_x0, prev_h = carry
        t, a_t, s_t, a_s, s_s, step_key, last = inputs
        x0, eps = predict(x, t)
        step = Step(x, x0, eps, a_t, s_t, a_s, s_s, prev_x0, prev_h, last)
        fresh = (lambda: diffusion.noise.sample(step_key, shape)) if stochastic else None
        x_next = step_fn(step, fresh, eta, stochasticity)
        h = (jnp.log(a_s) - jnp.log(s_s)) - (jnp.log(a_t) - jnp.log(s_t))
        return (x_next, x0, h), ({"x": x_next, "x0": x0} if return_trajectory else None)

    key_init, key_steps = jax.random.split(key)
    x = sigma[0] * (diffusion.noise.sample(key_init, shape) if init_noise is None else init_noise)
    steps = len(ts) - 1
    last = jnp.arange(steps) == steps - 1
    inputs = (ts[:-1], alpha[:-1], sigma[:-1], alpha[1:], sigma[1:], jax.random.split(key_steps, steps), last)
    (x, _, _), trajectory = jax.lax.scan(body, (x, jnp.zeros(shape, jnp.float32), jnp.zeros((), jnp.float32)), inputs)
    x0 = jnp.where(sigma[-1] > 0, predict(x, ts[-1])[0], x)
    return (x0, trajectory) if return_trajectory else x0
