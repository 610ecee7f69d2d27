"""Blurring diffusion (Hoogeboom & Salimans 2022): a per-frequency gain plus white or cloud noise.

Forward process, per Π mode k (:mod:`cloudjax.spectral`): ``Π x_t = A_t(k) Π x0 + σ_t Π ε`` with
``A_t(k) = α_t d_t(k)`` and the blur gain of a Gaussian blur of std ``σ_B(t) = σ_B,max sin(πt/2)`` pixels,

    d_t(k) = (1 − d_min) exp(−2π² |k|² σ_B(t)²) + d_min      (|k| in cycles per pixel),

so d_0 = 1 (no blur) and every mode keeps at least d_min of its signal. ε comes from any noise model (white or
cloud); its Π covariance is diagonal (``fourier_variance`` N), so every mode is an independent 1-D Gaussian
diffusion with its own signal gain — the Gaussian samplers' algebra holds per mode with α → A(k): DDIM
``X_s = A_s X̂0 + a Ê + b Z`` with ``σ̃²(k) = (σ_s²/σ_t²)(σ_t² − (A_t/A_s)² σ_s²)``, ``a = √(σ_s² − η² σ̃²)``,
``b = √(σ_s² − a²)`` (valid because A_t/A_s <= α_t/α_s: blurring only removes signal).

The network predicts x0 in pixel space. Its Gaussian oracle (zero-mean data with Π variance C) is
``E[Π x0 | x_t] = A C / (A² C + σ² N) · Π x_t`` per mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax.diffusion import GaussianDiffusion, _noise_fourier_std, stratified_times
from cloudjax.noise import WhiteNoise
from cloudjax.process import check_output, check_times
from cloudjax.schedules import time_grid
from cloudjax.spectral import irfft_real, rfft_real, wavenumbers

__all__ = ["BlurringDiffusion", "blurring_oracle"]


def _modes(x: jnp.ndarray, shape) -> jnp.ndarray:
    """``(..., 1, 1, 1)`` per-example values against an ``(B, H, W, C)`` Π grid."""
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(x.shape + (1,) * (len(shape) - x.ndim))


@struct.dataclass
class BlurringDiffusion:
    """Blurring diffusion over any noise model and α/σ schedule; a frozen pytree (``noise`` is its only node).

    Attributes:
      noise: noise model (white or cloud, no ``channel_cov``).
      schedule: α/σ schedule, name or object (as for ``GaussianDiffusion``).
      blur_sigma_max: σ_B,max, the blur's std in pixels at t = 1.
      min_gain: d_min, the gain no mode falls below.
      loss_weighting, min_snr_gamma: as for ``GaussianDiffusion`` (x0 prediction).
    """

    kind: ClassVar[str] = "blurring"

    noise: Any = struct.field(default_factory=WhiteNoise)
    schedule: Any = struct.field(pytree_node=False, default="cosine")
    blur_sigma_max: float = struct.field(pytree_node=False, default=20.0)
    min_gain: float = struct.field(pytree_node=False, default=0.001)
    loss_weighting: str = struct.field(pytree_node=False, default="min_snr")
    min_snr_gamma: float = struct.field(pytree_node=False, default=5.0)

    def __post_init__(self):
        gaussian = GaussianDiffusion(self.noise, self.schedule, "x0", self.loss_weighting, self.min_snr_gamma)
        object.__setattr__(self, "schedule", gaussian.schedule)
        if not (np.isfinite(self.blur_sigma_max) and self.blur_sigma_max >= 0):
            raise ValueError(f"blur_sigma_max must be a finite number >= 0, got {self.blur_sigma_max}")
        if not 0 < self.min_gain <= 1:
            raise ValueError(f"min_gain must be in (0, 1], got {self.min_gain}")
        if getattr(self.noise, "channel_cov", None) is not None:
            raise ValueError("BlurringDiffusion supports noise without channel_cov only")

    @property
    def gaussian(self) -> GaussianDiffusion:
        """The Gaussian process with the same α/σ (x0 prediction): loss weights and norms."""
        return GaussianDiffusion(self.noise, self.schedule, "x0", self.loss_weighting, self.min_snr_gamma)

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) of the schedule (before the blur)."""
        return self.schedule.alpha_sigma(t)

    def gain(self, t: jnp.ndarray, H: int, W: int) -> jnp.ndarray:
        """``t.shape + (H, W, 1)`` per-mode signal gain A_t(k) = α_t d_t(k) in the Π layout."""
        t = jnp.asarray(t, jnp.float32)
        k2 = jnp.asarray(wavenumbers(H, W), jnp.float32)[..., None] ** 2
        blur = (self.blur_sigma_max * jnp.sin(0.5 * math.pi * t)) ** 2
        d = (1.0 - self.min_gain) * jnp.exp(-2.0 * math.pi**2 * k2 * blur[..., None, None, None]) + self.min_gain
        return self.alpha_sigma(t)[0][..., None, None, None] * d

    def q_sample(self, key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, noise=None) -> jnp.ndarray:
        """``x_t = Πᵀ(A_t Π x0) + σ_t ε`` for x0 ``(B, H, W, C)`` and t ``(B,)`` (or a scalar) in [0, 1]."""
        check_times(t)
        x0 = jnp.asarray(x0, jnp.float32)
        if noise is None:
            noise = self.noise.sample(key, x0.shape)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x0.shape[:1])
        sigma = _modes(self.alpha_sigma(t)[1], x0.shape)
        return irfft_real(self.gain(t, *x0.shape[1:3]) * rfft_real(x0)) + sigma * noise

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jnp.ndarray) -> jnp.ndarray:
        """x0 regression with GaussianDiffusion's norms and weights; t stratified over the batch."""
        x0 = jnp.asarray(x0, jnp.float32)
        if x0.ndim != 4:
            raise ValueError(f"x0 must be a (batch, H, W, C) array, got shape {x0.shape}")
        key_t, key_eps = jax.random.split(key)
        t = stratified_times(key_t, x0.shape[0])
        x_t = self.q_sample(key_eps, x0, t)
        g = self.gaussian
        out = check_output(apply_fn(x_t, t), x_t.shape, "apply_fn")
        return jnp.mean(g.time_weight(t) * g.squared_error(out - x0))

    # -- the sampler's interface (cloudjax.process.ForwardProcess; samplers "ddim" and "ddpm") ---------------

    def stages(self, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> tuple[np.ndarray]:
        """One stage of ``steps`` uniform steps."""
        return (time_grid(steps, t_start, t_end),)

    def state_shape(self, shape: tuple[int, ...], stage: int) -> tuple[int, ...]:
        return tuple(shape)

    def coefficients(self, ts: jnp.ndarray) -> jnp.ndarray:
        """The times themselves (the gains depend on the image size, known at the step)."""
        return jnp.asarray(ts, jnp.float32)

    def prior(self, key: jax.Array, shape, at_start, init: jnp.ndarray | None = None) -> jnp.ndarray:
        """``σ_start ε`` (the signal part A x0 has mean 0 for normalised data and is dropped)."""
        eps = self.noise.sample(key, shape) if init is None else init
        if jnp.shape(eps) != tuple(shape):
            raise ValueError(f"init_noise must have shape {tuple(shape)}, got {jnp.shape(eps)}")
        return self.alpha_sigma(at_start)[1] * eps

    def predict(self, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, None]:
        """The network predicts x0."""
        return out, None

    def output(self, x: jnp.ndarray, x0: jnp.ndarray, at_end) -> jnp.ndarray:
        return jnp.where(self.alpha_sigma(at_end)[1] > 0, x0, x)

    def gaussian_step(self, step, key, eta, stochasticity):
        """The ``"ddim"``/``"ddpm"`` update per Π mode (:meth:`step`); the author's stochasticity does not apply."""
        return self.step(step.x, step.x0, step.at_t, step.at_s, key, eta)

    def step(self, x_t, x0, t, s, key, eta) -> jnp.ndarray:
        """One DDIM step t → s per Π mode (η = 1: ancestral; ``key`` None: no fresh noise), x0 = x̂0."""
        H, W = x_t.shape[1:3]
        A_t, A_s = self.gain(t, H, W), self.gain(s, H, W)
        s_t, s_s = self.alpha_sigma(t)[1], self.alpha_sigma(s)[1]
        X0 = rfft_real(x0)
        E = (rfft_real(x_t) - A_t * X0) / s_t
        post = (s_s**2 / s_t**2) * jnp.maximum(s_t**2 - (A_t / A_s) ** 2 * s_s**2, 0.0)
        a = jnp.sqrt(jnp.maximum(s_s**2 - eta**2 * post, 0.0))
        X = A_s * X0 + a * E
        if key is not None:
            X = X + jnp.sqrt(jnp.maximum(s_s**2 - a**2, 0.0)) * rfft_real(self.noise.sample(key, x_t.shape))
        return irfft_real(X)


def blurring_oracle(diffusion: BlurringDiffusion, data_fourier_variance) -> Callable:
    """The exact x0 denoiser for zero-mean Gaussian data with Π variance C ``(H, W)`` or ``(H, W, C)``:
    ``E[Π x0 | x_t] = A C / (A² C + σ² N) Π x_t``, as ``denoise_fn(x_t, t)``."""
    C = np.asarray(data_fourier_variance, np.float32)
    C = C[..., None] if C.ndim == 2 else C

    def denoise(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        A = diffusion.gain(t, *x_t.shape[1:3])
        N = _noise_fourier_std(diffusion.noise, x_t.shape) ** 2
        sigma = _modes(diffusion.alpha_sigma(t)[1], x_t.shape)
        return irfft_real(A * C / (A**2 * C + sigma**2 * N) * rfft_real(x_t))

    return denoise
