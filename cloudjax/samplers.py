"""One sampler loop for every forward process (:mod:`cloudjax.process`), and the step rules by name.

Gaussian processes (:class:`~cloudjax.diffusion.GaussianDiffusion`, any noise model): DDIM, DDPM,
DPM-Solver++(2M). Cold processes (:class:`~cloudjax.cold.ColdDiffusion`): Cold Diffusion's Algorithms 1 and 2
and the one-shot reconstruction.

Why they hold for correlated (cloud) noise. The forward process is ``x_t = α_t x0 + σ_t ε`` with ε ~ N(0, Σ).
Its posterior ``q(x_s | x_t, x0)`` (s < t) is Gaussian with mean ``α_s x0 + √(σ_s² − σ̃²) ε`` and covariance
``σ̃² Σ`` where ``σ̃² = (σ_s² / σ_t²)(σ_t² − (α_t / α_s)² σ_s²)``: the same algebra as for white noise, because
N(0, cΣ) is closed under the linear combinations involved. Every update below is a linear combination of x_t,
the prediction x̂0 (equivalently ε̂) and fresh noise drawn from the *same* noise model, so each step keeps the
noise part of x_s distributed as N(0, σ_s² Σ) and nothing here assumes Σ = I.

Methods (:data:`METHODS`, name → :class:`Sampler`; which process kinds each drives is ``registry.SAMPLERS``):

* ``"ddim"`` (Song et al.): ``x_s = α_s x̂0 + a ε̂ + b z`` with z a fresh noise-model draw,
  ``σ_η = η σ̃``, ``a = √(σ_s² − σ_η²) cos(sπ/2)``, ``b = √(σ_s² − a²)``. η = 0 is the deterministic
  probability-flow discretisation, η = 1 ancestral sampling; ``stochasticity`` s is the Cloud Diffusion
  author's mixing ε' = cos(sπ/2) ε̂ + sin(sπ/2) ε_new of the predicted noise with fresh noise.
* ``"ddpm"``: ancestral sampling from the posterior with x0 = x̂0, i.e. DDIM with η = 1.
* ``"dpm++2m"`` (Lu et al. 2022): the second-order multistep solver of the probability-flow ODE in
  λ = log(α/σ), ``x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D`` with h = λ_s − λ_t and
  ``D = x̂0 + (h / 2h_prev)(x̂0 − x̂0_prev)``; first order (D = x̂0) on the first step, which has no history,
  and on the last, whose λ step into t ≈ 0 is too long to extrapolate over (Lu et al.'s "lower order final").

* ``cold`` (Cold Diffusion's Algorithm 2): ``x_s = x_t − D(x̂0, t) + D(x̂0, s)``. An error δ in x̂0 that D
  keeps (a smooth one, under blur) cancels between the two terms, so the result stays near D's orbit of x0.
* ``cold_naive`` (Algorithm 1): ``x_s = D(x̂0, s)``.
* ``direct``: one step T → 0 of either, i.e. x̂0 = R(x_T, T) (it ignores ``steps``).

Start. Gaussian: at ``t_start`` the state is ``x = σ_start ε``, ε from the noise model: the noise part of the
marginal ``α x0 + σ ε``; its data part has mean α E[x0] = 0 for normalised data and is dropped (for t_start = 1
it is ≤ α_1 ≈ 0.0006 of the signal with the cosine schedule; the author started cloud sampling at t = 0.95).
Cold: the degraded images (``init_noise``), or a draw from the process's prior (generation from blur).
End. Gaussian: after the last step the sampler calls the denoiser once more at ``t_end`` and returns x̂0 (x
itself where σ(t_end) = 0): ``steps + 1`` network evaluations. Cold: the last state (``steps`` evaluations).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from cloudjax import registry
from cloudjax.diffusion import check_output
from cloudjax.process import NetworkUpsampling, OwnGaussianStep

__all__ = ["sample", "METHODS", "Sampler", "Step"]


class Step(NamedTuple):
    """One step t → s as a step rule sees it."""

    x: jnp.ndarray  # the state at t
    x0: jnp.ndarray  # x̂0 predicted at t
    aux: Any  # the rest of the process's prediction (Gaussian: ε̂; cold: None)
    at_t: Any  # process.coefficients at t (Gaussian: (α_t, σ_t); cold: the integer step)
    at_s: Any  # … and at s
    memory: Any  # the rule's memory from the previous step (Sampler.init_memory on a stage's first step)
    last: jnp.ndarray  # bool, the final step
    shape: tuple[int, ...]  # the state's (static) shape at s: process.state_shape of s's stage


class Sampler(NamedTuple):
    """A step rule ``step(process, step, key, eta, stochasticity) → (x_s, memory)`` (``key`` is None for a
    deterministic run); ``init_memory(x0)`` its memory before a stage's first step; ``steps`` a fixed step count
    (None: the caller's)."""

    step: Callable
    init_memory: Callable = lambda x0: None
    steps: int | None = None


def _ddim(process, step: Step, key, eta, stochasticity):
    """DDIM with η and the author's stochasticity s; η = 1 is DDPM's ancestral step. A process whose α is an
    operator (blurring: a gain per Π mode) or whose state changes shape (scale space) gives its own update as
    ``process.gaussian_step(step, key, eta, stochasticity)``; None there means the rule below."""
    x = process.gaussian_step(step, key, eta, stochasticity) if isinstance(process, OwnGaussianStep) else None
    if x is not None:
        return x, None
    (a_t, s_t), (a_s, s_s) = step.at_t, step.at_s
    posterior_var = (s_s**2 / s_t**2) * jnp.maximum(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
    a = jnp.sqrt(jnp.maximum(s_s**2 - eta**2 * posterior_var, 0.0)) * jnp.cos(stochasticity * math.pi / 2)
    x = a_s * step.x0 + a * step.aux
    if key is None:
        return x, None
    return x + jnp.sqrt(jnp.maximum(s_s**2 - a**2, 0.0)) * process.noise.sample(key, x.shape), None


def _ddpm(process, step: Step, key, eta, stochasticity):
    """DDPM's ancestral step: a draw from q(x_s | x_t, x0 = x̂0), which is DDIM with η = 1."""
    del eta
    return _ddim(process, step, key, 1.0, stochasticity)


def _dpmpp_2m(process, step: Step, key, eta, stochasticity):
    """DPM-Solver++(2M), data-prediction form; deterministic. Memory: (x̂0, h) of the previous step."""
    del process, key, eta, stochasticity
    (a_t, s_t), (a_s, s_s) = step.at_t, step.at_s
    prev_x0, prev_h = step.memory
    h = (jnp.log(a_s) - jnp.log(s_s)) - (jnp.log(a_t) - jnp.log(s_t))
    second_order = (prev_h > 0) & ~step.last
    c = jnp.where(second_order, h / (2.0 * jnp.where(second_order, prev_h, 1.0)), 0.0)
    d = step.x0 + c * (step.x0 - prev_x0)
    return (s_s / s_t) * step.x - a_s * jnp.expm1(-h) * d, (step.x0, h)


def _cold(process, step: Step, key, eta, stochasticity):
    """Cold Diffusion's Algorithm 2: ``x_s = x_t − D(x̂0, t) + D(x̂0, s)``."""
    del key, eta, stochasticity
    t, s = (jnp.full(step.x.shape[:1], i) for i in (step.at_t, step.at_s))
    return step.x - process.degrade(step.x0, t) + process.degrade(step.x0, s), None


def _cold_naive(process, step: Step, key, eta, stochasticity):
    """Cold Diffusion's Algorithm 1: ``x_s = D(x̂0, s)``."""
    del key, eta, stochasticity
    return process.degrade(step.x0, jnp.full(step.x.shape[:1], step.at_s)), None


METHODS = {
    "ddim": Sampler(_ddim),
    "ddpm": Sampler(_ddpm),
    "dpm++2m": Sampler(_dpmpp_2m, lambda x0: (jnp.zeros(x0.shape, x0.dtype), jnp.zeros((), jnp.float32))),
    # Cold Diffusion's Algorithm 2, Algorithm 1, the one-shot restoration
    **dict(cold=Sampler(_cold), cold_naive=Sampler(_cold_naive), direct=Sampler(_cold_naive, steps=1)),
}


def _check(process, method: str, eta: float, stochasticity: float, shape) -> None:
    registry.check("method", method, METHODS)
    kinds = registry.SAMPLERS[method]
    if process.kind not in kinds:
        raise ValueError(f"method {method!r} drives {' and '.join(kinds)} processes, not {type(process).__name__}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if eta != 0 and method != "ddim":
        raise ValueError(f"eta applies to method 'ddim' only (got method {method!r}, eta {eta})")
    if not 0.0 <= stochasticity <= 1.0:
        raise ValueError(f"stochasticity must be in [0, 1], got {stochasticity}")
    if stochasticity != 0 and method not in ("ddim", "ddpm"):
        raise ValueError(f"stochasticity applies to 'ddim' and 'ddpm', not {method!r}")
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
    labels: jnp.ndarray | None = None,
    guidance: float = 0.0,
):
    """Draw samples by running the reverse process from ``t_start`` to ``t_end`` in ``steps`` steps.

    Args:
      denoise_fn: ``denoise_fn(x_t, t)`` → the process's prediction (ε, x0 or v) for x_t ``shape`` and t
        ``(batch,)`` float32 in [0, 1]. The loop is compiled once per (function, process, shape, method,
        stochastic or not), whatever ``steps`` (up to 1023; one more program per doubling beyond), and reused
        for the same function object, so values a function closes over are compiled in as constants: pass
        parameters that change (a model being trained) as arguments, ``jax.tree_util.Partial(apply, params)``
        with ``apply(params, x_t, t)``.
      diffusion: a forward process (:class:`~cloudjax.process.ForwardProcess`): ``GaussianDiffusion``,
        ``ColdDiffusion``, …
      key: PRNG key; the same key gives the same samples.
      shape: ``(batch, H, W, C)``.
      steps: number of steps, >= 1 (a cold process takes at most T·(t_start − t_end); ``"direct"`` takes 1).
      method: a name in :data:`METHODS` that drives this process (``registry.SAMPLERS``).
      eta: DDIM's η in [0, 1] (method ``"ddim"`` only).
      t_start: start time in (0, 1]; t_end: end time in [0, t_start).
      stochasticity: the author's s in [0, 1] (``"ddim"`` and ``"ddpm"``).
      return_trajectory: also return ``{"x": x_s after each step, "x0": x̂0 at each step}``, each
        ``(steps, *shape)`` (a list of such dicts, one per segment, when the process has several stages);
        its length is static, so this mode compiles once per ``steps``.
      init_noise: the start input of ``shape``: Gaussian, the ε of the start state σ_start ε (default a draw
        from the noise model; pass the same ε to compare methods or step counts on equal footing); cold, the
        degraded images x_{t_start} (default a draw from the process's prior, if it has one).
      labels: class labels ``(batch,)`` (int; −1: no class) of a class-conditional network, called as
        ``denoise_fn(x_t, t, labels=labels)``; None: the network is called without labels.
      guidance: classifier-free guidance w >= 0 (needs ``labels``): the network output is
        ``uncond + (1 + w)(cond − uncond)`` in the process's own prediction space (ε, v or x0), from one call on
        the doubled batch (the labels, then "no class"); w = 0 is plain conditional sampling (one call).

    Returns:
      the samples ``shape`` (float32), or ``(samples, trajectory)``.
    """
    shape = tuple(int(s) for s in shape)
    _check(diffusion, method, eta, stochasticity, shape)
    if labels is not None:
        labels = jnp.asarray(labels)
        if labels.shape != shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers of shape ({shape[0]},), got {labels.dtype} {labels.shape}")
    if not guidance >= 0 or (guidance and labels is None):
        raise ValueError(f"guidance must be >= 0 and needs labels, got {guidance} with labels {labels is not None}")
    stages = diffusion.stages(METHODS[method].steps or steps, t_start, t_end)
    ts = np.concatenate(stages)
    bounds = np.cumsum([0, *map(len, stages)], dtype=np.int32)  # stage k holds ts[bounds[k]:bounds[k + 1]]
    # a trajectory has a static length: the steps inside each stage are then static too (one compile per grid)
    inside = tuple(len(stage) - 1 for stage in stages) if return_trajectory else None
    ts = np.pad(ts, (0, _grid_size(len(ts)) - len(ts)), mode="edge")
    if not isinstance(denoise_fn, Partial):
        denoise_fn = Partial(denoise_fn)
    stochastic = method == "ddpm" or eta > 0 or stochasticity > 0
    eta, stochasticity = jnp.float32(eta), jnp.float32(stochasticity)
    args = (jnp.asarray(ts), jnp.asarray(bounds), init_noise, eta, stochasticity, labels, jnp.float32(guidance))
    return _sample(denoise_fn, diffusion, key, *args, shape, method, stochastic, inside, bool(guidance))


def _grid_size(points: int) -> int:
    """The padded length of a grid of ``points`` times: a power of two, at least 1024 (one program serves every
    step count up to 1023)."""
    return max(1024, 1 << (points - 1).bit_length())


@functools.partial(jax.jit, static_argnums=tuple(range(10, 15)))
def _sample(
    denoise_fn,
    process,
    key,
    ts,
    bounds,
    init_noise,
    eta,
    stochasticity,
    labels,
    guidance,
    shape,
    method,
    stochastic,
    inside,
    guided,
):
    """The loop. ``ts`` the grid padded with its last time, ``bounds`` ``(stages + 1,)`` the stages' start indices
    and the grid's length, both traced: a ``lax.fori_loop`` of a traced trip count per stage runs exactly the
    grid's steps. ``inside``: None, or the static steps inside each stage, when a trajectory is returned (a
    ``lax.scan`` of that length). ``guided``: ``guidance`` (traced) is not 0."""
    sampler = METHODS[method]
    batch = shape[0]
    coef = process.coefficients(ts)
    at = lambda i: jax.tree.map(lambda c: c[i], coef)
    n = bounds[-1] - 1  # the number of steps

    def network(x, t, **kw):  # conditional halves and "no class" halves in one batch, then guided
        if labels is None or not guided:
            return denoise_fn(x, t, **kw) if labels is None else denoise_fn(x, t, labels=labels, **kw)
        twice = lambda a: jnp.concatenate([a, a])  # noqa: E731
        both = denoise_fn(twice(x), twice(t), labels=jnp.concatenate([labels, jnp.full_like(labels, -1)]), **kw)
        cond, uncond = jnp.split(both, 2)
        return uncond + (1 + guidance) * (cond - uncond)

    def predict(x, t, out_shape=None):  # into a larger state, a process may have the network up-sample
        t = jnp.full((batch,), t, jnp.float32)
        grow = out_shape not in (None, x.shape) and isinstance(process, NetworkUpsampling)
        kw = {"upsample": True} if grow else {}
        return process.predict(check_output(network(x, t, **kw), out_shape if grow else x.shape), x, t)

    def body(carry, i, stage):  # step i: ts[i] → ts[i + 1], a time in ``stage``
        x, memory = carry
        out_shape = process.state_shape(shape, stage)
        x0, aux = predict(x, ts[i], out_shape)
        step = Step(x, x0, aux, at(i), at(i + 1), memory, i == n - 1, out_shape)
        fresh = stochastic or out_shape != x.shape  # a resolution increase always draws the new detail
        x_next, memory = sampler.step(process, step, keys[i] if fresh else None, eta, stochasticity)
        return (x_next, memory), {"x": x_next, "x0": x0}

    key_init, key_steps = jax.random.split(key)
    x = process.prior(key_init, shape, at(0), init_noise)
    keys = jax.random.split(key_steps, len(ts) - 1)  # keys[i] is split(key_steps, n)[i] for every n > i
    segments = []
    for k in range(len(bounds) - 1):
        memory = sampler.init_memory(jax.eval_shape(lambda x, t=ts[bounds[k]]: predict(x, t)[0], x))
        if inside is None:
            in_stage = lambda i, carry, k=k: body(carry, i, k)[0]
            x, memory = jax.lax.fori_loop(bounds[k], bounds[k + 1] - 1, in_stage, (x, memory))
        elif inside[k]:
            in_stage = functools.partial(body, stage=k)
            (x, memory), trajectory = jax.lax.scan(in_stage, (x, memory), bounds[k] + jnp.arange(inside[k]))
            segments.append(trajectory)
        if k < len(bounds) - 2:  # the step into the next stage, which may change the state's shape
            (x, _), trajectory = body((x, memory), bounds[k + 1] - 1, k + 1)
            segments.append(jax.tree.map(lambda a: a[None], trajectory))
    samples = process.output(x, predict(x, ts[n])[0], at(n))
    if inside is None:
        return samples
    return samples, segments[0] if len(segments) == 1 else segments
