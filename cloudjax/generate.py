"""Sampling and restoring from a trained run (used by the ``cloudjax`` command and the studies)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cloudjax import registry
from cloudjax.samplers import sample

if TYPE_CHECKING:
    from cloudjax.train import Run


@functools.lru_cache
def _denoiser(graphdef: nnx.GraphDef) -> Callable:
    """One function object per network, so the sampler compiles once per (network, process, shape, method)."""
    return lambda params, x, t, **kw: nnx.merge(graphdef, params)(x, t, **kw)


def generate(run: Run, graphdef, params, key: jax.Array, num: int, steps=None, method=None, init_noise=None, **kw):
    """``num`` samples in data units (de-normalised), float32 ``(num, H, W, C)``, from ``params`` (e.g. the EMA).

    ``steps`` None: 50 for Gaussian runs, T for cold ones; ``method`` None: "ddim" or "cold". ``init_noise``:
    see :func:`cloudjax.sample` (cold restoration: the degraded images, normalised).
    """
    c = run.config
    process = run.diffusion
    if steps is None:
        steps = process.steps if c.process == "cold" else 50
    method = method or registry.samplers_for(process.kind)[0]
    kw["init_noise"] = init_noise
    shape = (num, c.image_size, c.image_size, c.channels)
    x = sample(
        jax.tree_util.Partial(_denoiser(graphdef), params), process, key, shape, steps=steps, method=method, **kw
    )
    return np.asarray(run.denormalize(x))


RESTORATIONS = ("degraded", "direct", "cold_naive", "cold", "original")


def restore(run: Run, graphdef, params, images, steps=None) -> dict[str, np.ndarray]:
    """A cold run's restorations of ``images`` ``(N, H, W, C)`` (data units): ``{name: (N, H, W, C)}`` for the
    names in :data:`RESTORATIONS`: D(x, T), the direct reconstruction, Algorithm 1, Algorithm 2 (``steps``
    each, None: T), the originals. Deterministic: no key is used."""
    if run.config.process != "cold":
        raise ValueError(f"restore needs a cold run, this one is {run.config.process!r}")
    x = np.asarray(images, np.float32)
    z = jnp.asarray(run.normalize(x), jnp.float32)
    process = run.diffusion
    degraded = process.degrade(z, jnp.full(z.shape[:1], process.steps))
    out = {"degraded": np.asarray(run.denormalize(degraded))}
    for method in ("direct", "cold_naive", "cold"):
        out[method] = generate(run, graphdef, params, jax.random.key(0), len(x), steps, method, init_noise=degraded)
    return {**out, "original": x}
