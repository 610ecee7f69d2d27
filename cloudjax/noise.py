"""Noise models: white noise and power-law ("cloud") noise, with their Π-space variances.

A power-law field has the Π-space (see :mod:`cloudjax.spectral`) covariance ``diag(S)`` with
``S(k) ∝ max(|k|, k_min)^(-2Δ)``: Δ = 0 is white, 1 pink, ≈1.5 "cloud", 2 red (Brownian) noise. The DC mode
gets the variance of the lowest non-zero frequency ``k_min`` instead of infinity, so the image mean is noised
(and can be generated) like every other mode.

A field synthesised on an ``(H, W)`` grid is toroidally periodic. ``pad = p`` synthesises it on a
``(pH, pW)`` grid and keeps the centre crop, which has no periodicity (the paper uses p = 3). The crop of a
stationary field is stationary, so one analytic constant ``mean(S)`` normalises the per-pixel variance to
exactly 1 at every pixel, edges included. Every sample is a fixed linear map of white noise, so the noise
is exactly Gaussian with one covariance Σ and ``a·ε₁ + b·ε₂ ~ N(0, (a² + b²) Σ)``: the jump trick holds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax.spectral import _spatial_axes, irfft_real, pi_layout, wavenumbers

__all__ = ["power_law_noise", "power_law_spectrum", "power_law_autocovariance", "WhiteNoise", "PowerLawNoise"]


def _check_delta_pad(delta: float, pad: int) -> None:
    if not np.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    if int(pad) != pad or pad < 1:
        raise ValueError(f"pad must be an integer >= 1, got {pad}")


def power_law_spectrum(H: int, W: int, delta: float) -> np.ndarray:
    """``(H, W)`` Π-space variance ``max(|k|, k_min)^(-2Δ)`` of the periodic field, normalised to mean 1.

    Mean 1 over the grid means per-pixel variance 1 (Π∘FFT is orthonormal). ``k_min = 1 / max(H, W)``.
    Computed as ``exp(−2Δ (log k − log k_min))`` (largest entry 1) before the normalisation, so no Δ overflows:
    for a very steep spectrum the variance goes to the lowest modes and the highest underflow to 0.
    """
    _check_delta_pad(delta, 1)
    log_k = np.log(np.maximum(wavenumbers(H, W).astype(np.float64), 1.0 / max(H, W)))
    S = np.exp(-2.0 * delta * (log_k - log_k.min()))
    return S / S.mean()


def power_law_autocovariance(H: int, W: int, delta: float, pad: int = 3) -> np.ndarray:
    """Autocovariance c(d) of the unit-variance ``(pad·H, pad·W)`` periodic power-law field, indexed by the lag
    ``d = (dy, dx)`` modulo that grid; c(0) = 1. The centre crop keeps these covariances for |d| < (H, W)."""
    _check_delta_pad(delta, pad)
    return np.fft.ifft2(power_law_spectrum(pad * H, pad * W, delta)).real


def _window_sums(n: int, lags: np.ndarray, double: bool) -> np.ndarray:
    """``(n//2 + 1 or n, len(lags))`` sums ``e^{−2πiκd} Σ_m e^{−2πiκ·(double ? 2m : 0)}`` over the
    positions m with m and m + d both inside a window of n pixels, for κ = q / n."""
    q = np.arange(n)[:, None] / n
    first = np.maximum(0, -lags)[None, :]
    count = (n - np.abs(lags))[None, :]
    if double:
        ratio = np.exp(-4j * np.pi * q)
        near_one = np.isclose(ratio, 1.0)
        series = np.where(near_one, count, (1 - ratio**count) / np.where(near_one, 2.0, 1 - ratio))
        series = series * ratio**first
    else:
        series = np.broadcast_to(count, (n, len(lags))).astype(np.complex128)
    return np.exp(-2j * np.pi * q * lags[None, :]) * series


@functools.lru_cache(maxsize=64)
def _crop_fourier_variance(H: int, W: int, delta: float, pad: int) -> np.ndarray:
    """Exact ``(H, W)`` Π-space variance of the centre ``(H, W)`` crop of the ``(pH, pW)`` periodic field.

    With c(d) the field's autocovariance and Z the crop's orthonormal FFT,
    ``E|Z(κ)|² = Σ_d c(d) e^{−2πiκ·d} (H−|d_y|)(W−|d_x|) / HW`` and
    ``E Z(κ)² = Σ_d c(d) e^{−2πiκ·d} Σ_m e^{−4πiκ·m} / HW``; both are separable sums over the lags,
    and a Π entry √2 Re Z (√2 Im Z) has variance ``E|Z|² + Re E Z²`` (``E|Z|² − Re E Z²``).
    """
    PH, PW = pad * H, pad * W
    c = power_law_autocovariance(H, W, delta, pad)
    dy, dx = np.arange(-(H - 1), H), np.arange(-(W - 1), W)
    lagged = c[np.ix_(dy % PH, dx % PW)]
    half = W // 2 + 1

    def modes(double: bool) -> np.ndarray:
        rows = _window_sums(H, dy, double)
        cols = _window_sums(W, dx, double)[:half]
        return rows @ lagged @ cols.T / (H * W)

    power, pseudo = modes(False).real, modes(True).real
    per_part = (power + pseudo) / 2 + 1j * (power - pseudo) / 2  # Var Re Z + i Var Im Z
    with jax.ensure_compile_time_eval():  # a constant, also when asked for under jit
        # scale 2 = (√2)²; pi_layout negates the imaginary parts it mirrors, and a variance is sign-free.
        variance = np.abs(np.asarray(pi_layout(per_part, W, scale=2.0), np.float64))
    variance.setflags(write=False)  # cached: shared by every caller
    return variance


def power_law_noise(
    key: jax.Array,
    shape: Sequence[int],
    delta: float,
    axes: Sequence[int] = (-3, -2),
    pad: int = 3,
) -> jnp.ndarray:
    """Zero-mean Gaussian power-law noise: spectrum ∝ |k|^(−2Δ), per-pixel variance 1, float32.

    Args:
      key: PRNG key; the same key gives the same field.
      shape: output shape; ``axes`` are its spatial ``(H, W)`` axes, every other axis is independent.
      delta: the scaling exponent Δ >= 0 (0 gives white noise).
      axes: spatial axes, default ``(-3, -2)`` for ``(..., H, W, C)``.
      pad: synthesis grid ``(pad·H, pad·W)``, centre crop kept; 1 gives the periodic field.
    """
    shape = tuple(int(s) for s in shape)
    _check_delta_pad(delta, pad)
    a, b = _spatial_axes(len(shape), axes)
    if delta == 0:
        return jax.random.normal(key, shape, jnp.float32)
    H, W = shape[a], shape[b]
    PH, PW = pad * H, pad * W
    batch = tuple(s for i, s in enumerate(shape) if i not in (a, b))
    amplitude = jnp.asarray(np.sqrt(power_law_spectrum(PH, PW, delta)), jnp.float32)
    white = jax.random.normal(key, (*batch, PH, PW), jnp.float32)
    field = irfft_real(white * amplitude, axes=(-2, -1))
    top, left = (PH - H) // 2, (PW - W) // 2
    crop = field[..., top : top + H, left : left + W]
    return jnp.moveaxis(crop, (-2, -1), (a, b))


def _as_channel_cov(channel_cov) -> tuple[tuple[float, ...], ...] | None:
    """Validate a ``(C, C)`` channel covariance and freeze it as a hashable nested tuple (a static field)."""
    if channel_cov is None:
        return None
    cov = np.asarray(channel_cov, np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"channel_cov must be a square (C, C) matrix, got shape {cov.shape}")
    if not np.allclose(cov, cov.T, atol=1e-6):
        raise ValueError("channel_cov must be symmetric")
    lam = np.linalg.eigvalsh(cov)
    if lam.min() < -1e-6 * max(lam.max(), 1e-12):
        raise ValueError(f"channel_cov must be positive semi-definite, has eigenvalue {lam.min():.3g}")
    return tuple(tuple(float(v) for v in row) for row in cov)


def _mix_channels(noise: jnp.ndarray, channel_cov: tuple[tuple[float, ...], ...] | None) -> jnp.ndarray:
    """Mix independent channels by ``L = V diag(√λ)`` (``channel_cov = V diag(λ) Vᵀ``): covariance channel_cov."""
    if channel_cov is None:
        return noise
    lam, V = np.linalg.eigh(np.asarray(channel_cov))
    if noise.shape[-1] != len(lam):
        raise ValueError(f"shape has {noise.shape[-1]} channels but channel_cov is {len(lam)}x{len(lam)}")
    return noise @ jnp.asarray((V * np.sqrt(np.clip(lam, 0, None))).T, jnp.float32)


@struct.dataclass
class WhiteNoise:
    """Standard white noise N(0, I): every pixel and every Π mode independent with variance 1."""

    def sample(self, key: jax.Array, shape: Sequence[int]) -> jnp.ndarray:
        """Draw noise of ``shape`` ``(..., H, W, C)``, float32."""
        return jax.random.normal(key, tuple(shape), jnp.float32)

    def fourier_variance(self, H: int, W: int) -> np.ndarray:
        """``(H, W)`` Π-space variance: all ones."""
        return np.ones((H, W), np.float32)


@struct.dataclass
class PowerLawNoise:
    """Power-law ("cloud") noise with exponent Δ, aperiodic by a ``pad``-times larger grid.

    Attributes:
      delta: scaling exponent Δ >= 0 (fit it to data with :func:`cloudjax.fit_power_law`).
      pad: synthesis grid factor; 3 is the paper's recipe, 1 the periodic field.
      channel_cov: optional ``(C, C)`` channel covariance (any array-like; kept as a nested tuple, so the
        model is hashable and all its fields are static). Colour noise is C independent monochrome fields
        mixed by ``L = V diag(√λ)`` from its eigen-decomposition, so each pixel's channels have covariance
        ``channel_cov`` and the full Π-space covariance is ``fourier_variance ⊗ channel_cov``.
    """

    delta: float = struct.field(pytree_node=False, default=1.5)
    pad: int = struct.field(pytree_node=False, default=3)
    channel_cov: tuple[tuple[float, ...], ...] | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        _check_delta_pad(self.delta, self.pad)
        object.__setattr__(self, "channel_cov", _as_channel_cov(self.channel_cov))

    def sample(self, key: jax.Array, shape: Sequence[int]) -> jnp.ndarray:
        """Draw noise of shape ``(..., H, W, C)``, float32."""
        noise = power_law_noise(key, shape, self.delta, axes=(-3, -2), pad=self.pad)
        return _mix_channels(noise, self.channel_cov)

    def fourier_variance(self, H: int, W: int) -> np.ndarray:
        """``(H, W)`` diagonal of the Π-space covariance of one channel (mean 1, all entries > 0).

        Exact for every ``pad``. For ``pad = 1`` the covariance is exactly this diagonal; for ``pad > 1`` the
        crop adds small correlations between modes, which the diagonal leaves out.
        """
        return _crop_fourier_variance(int(H), int(W), float(self.delta), int(self.pad)).astype(np.float32)
