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
from cloudjax.process import Degradation
from cloudjax.samplers import sample

if TYPE_CHECKING:
    from cloudjax.train import Run


@functools.lru_cache
def _denoiser(graphdef: nnx.GraphDef) -> Callable:
    """One function object per network, so the sampler compiles once per (network, process, shape, method)."""
    return lambda params, x, t, **kw: nnx.merge(graphdef, params)(x, t, **kw)


def generate(run: Run, graphdef, params, key: jax.Array, num: int, steps=None, method=None, init_noise=None, **kw):
    """``num`` samples in data units (de-normalised), float32 ``(num, H, W, C)``, from ``params`` (e.g. the EMA).

    ``steps``, ``method`` None: the process spec's default sampler and its steps (DDIM with 50 steps for the
    Gaussian family, Algorithm 2 with T steps for cold runs). ``init_noise``: see :func:`cloudjax.sample` (cold
    restoration: the degraded images, normalised).
    """
    c = run.config
    process = run.diffusion
    steps = c.process.sampler_steps if steps is None else steps
    method = method or c.process.sampler
    kw["init_noise"] = init_noise
    shape = (num, c.image_size, c.image_size, c.channels)
    x = sample(
        jax.tree_util.Partial(_denoiser(graphdef), params), process, key, shape, steps=steps, method=method, **kw
    )
    return np.asarray(run.denormalize(x))


def class_labels(run: Run, num: int, labels=None) -> np.ndarray | None:
    """int32 ``(num,)`` labels for ``num`` samples of a class-conditional run: ``labels`` (class indices or the run's
    class names; default every class) repeated in turn, sample i of class ``labels[i % len(labels)]``. None for an
    unconditional run given no labels; ``ValueError`` for labels it does not have."""
    c, names = run.config, run.class_names or ()
    if not c.class_conditional:
        if labels is not None:
            raise ValueError("labels need a class-conditional run (train it with --class-conditional)")
        return None
    labels = range(c.num_classes) if labels is None else labels
    index = [names.index(x) if x in names else x for x in labels]
    if not index or not all(isinstance(i, int | np.integer) and 0 <= i < c.num_classes for i in index):
        raise ValueError(
            f"labels must be class indices in 0 … {c.num_classes - 1} or the run's class names, got {labels}"
        )
    return np.resize(np.asarray(index, np.int32), num)


def restore(run: Run, graphdef, params, images, steps=None) -> dict[str, np.ndarray]:
    """The restorations of ``images`` ``(N, H, W, C)`` (data units) by a run whose process is a deterministic
    degradation (:class:`~cloudjax.process.Degradation`: Cold Diffusion): ``{name: (N, H, W, C)}``, in order
    "degraded" (D(x, T)), one per sampler of the process from the one-shot to the full algorithm (Cold Diffusion's:
    direct, Algorithm 1, Algorithm 2; ``steps`` each, None: T), "original". Deterministic: no key."""
    process = run.diffusion
    if not isinstance(process, Degradation):
        kind = run.config.process.kind
        raise ValueError(f"restore needs a process that degrades deterministically (cold), not {kind!r}")
    x = np.asarray(images, np.float32)
    z = jnp.asarray(run.normalize(x), jnp.float32)
    degraded = process.degrade(z, jnp.full(z.shape[:1], process.steps))
    out = {"degraded": np.asarray(run.denormalize(degraded))}
    for method in registry.samplers_for(process.kind):
        out[method] = generate(run, graphdef, params, jax.random.key(0), len(x), steps, method, init_noise=degraded)
    return {**out, "original": x}
