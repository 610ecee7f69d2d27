"""Resolution schedules and resize operators of Scale Space Diffusion (:mod:`cloudjax.scale_space`).

Levels. ``L`` levels work at resolutions ``N / 2^ℓ``, ℓ = 0 … L−1 (ℓ = 0 is the data's). Discrete steps
i = 0 … T−1 (the reference's 0-indexed t) sit at continuous times ``t = (i + 1) / T`` of a :mod:`cloudjax.schedules`
schedule; step i runs at level ``ℓ(i)`` from a resolution schedule with ``τ = i / (T − 1)``:

* ``"convex_decay"`` (the reference code's default, γ = 0.5): ``ℓ = ⌊(1 − (1 − τ)^γ) L⌋``, clipped to L − 1;
* ``"equal"``: ``ℓ = ⌊τ L⌋`` (convex_decay with γ = 1): every level gets the same number of steps.

A *change step* c is one with ℓ(c) > ℓ(c − 1) (64 px, L = 4, T = 1000: c = 438, 750, 937).

Resize operators M (one halving):

* ``"mean"``: 2×2 block mean; Mᵀ is nearest up-sampling divided by 4, so ``M Mᵀ = I / 4``;
* ``"bilinear"``: antialiased bilinear (the reference code's), Mᵀ by ``jax.linear_transpose``.

Whitened resize (the posterior at a resolution change): ``B = Σ_t^{−1/2} M Σ_s^{1/2}`` with Σ the noise model's
Π-diagonal covariance at each resolution, its transpose, and functions of the small matrix BBᵀ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.spectral import irfft_real, rfft_real

__all__ = [
    "RESOLUTION_SCHEDULES",
    "RESIZES",
    "level_schedule",
    "change_steps",
    "downsample",
    "downsample_transpose",
    "degrade",
    "lanczos_apply",
    "cov_power",
    "whitened_down",
    "whitened_up",
    "gram_diagonal",
    "gram_apply",
]

RESOLUTION_SCHEDULES = ("convex_decay", "equal")
RESIZES = ("mean", "bilinear")


def level_schedule(num_steps: int, levels: int, schedule: str = "convex_decay", gamma: float = 0.5) -> np.ndarray:
    """``(num_steps,)`` int level ℓ(i) of each step i = 0 … T−1 (see the module docstring)."""
    if schedule not in RESOLUTION_SCHEDULES:
        raise ValueError(f"resolution_schedule must be one of {RESOLUTION_SCHEDULES}, got {schedule!r}")
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels}")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma}")
    tau = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
    frac = 1.0 - (1.0 - tau) ** (gamma if schedule == "convex_decay" else 1.0)
    return np.minimum(np.floor(frac * levels), levels - 1).astype(np.int64)


def change_steps(levels: np.ndarray) -> np.ndarray:
    """Steps c with ``levels[c] > levels[c − 1]`` (where the forward process halves the resolution)."""
    return np.flatnonzero(np.diff(levels) > 0) + 1


def _check_image(x: jnp.ndarray) -> tuple[int, int]:
    if x.ndim < 3 or x.shape[-3] % 2 or x.shape[-2] % 2:
        raise ValueError(f"x must be (..., H, W, C) with even H and W, got shape {x.shape}")
    return x.shape[-3], x.shape[-2]


def downsample(x: jnp.ndarray, resize: str = "mean") -> jnp.ndarray:
    """One halving M: ``(..., H, W, C) → (..., H/2, W/2, C)``, 2×2 block mean or antialiased bilinear."""
    H, W = _check_image(x)
    if resize == "mean":
        return x.reshape(*x.shape[:-3], H // 2, 2, W // 2, 2, x.shape[-1]).mean(axis=(-4, -2))
    if resize == "bilinear":
        return jax.image.resize(x, (*x.shape[:-3], H // 2, W // 2, x.shape[-1]), "linear", antialias=True)
    raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")


def downsample_transpose(y: jnp.ndarray, resize: str = "mean") -> jnp.ndarray:
    """Mᵀ: ``(..., h, w, C) → (..., 2h, 2w, C)``; for ``"mean"`` nearest up-sampling / 4."""
    if resize == "mean":
        return jnp.repeat(jnp.repeat(y, 2, axis=-3), 2, axis=-2) / 4.0
    fine = jax.ShapeDtypeStruct((*y.shape[:-3], 2 * y.shape[-3], 2 * y.shape[-2], y.shape[-1]), y.dtype)
    return jax.linear_transpose(lambda x: downsample(x, resize), fine)(y)[0]


def degrade(x0: jnp.ndarray, level: int, resize: str = "mean") -> jnp.ndarray:
    """``M_{1:ℓ} x0``: ``level`` halvings."""
    for _ in range(level):
        x0 = downsample(x0, resize)
    return x0


def lanczos_apply(matvec: Callable, v: jnp.ndarray, fn: Callable, iterations: int) -> jnp.ndarray:
    """``fn(A) v`` for a symmetric PSD operator A ≈ ``‖v‖ Q fn(T) e_1`` from ``iterations`` Lanczos steps.

    Full re-orthogonalisation; a Krylov space that closes early (exact breakdown) gives the exact result (the
    remaining basis vectors are zero). ``v`` has any shape; ``matvec`` maps that shape to itself.
    """
    n = v.size
    k = int(min(iterations, n))
    flat = lambda u: matvec(u.reshape(v.shape)).reshape(-1)
    norm = jnp.linalg.norm(v)
    q0 = v.reshape(-1) / jnp.where(norm > 0, norm, 1.0)

    def body(j, carry):
        Q, alphas, betas = carry
        w = flat(Q[j])
        a = jnp.dot(Q[j], w)
        w = w - Q.T @ (Q @ w)  # full re-orthogonalisation against every previous vector (twice is enough)
        w = w - Q.T @ (Q @ w)
        b = jnp.linalg.norm(w)
        alive = b > 1e-5 * jnp.maximum(jnp.max(jnp.abs(alphas)), jnp.abs(a))  # else the Krylov space closed
        Q = Q.at[j + 1].set(jnp.where(alive, w / jnp.where(alive, b, 1.0), 0.0))
        return Q, alphas.at[j].set(a), betas.at[j].set(jnp.where(alive, b, 0.0))

    Q = jnp.zeros((k + 1, n), v.dtype).at[0].set(q0)
    Q, alphas, betas = jax.lax.fori_loop(0, k, body, (Q, jnp.zeros(k, v.dtype), jnp.zeros(k, v.dtype)))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    lam, U = jnp.linalg.eigh(T)
    coef = U @ (fn(lam) * U[0])
    return (norm * (Q[:k].T @ coef)).reshape(v.shape)


def cov_power(noise, x: jnp.ndarray, p: float) -> jnp.ndarray:
    """``Σ^p x`` with Σ the ``noise`` model's Π-diagonal covariance at x's resolution (x itself for white noise)."""
    with jax.ensure_compile_time_eval():
        S = np.asarray(noise.fourier_variance(x.shape[-3], x.shape[-2]), np.float64)[..., None]
    if np.all(S == 1.0):
        return x
    return irfft_real(jnp.asarray(S**p, jnp.float32) * rfft_real(x))


def whitened_down(noise, resize: str, v: jnp.ndarray) -> jnp.ndarray:
    """``B v = Σ_t^{−1/2} M Σ_s^{1/2} v``: fine → coarse, whitened."""
    return cov_power(noise, downsample(cov_power(noise, v, 0.5), resize), -0.5)


def whitened_up(noise, resize: str, w: jnp.ndarray) -> jnp.ndarray:
    """``Bᵀ w``: coarse → fine."""
    return cov_power(noise, downsample_transpose(cov_power(noise, w, -0.5), resize), 0.5)


@functools.lru_cache(maxsize=64)
def gram_diagonal(noise, resize: str, coarse: tuple[int, int]) -> np.ndarray:
    """``(h, w, 1)`` Π-space diagonal of BBᵀ at the ``coarse`` resolution ``(h, w)`` (``resize="mean"``): BBᵀ
    commutes with the coarse grid's shifts, so it is Π-diagonal and ``d = Π BBᵀ Πᵀ 1`` (one probe)."""
    probe = lambda p: rfft_real(whitened_down(noise, resize, whitened_up(noise, resize, irfft_real(p))))
    with jax.ensure_compile_time_eval():
        d = np.asarray(jax.jit(probe)(jnp.ones((1, *coarse, 1), jnp.float32)), np.float64)[0]
    d.setflags(write=False)
    return d


def gram_apply(noise, resize: str, iterations: int, w: jnp.ndarray, fn: Callable) -> jnp.ndarray:
    """``fn(BBᵀ) w`` for coarse images w ``(B, h, w, C)``: exact per Π mode ("mean") or by ``iterations`` Lanczos
    steps ("bilinear")."""
    if resize == "mean":
        d = gram_diagonal(noise, resize, tuple(w.shape[-3:-1]))
        if np.allclose(d, d.flat[0], rtol=1e-6):
            return fn(jnp.float32(d.flat[0])) * w
        return irfft_real(fn(jnp.asarray(d, jnp.float32)) * rfft_real(w))
    matvec = lambda u: whitened_down(noise, resize, whitened_up(noise, resize, u[None]))[0]
    return jax.vmap(lambda u: lanczos_apply(matvec, u, fn, iterations))(w)
