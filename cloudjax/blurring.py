"""Blurring diffusion (Hoogeboom & Salimans, "Blurring Diffusion Models", ICLR 2023): heat dissipation plus noise.

Forward process. ``x_t = α_t D_t x0 + σ_t ε`` with (α_t, σ_t) the Gaussian schedule (cosine by default, as the
paper's) and D_t the heat equation run for the dissipation time ``τ_t = σ_B(t)² / 2``, i.e. a Gaussian blur of std
``σ_B(t) = σ_B,max sin²(πt/2)`` pixels. D_t is diagonal in an orthonormal basis V (``X = V x``) with per-mode gain

    d_t = (1 − d_min) exp(−λ τ_t) + d_min,

λ the eigenvalue of −Δ of the mode, and d_min the gain no mode falls below (d_0 = 1: no blur at t = 0). Bases:

* ``"dct"`` (the paper's): the orthonormal DCT-II along H and W (:func:`cloudjax.spectral.dct2`), the heat equation
  with reflecting (Neumann) boundaries, ``λ = (π k_y / H)² + (π k_x / W)²`` for DCT mode ``(k_y, k_x)``. White
  noise only: white noise is white in every orthonormal basis, cloud noise is not diagonal in this one.
* ``"fourier"`` (cloudjax's own, what cloud noise needs, since it is diagonal in Π): the real Fourier basis Π
  (:func:`cloudjax.spectral.rfft_real`), periodic boundaries, ``λ = (2π |k|)²`` with |k| in cycles per pixel.

σ_B,max defaults to the paper's 20 px at 32 px (its best on CIFAR-10) scaled to the images, ``20 · max(H, W) / 32``.
``blur_schedule="sin"`` (σ_B,max sin(πt/2)) is the schedule of runs made by earlier cloudjax versions (the paper
finds it worse under strong blur); ``"sin2"`` is the paper's.

Every mode is an independent 1-D Gaussian diffusion with signal gain ``A_t = α_t d_t`` and noise variance
``σ_t² N`` (N: the noise's variance per mode; 1 for white noise), so the Gaussian samplers' algebra holds per mode
with α → A. The paper's posterior ``q(x_s | x_t, x0)`` per mode has ``α_{t|s} = A_t / A_s``,
``σ²_{t|s} = σ_t² − α_{t|s}² σ_s²``, mean ``(α_{t|s} σ_s² / σ_t²) X_t + (σ²_{t|s} / σ_t²) A_s X0`` and variance
``σ²_{t|s} σ_s² / σ_t²`` (times N); it is the η = 1 case of DDIM ``X_s = A_s X̂0 + a Ê + b Z`` with
``Ê = (X_t − A_t X̂0) / σ_t``, ``σ̃² = (σ_s² / σ_t²) σ²_{t|s}``, ``a = √(σ_s² − η² σ̃²)``, ``b = √(σ_s² − a²)``
(σ²_{t|s} >= 0 because σ_B grows with t: A_t / A_s <= α_t / α_s).

The network predicts x0 in pixel space (the paper's predicts ε; with the exact prediction both give this
posterior), with GaussianDiffusion's min-SNR x0 loss. Its Gaussian oracle (zero-mean data with variance C per
mode) is ``E[X0 | x_t] = A C / (A² C + σ² N) · X_t`` per mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax import registry
from cloudjax._config import fill, setting
from cloudjax.diffusion import GaussianDiffusion, _noise_fourier_std, stratified_times
from cloudjax.noise import WhiteNoise
from cloudjax.noise_settings import NoiseSettings, loss_setting
from cloudjax.process import OwnGaussianStep, check_noise, check_output, check_times, per_example, with_labels
from cloudjax.schedules import time_grid
from cloudjax.spectral import dct2, idct2, irfft_real, rfft_real, wavenumbers

__all__ = ["BlurringDiffusion", "BlurringSpec", "blurring_oracle", "default_blur_sigma_max", "laplacian_eigenvalues"]


def default_blur_sigma_max(H: int, W: int) -> float:
    """σ_B,max for ``H × W`` images: the paper's 20 px at 32 px, scaled, ``20 · max(H, W) / 32``."""
    return 20.0 * max(H, W) / 32


def laplacian_eigenvalues(basis: str, H: int, W: int) -> np.ndarray:
    """``(H, W)`` float32 eigenvalue λ of −Δ (pixel units) per mode of ``basis``, in its layout: ``"dct"``
    ``(π k_y / H)² + (π k_x / W)²`` (reflecting boundaries), ``"fourier"`` ``(2π |k|)²`` (periodic, Π layout)."""
    registry.check("basis", basis, registry.BLUR_BASES)
    if basis == "fourier":
        return ((2 * np.pi * wavenumbers(H, W).astype(np.float64)) ** 2).astype(np.float32)
    ky, kx = np.pi * np.arange(H) / H, np.pi * np.arange(W) / W
    return (ky[:, None] ** 2 + kx[None, :] ** 2).astype(np.float32)


@struct.dataclass
class BlurringDiffusion(OwnGaussianStep):
    """Blurring diffusion over an α/σ schedule and white (or, periodic, cloud) noise; a frozen pytree (``noise`` is
    its only node) and a :class:`~cloudjax.process.ForwardProcess` of kind ``"blurring"`` (samplers ddim, ddpm).

    Attributes:
      noise: noise model without ``channel_cov`` (white for ``basis="dct"``).
      schedule: α/σ schedule, name or object (as for ``GaussianDiffusion``).
      blur_sigma_max: σ_B,max, the blur's std in pixels at t = 1; None: :func:`default_blur_sigma_max` of the
        images it is applied to (20 px at 32 px).
      min_gain: d_min, the gain no mode falls below.
      basis: ``"dct"`` (the paper's: reflecting boundaries) or ``"fourier"`` (cloudjax's periodic variant, which
        cloud noise needs); None: "dct" for ``WhiteNoise``, "fourier" for other noise. Stored resolved.
      blur_schedule: ``"sin2"`` (the paper's σ_B,max sin²(πt/2)) or ``"sin"`` (σ_B,max sin(πt/2), earlier runs).
      loss_weighting, min_snr_gamma: as for ``GaussianDiffusion`` (x0 prediction).
    """

    kind: ClassVar[str] = "blurring"

    noise: Any = struct.field(default_factory=WhiteNoise)
    schedule: Any = struct.field(pytree_node=False, default="cosine")
    blur_sigma_max: float | None = struct.field(pytree_node=False, default=None)
    min_gain: float = struct.field(pytree_node=False, default=0.001)
    basis: str | None = struct.field(pytree_node=False, default=None)
    blur_schedule: str = struct.field(pytree_node=False, default="sin2")
    loss_weighting: str = struct.field(pytree_node=False, default="min_snr")
    min_snr_gamma: float = struct.field(pytree_node=False, default=5.0)

    def __post_init__(self):
        gaussian = GaussianDiffusion(self.noise, self.schedule, "x0", self.loss_weighting, self.min_snr_gamma)
        object.__setattr__(self, "schedule", gaussian.schedule)
        white = isinstance(self.noise, WhiteNoise)
        object.__setattr__(self, "basis", self.basis or ("dct" if white else "fourier"))
        registry.check("basis", self.basis, registry.BLUR_BASES)
        registry.check("blur_schedule", self.blur_schedule, registry.BLUR_SCHEDULES)
        if self.basis == "dct" and not white:
            raise ValueError("basis 'dct' needs white noise; cloud noise is diagonal in the Fourier basis: 'fourier'")
        if self.blur_sigma_max is not None and not (np.isfinite(self.blur_sigma_max) and self.blur_sigma_max >= 0):
            raise ValueError(f"blur_sigma_max must be a finite number >= 0 or None, got {self.blur_sigma_max}")
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

    def to_modes(self, x: jnp.ndarray) -> jnp.ndarray:
        """``X = V x`` for images ``(..., H, W, C)``: the orthonormal DCT-II or Π∘FFT, same shape."""
        return dct2(x) if self.basis == "dct" else rfft_real(x)

    def from_modes(self, X: jnp.ndarray) -> jnp.ndarray:
        """``x = Vᵀ X``, the exact inverse of :meth:`to_modes`."""
        return idct2(X) if self.basis == "dct" else irfft_real(X)

    def blur_sigma(self, t: jnp.ndarray, H: int, W: int) -> jnp.ndarray:
        """σ_B(t) in pixels for ``H × W`` images, of t's shape."""
        sigma_max = default_blur_sigma_max(H, W) if self.blur_sigma_max is None else self.blur_sigma_max
        s = jnp.sin(0.5 * math.pi * jnp.asarray(t, jnp.float32))
        return sigma_max * (s**2 if self.blur_schedule == "sin2" else s)

    def gain(self, t: jnp.ndarray, H: int, W: int) -> jnp.ndarray:
        """``t.shape + (H, W, 1)`` per-mode signal gain ``A_t = α_t d_t`` in the basis's layout."""
        t = jnp.asarray(t, jnp.float32)
        tau = (0.5 * self.blur_sigma(t, H, W) ** 2)[..., None, None, None]
        lam = jnp.asarray(laplacian_eigenvalues(self.basis, H, W))[..., None]
        d = (1.0 - self.min_gain) * jnp.exp(-lam * tau) + self.min_gain
        return self.alpha_sigma(t)[0][..., None, None, None] * d

    def mean(self, x0: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        """``E[x_t | x0] = α_t D_t x0 = Vᵀ(A_t V x0)`` for x0 ``(B, H, W, C)``, t ``(B,)`` (or a scalar) in [0, 1]."""
        check_times(t)
        x0 = jnp.asarray(x0, jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x0.shape[:1])
        return self.from_modes(self.gain(t, *x0.shape[1:3]) * self.to_modes(x0))

    def q_sample(self, key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, noise=None) -> jnp.ndarray:
        """``x_t = α_t D_t x0 + σ_t ε`` for x0 ``(B, H, W, C)`` and t ``(B,)`` (or a scalar); ε from the noise
        model (or ``noise``)."""
        x0 = jnp.asarray(x0, jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x0.shape[:1])
        if noise is None:
            noise = self.noise.sample(key, x0.shape)
        check_noise(noise, x0)
        return self.mean(x0, t) + per_example(self.alpha_sigma(t)[1], x0) * noise

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jnp.ndarray, labels=None) -> jnp.ndarray:
        """x0 regression with GaussianDiffusion's norms and weights; t stratified over the batch (``labels``: see
        :meth:`cloudjax.process.ForwardProcess.loss`)."""
        x0 = jnp.asarray(x0, jnp.float32)
        if x0.ndim != 4:
            raise ValueError(f"x0 must be a (batch, H, W, C) array, got shape {x0.shape}")
        key_t, key_eps = jax.random.split(key)
        t = stratified_times(key_t, x0.shape[0])
        x_t = self.q_sample(key_eps, x0, t)
        g = self.gaussian
        out = check_output(with_labels(apply_fn, labels, x0.shape[0])(x_t, t), x_t.shape, "apply_fn")
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
        """The ``"ddim"``/``"ddpm"`` update per mode (:meth:`ddim_update`); the author's stochasticity is not used."""
        return self.ddim_update(step.x, step.x0, step.at_t, step.at_s, key, eta)

    def ddim_update(self, x_t, x0, t, s, key, eta) -> jnp.ndarray:
        """One DDIM step t → s per mode (η = 1: the posterior q(x_s | x_t, x0); ``key`` None: no fresh noise),
        x0 = x̂0 (module docstring)."""
        H, W = x_t.shape[1:3]
        A_t, A_s = self.gain(t, H, W), self.gain(s, H, W)
        s_t, s_s = self.alpha_sigma(t)[1], self.alpha_sigma(s)[1]
        X0 = self.to_modes(x0)
        E = (self.to_modes(x_t) - A_t * X0) / s_t
        post = (s_s**2 / s_t**2) * jnp.maximum(s_t**2 - (A_t / A_s) ** 2 * s_s**2, 0.0)
        a = jnp.sqrt(jnp.maximum(s_s**2 - eta**2 * post, 0.0))
        X = A_s * X0 + a * E
        if key is not None:
            X = X + jnp.sqrt(jnp.maximum(s_s**2 - a**2, 0.0)) * self.to_modes(self.noise.sample(key, x_t.shape))
        return self.from_modes(X)


def blurring_oracle(diffusion: BlurringDiffusion, data_variance) -> Callable:
    """The exact x0 denoiser for zero-mean Gaussian data with variance C ``(H, W)`` or ``(H, W, C)`` per mode of
    ``diffusion.basis`` (DCT or Π layout): ``E[X0 | x_t] = A C / (A² C + σ² N) X_t``, as ``denoise_fn(x_t, t)``."""
    C = np.asarray(data_variance, np.float32)
    C = C[..., None] if C.ndim == 2 else C

    def denoise(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        A = diffusion.gain(t, *x_t.shape[1:3])
        N = _noise_fourier_std(diffusion.noise, x_t.shape) ** 2  # per mode of either basis (white: 1)
        sigma = per_example(diffusion.alpha_sigma(t)[1], x_t)
        return diffusion.from_modes(A * C / (A**2 * C + sigma**2 * N) * diffusion.to_modes(x_t))

    return denoise


@dataclasses.dataclass(frozen=True)
class BlurringSpec(NoiseSettings):
    """The spec of :class:`BlurringDiffusion`: the noise settings and the blur (``blur_sigma_max`` None: 20·S/32 px
    for S px images; ``blur_basis`` None: "dct" for white noise, "fourier" for cloud); a UNet predicting x0 with the
    reference code's min-SNR loss; DDIM with 50 steps."""

    kind = "blurring"

    loss_weighting: str = loss_setting("min_snr")
    blur_sigma_max: float | None = setting(None, "blur std in px at t = 1 (default 20·size/32)")
    blur_basis: str | None = setting(
        None, "dct (the paper's, reflecting boundaries; white noise) or fourier (periodic; cloud)", registry.BLUR_BASES
    )
    blur_schedule: str = setting("sin2", "σ_B(t) ∝ sin² (the paper's) or sin (older runs)", registry.BLUR_SCHEDULES)

    def __post_init__(self):
        super().__post_init__()
        fill(self, blur_basis="dct" if self.noise == "white" else "fourier")
        if self.blur_basis == "dct" and self.noise != "white":
            raise ValueError("blur_basis 'dct' needs white noise; cloud noise is diagonal in the Fourier basis only")
        if self.blur_sigma_max is not None and not self.blur_sigma_max >= 0:
            raise ValueError(f"blur_sigma_max must be >= 0, got {self.blur_sigma_max}")

    @classmethod
    def upgrade(cls, settings: dict) -> dict:
        """Older runs: a periodic blur of σ_B = 20 sin(πt/2) px where their settings do not say."""
        return super().upgrade({"blur_sigma_max": 20.0, "blur_basis": "fourier", "blur_schedule": "sin", **settings})

    def resolve(self, image_size: int, channels: int, unet) -> BlurringSpec:
        self._check_grey_cloud(channels)
        sigma_max = default_blur_sigma_max(image_size, image_size)
        return self if self.blur_sigma_max is not None else dataclasses.replace(self, blur_sigma_max=sigma_max)

    def build(self, measurements: Mapping, image_shape: tuple[int, int, int]) -> BlurringDiffusion:
        noise, schedule = self.noise_model(measurements, image_shape[-1]), self.schedule_model(measurements)
        blur = dict(basis=self.blur_basis, blur_schedule=self.blur_schedule, loss_weighting=self.loss_weighting)
        return BlurringDiffusion(noise, schedule, self.blur_sigma_max, **blur)
