"""Mahalanobis distances in Π space (Randono, eqs. 41–43).

Mahalanobis distances (paper eqs. 41–43) use the reference covariance ``Σ̃ = diag(|k|^{−2Δ})`` in Π space:
``d(x, y) = √(Σ_k |k|^{2Δ} (Πx − Πy)²)`` summed over the spatial axes and channels, |k| in cycles per
pixel, DC weight 0. These units reproduce the scale of the paper's STL-10 numbers (radians per pixel would
be (2π)^Δ ≈ 16 times larger, integer frequencies 96^Δ ≈ 940 times).

The author's units (``units="author"``) differ in two ways: his Π's paired entries are Re Z and Im Z
(variance 1/2 for white noise, ours carry √2 and are orthonormal), and his |k| is index / (N − 1) where
ours is index / N. So ``d_author² = (N/(N−1))^{2Δ} · (d² + s) / 2`` with s the self-conjugate modes' part
of d² (exact per pair, so set distances must be computed in those units, not converted afterwards; ÷√2 is
1.6–1.9 % off at 96 px and 4.8–5.4 % at 32 px). Two white 96×96 images at Δ = 1.5: d ≈ 38.0 here, 27.3 in the
author's units (paper: 27.33).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.noise import power_law_noise
from cloudjax.spectral import _spatial_axes, rfft_real, wavenumbers

UNITS = ("cloudjax", "author")


def mahalanobis_weight(H: int, W: int, delta: float, units: str = "cloudjax") -> np.ndarray:
    """``(H, W)`` weight on ``(Π x)²`` in Π layout whose sum is the squared Mahalanobis distance to 0, DC weight 0.

    ``units="cloudjax"``: the inverse reference covariance ``|k|^{2Δ}``, |k| in cycles/pixel.
    ``units="author"``: the Cloud Diffusion author's distance, ``|k'|^{2Δ}`` with ``k' = k·N/(N−1)`` on each
    axis (his |k| is index / (N − 1)), halved on the paired entries (his Π holds Re Z, Im Z without √2);
    the self-conjugate modes ``(0 | H/2, 0 | W/2)`` keep weight ``|k'|^{2Δ}``.
    """
    if not np.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if units == "cloudjax":
        k = wavenumbers(H, W).astype(np.float64)
    else:
        ky = np.fft.fftfreq(H)[:, None] * H / max(H - 1, 1)
        kx = np.fft.fftfreq(W)[None, :] * W / max(W - 1, 1)
        k = np.sqrt(ky**2 + kx**2)
    w = np.where(k > 0, k, 1.0) ** (2 * delta)
    if units == "author":
        self_conjugate = np.isin(np.arange(H), [0, H / 2])[:, None] & np.isin(np.arange(W), [0, W / 2])[None, :]
        w = np.where(self_conjugate, w, w / 2)
    w[0, 0] = 0.0
    return w.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("delta", "axes", "units"))
def _weighted_fourier(x, delta: float, axes: tuple[int, int], units: str = "cloudjax") -> jnp.ndarray:
    """``√w · Π x`` flattened per example: ``(*examples, H·W·C)``; ``‖·‖²`` is the squared distance to 0."""
    x = jnp.asarray(x)
    a, b = _spatial_axes(x.ndim, axes)
    if b != a + 1:
        raise ValueError(f"axes {tuple(axes)} must be two adjacent axes (..., H, W, ...) in that order")
    H, W = x.shape[a], x.shape[b]
    root_w = np.sqrt(mahalanobis_weight(H, W, delta, units)).reshape(H, W, *([1] * (x.ndim - b - 1)))
    return (rfft_real(x, axes=(a, b)) * root_w).reshape(*x.shape[:a], -1)


def mahalanobis_distance(x, y, delta: float, axes: Sequence[int] = (-3, -2), units: str = "cloudjax") -> jnp.ndarray:
    """Per-example Mahalanobis distance (paper eq. 43): ``√(Σ |k|^{2Δ} (Πx − Πy)²)``.

    Args:
      x, y: arrays ``(*examples, H, W, *channels)`` of broadcastable shapes.
      delta: Δ of the reference covariance ``|k|^{−2Δ}``, a Python float (static under jit); 0 gives the
        Euclidean distance without the mean.
      axes: the adjacent spatial axes; the sum runs over them and every axis after them.
      units: ``"cloudjax"`` or ``"author"`` (the paper's numbers; see :func:`mahalanobis_weight`).

    Returns:
      float32 array of shape ``examples``.
    """
    x, y = jnp.broadcast_arrays(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    z = _weighted_fourier(x - y, delta, tuple(axes), units)  # Π is linear
    return jnp.sqrt(jnp.sum(z * z, axis=-1))


@jax.jit
def _pairwise_distances(zx: jnp.ndarray, zy: jnp.ndarray) -> jnp.ndarray:
    """``(N, M)`` Euclidean distances between the rows of ``zx (N, D)`` and ``zy (M, D)``."""
    gram = jnp.matmul(zx, zy.T, precision="highest")
    sq = jnp.sum(zx * zx, 1)[:, None] + jnp.sum(zy * zy, 1)[None, :] - 2 * gram
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def mahalanobis_between(xs, ys, delta: float, axes: Sequence[int] = (-3, -2), units: str = "cloudjax") -> jnp.ndarray:
    """Distance between two sets (eq. 41): the mean of ``d(x_i, y_j)`` over all pairs.

    ``ys = None`` measures the spread of ``xs`` itself: the mean over pairs ``i ≠ j``.
    ``xs`` and ``ys`` are ``(N, H, W, *channels)`` with one example axis (``axes`` then ``(1, 2)``);
    the ``(N, M)`` distances come from one Gram matrix of the weighted Π coefficients.
    """
    zx = _weighted_fourier(xs, delta, tuple(axes), units)
    if zx.ndim != 2 or zx.shape[0] < (1 if ys is not None else 2):
        raise ValueError(f"xs must be (N, H, W, ...) with N >= 2 (N >= 1 with ys), got {jnp.shape(xs)}")
    if ys is None:
        n = zx.shape[0]
        return jnp.sum(_pairwise_distances(zx, zx) * (1 - jnp.eye(n))) / (n * (n - 1))
    zy = _weighted_fourier(ys, delta, tuple(axes), units)
    if zy.shape[1:] != zx.shape[1:] or zy.ndim != 2:
        raise ValueError(f"ys must be (M, ...) with the image shape of xs, got {jnp.shape(ys)} vs {jnp.shape(xs)}")
    return jnp.mean(_pairwise_distances(zx, zy))


def mahalanobis_to_center(
    xs, delta: float, center=0.0, axes: Sequence[int] = (-3, -2), units: str = "cloudjax"
) -> jnp.ndarray:
    """Distance of a set to the reference's centre (eq. 42): the mean of ``d(x_i, center)``.

    The reference distribution ``N(center, diag |k|^{−2Δ})`` is centred on 0 for normalised data (eq. 19).
    """
    return jnp.mean(mahalanobis_distance(xs, center, delta, axes, units))


def mahalanobis_table(
    data, delta: float, key: jax.Array, axes: Sequence[int] = (-3, -2), units: str = "cloudjax"
) -> dict[str, float]:
    """The distances of Fig. 19 between white noise, cloud noise (Δ, ``pad=3``) and the data, in ``units``.

    ``data`` is ``(N, H, W, *channels)``, normalised (eq. 19); the noise sets are drawn with ``key`` in its
    shape. Keys ``"a-b"`` are set-to-set distances (eq. 41, ``i ≠ j`` within a set), ``"a"`` the distance
    of a set to the centre (eq. 42), for a, b in white, cloud, images.
    """
    data = jnp.asarray(data, jnp.float32)
    k_white, k_cloud = jax.random.split(key)
    sets = {
        "white": jax.random.normal(k_white, data.shape),
        "cloud": jax.jit(power_law_noise, static_argnums=(1, 2, 3))(k_cloud, data.shape, delta, tuple(axes)),
        "images": data,
    }
    table = {}
    for i, (a, xa) in enumerate(sets.items()):
        table[a] = float(mahalanobis_to_center(xa, delta, axes=axes, units=units))
        for b, xb in list(sets.items())[i:]:
            table[f"{a}-{b}"] = float(mahalanobis_between(xa, None if a == b else xb, delta, axes, units))
    return table
