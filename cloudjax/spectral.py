"""The real Fourier transform Π∘FFT, its inverse, the wavenumber grid and radial profiles; the orthonormal DCT-II.

Layout. ``rfft_real`` maps a real field of shape ``(H, W)`` (along ``axes``) to a real array of the same
shape. It uses the standard (unshifted) FFT layout: index ``(i, j)`` holds the mode with frequencies
``(fftfreq(H)[i], fftfreq(W)[j])``, up to the sign of each axis, which a radial quantity does not see, so
``wavenumbers(H, W)[i, j]`` is the |k| of entry ``(i, j)``.

Conjugate pairing. For real x the orthonormal FFT Z obeys ``Z[-i, -j] = conj(Z[i, j])``; only half of the
modes are free. With ``Zr = rfft2(x, norm="ortho")`` (columns ``0 .. W//2``) and ``m = (W - 1) // 2``:

* paired columns ``1 <= j <= m``:  ``X[:, j] = √2 Re Zr[:, j]`` and ``X[:, W - j] = √2 Im Zr[:, j]``;
* self-conjugate columns ``c = 0`` (and ``c = W/2`` for even W) pair their rows the same way:
  ``X[i, c] = √2 Re Zr[i, c]`` and ``X[H - i, c] = √2 Im Zr[i, c]`` for ``1 <= i <= (H - 1) // 2``;
* the self-conjugate modes ``(0 | H/2, 0 | W/2)`` are real and kept as they are.

The √2 makes Π∘FFT orthogonal: ‖X‖ = ‖x‖, white noise maps to white noise with every entry (the
self-conjugate ones too) of variance 1, and ``irfft_real`` is the transpose. Every stored value sits at a
position with the |k| of its mode, so a diagonal Π-space covariance is a function on this grid.

DCT. ``dct2`` is the orthonormal 2-D DCT-II (the basis of the heat equation with reflecting boundaries, which
blurring diffusion uses): entry ``(i, j)`` holds the coefficient of ``c_i(y) c_j(x)``, ``c_k(n) = s_k cos(π k
(n + ½) / N)`` with ``s_0 = √(1/N)``, ``s_k = √(2/N)``; ``idct2`` is its exact inverse and transpose. Both are two
matrix products (O(H + W) per pixel; on a CPU at image sizes several times faster than an FFT-based DCT).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_SQRT2 = math.sqrt(2.0)

__all__ = [
    "rfft_real",
    "irfft_real",
    "pi_layout",
    "dct2",
    "idct2",
    "wavenumbers",
    "radial_bins",
    "radial_profile",
    "centered",
]


def _spatial_axes(ndim: int, axes: Sequence[int]) -> tuple[int, int]:
    """Normalise ``axes`` to two distinct non-negative axes of an ``ndim``-dimensional array."""
    if len(axes) != 2:
        raise ValueError(f"axes must name two spatial axes, got {tuple(axes)}")
    a, b = (int(ax) % ndim if -ndim <= ax < ndim else None for ax in axes)
    if a is None or b is None or a == b:
        raise ValueError(f"axes {tuple(axes)} are not two distinct axes of an array with {ndim} dims")
    return a, b


def _unpair_rows(column: jnp.ndarray, H: int) -> jnp.ndarray:
    """Inverse of :func:`_pair_rows`: real ``(..., H)`` → complex ``(..., H)`` with Hermitian symmetry."""
    p = (H - 1) // 2
    re = column[..., 1 : p + 1] / _SQRT2
    im = jnp.flip(column[..., H - p :], axis=-1) / _SQRT2
    parts = [column[..., :1].astype(jnp.complex64), re + 1j * im]
    if H % 2 == 0:
        parts.append(column[..., p + 1 : p + 2].astype(jnp.complex64))
    parts.append(jnp.flip(re - 1j * im, axis=-1))
    return jnp.concatenate(parts, axis=-1)


@functools.lru_cache(maxsize=64)
def _layout_masks(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W // 2 + 1)`` masks over the half spectrum: entries of the self-conjugate columns (0 and W/2) in rows
    past H/2, which hold the imaginary part of their mirror row; and the self-conjugate modes (scale 1)."""
    columns = np.zeros(W // 2 + 1, bool)
    columns[0] = True
    columns[W // 2] |= W % 2 == 0
    rows = np.arange(H)
    mirrored = (rows > H // 2)[:, None] & columns
    real_modes = ((rows == 0) | ((H % 2 == 0) & (rows == H // 2)))[:, None] & columns
    return mirrored, real_modes


def pi_layout(Zr: jnp.ndarray, W: int, scale: float = _SQRT2) -> jnp.ndarray:
    """Place a half spectrum ``(..., H, W // 2 + 1)`` into Π's real ``(..., H, W)`` layout.

    Paired modes contribute ``scale · Re`` and ``scale · Im``, self-conjugate ones their real part; ``scale = √2``
    is Π itself. One elementwise pass over the half spectrum plus the mirrored imaginary columns: in a
    self-conjugate column, row H − i holds ``scale · Im Zr[i] = −scale · Im Zr[H − i]`` (Hermitian symmetry).
    """
    H = Zr.shape[-2]
    m = (W - 1) // 2
    mirrored, real_modes = _layout_masks(H, W)
    s = np.where(real_modes, 1.0, scale).astype(np.float32)
    head = jnp.where(mirrored, -s * Zr.imag, s * Zr.real)
    tail = scale * jnp.flip(Zr[..., 1 : m + 1].imag, axis=-1)
    return jnp.concatenate([head, tail], axis=-1)


def rfft_real(x: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> jnp.ndarray:
    """Real Fourier transform ``X = Π(F x)``: orthonormal, real, same shape as ``x``.

    Args:
      x: real array; the two ``axes`` are the spatial ``(H, W)`` axes (any sizes, even or odd).
      axes: the spatial axes, default ``(-3, -2)`` for channels-last images ``(..., H, W, C)``.

    Returns:
      float32 array of ``x``'s shape, in the layout described in the module docstring.
    """
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        raise ValueError("rfft_real expects a real array, got a complex one")
    a, b = _spatial_axes(x.ndim, axes)
    y = jnp.moveaxis(x.astype(jnp.float32), (a, b), (-2, -1))
    X = pi_layout(jnp.fft.rfft2(y, norm="ortho"), y.shape[-1])
    return jnp.moveaxis(X, (-2, -1), (a, b))


def irfft_real(X: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> jnp.ndarray:
    """Exact inverse (and transpose) of :func:`rfft_real`: ``x = F⁻¹ Π⁻¹ X``, float32, same shape."""
    X = jnp.asarray(X)
    if jnp.iscomplexobj(X):
        raise ValueError("irfft_real expects a real array, got a complex one")
    a, b = _spatial_axes(X.ndim, axes)
    Y = jnp.moveaxis(X.astype(jnp.float32), (a, b), (-2, -1))
    H, W = Y.shape[-2:]
    m = (W - 1) // 2
    re = Y[..., 1 : m + 1] / _SQRT2
    im = jnp.flip(Y[..., W - m :], axis=-1) / _SQRT2
    parts = [_unpair_rows(Y[..., 0], H)[..., None], re + 1j * im]
    if W % 2 == 0:
        parts.append(_unpair_rows(Y[..., W // 2], H)[..., None])
    Z = jnp.concatenate(parts, axis=-1)
    x = jnp.fft.irfft2(Z, s=(H, W), norm="ortho")
    return jnp.moveaxis(x, (-2, -1), (a, b))


@functools.lru_cache(maxsize=64)
def _dct_matrix(n: int) -> np.ndarray:
    """``(n, n)`` orthonormal DCT-II matrix, row k = ``c_k(y) = s_k cos(π k (y + ½) / n)``, float32."""
    k, y = np.arange(n)[:, None], np.arange(n)[None, :]
    return (np.sqrt(np.where(k == 0, 1.0, 2.0) / n) * np.cos(np.pi * k * (y + 0.5) / n)).astype(np.float32)


def _dct_apply(x: jnp.ndarray, axes: Sequence[int], inverse: bool) -> jnp.ndarray:
    """``M_H x M_Wᵀ`` (or ``M_Hᵀ x M_W``) along ``axes`` in float32 at full matmul precision."""
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        raise ValueError("dct2 and idct2 expect a real array, got a complex one")
    a, b = _spatial_axes(x.ndim, axes)
    y = jnp.moveaxis(x.astype(jnp.float32), (a, b), (-2, -1))
    left, right = _dct_matrix(y.shape[-2]), _dct_matrix(y.shape[-1]).T
    if inverse:
        left, right = left.T, right.T
    hi = jax.lax.Precision.HIGHEST
    y = jnp.matmul(jnp.matmul(left, y, precision=hi), right, precision=hi)
    return jnp.moveaxis(y, (-2, -1), (a, b))


def dct2(x: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> jnp.ndarray:
    """Orthonormal 2-D DCT-II along ``axes`` (default ``(-3, -2)``, channels-last images): float32 of ``x``'s shape,
    ``‖X‖ = ‖x‖``; ``X[i, j] = Σ_{y,x} x[y, x] c_i(y) c_j(x)`` (module docstring). Any H and W."""
    return _dct_apply(x, axes, inverse=False)


def idct2(X: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> jnp.ndarray:
    """Exact inverse (and transpose) of :func:`dct2`: ``x[y, x] = Σ_{i,j} X[i, j] c_i(y) c_j(x)``, float32."""
    return _dct_apply(X, axes, inverse=True)


def wavenumbers(H: int, W: int) -> np.ndarray:
    """``(H, W)`` float32 array of |k| = √(k_y² + k_x²) in cycles per pixel, in ``rfft_real``'s layout.

    |k| is 0 at the mean (DC) and at most √0.5 (the corner Nyquist mode).
    """
    if H < 1 or W < 1:
        raise ValueError(f"H and W must be positive, got {H}x{W}")
    ky = np.fft.fftfreq(H)[:, None]
    kx = np.fft.fftfreq(W)[None, :]
    return np.sqrt(ky**2 + kx**2).astype(np.float32)


def radial_bins(H: int, W: int) -> tuple[np.ndarray, int]:
    """Integer radial bin of every mode, ``round(|k| · max(H, W))``, and the number of bins.

    Bin r holds the modes whose |k| is within half a frequency step of ``r / max(H, W)``; bin 0 is DC.
    """
    n = max(H, W)
    bins = np.rint(wavenumbers(H, W) * n).astype(np.int32)
    return bins, int(bins.max()) + 1


def radial_profile(values: jnp.ndarray, axes: Sequence[int] = (-2, -1)) -> tuple[np.ndarray, jnp.ndarray]:
    """Average a Π-space quantity over rings of equal |k|.

    Args:
      values: array whose ``axes`` are a Π-space grid ``(H, W)`` (e.g. a variance from ``fourier_variance``).
      axes: the two grid axes, default ``(-2, -1)``.

    Returns:
      ``(k, profile)``: the bin centres ``r / max(H, W)`` in cycles per pixel, shape ``(R,)``, and the
      per-bin means with the grid axes replaced by one trailing axis of size ``R``.
    """
    values = jnp.asarray(values)
    a, b = _spatial_axes(values.ndim, axes)
    v = jnp.moveaxis(values, (a, b), (-2, -1))
    H, W = v.shape[-2:]
    bins, R = radial_bins(H, W)
    counts = np.bincount(bins.reshape(-1), minlength=R).astype(np.float32)
    flat = jnp.moveaxis(v.reshape(*v.shape[:-2], H * W).astype(jnp.float32), -1, 0)
    sums = jax.ops.segment_sum(flat, jnp.asarray(bins.reshape(-1)), num_segments=R)
    profile = jnp.moveaxis(sums, 0, -1) / counts
    return np.arange(R, dtype=np.float32) / max(H, W), profile


def centered(X: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> jnp.ndarray:
    """fftshift view of a Π-space array for plotting: the DC mode moves to ``(H // 2, W // 2)``."""
    X = jnp.asarray(X)
    a, b = _spatial_axes(X.ndim, axes)
    return jnp.fft.fftshift(X, axes=(a, b))
