"""Dataset statistics and the power-law fit of the Π-space variance.

Statistics stream over batches ``(B, H, W, C)`` once: per-pixel mean and std, the ``(C, C)`` channel
covariance and the Π-space variance ``Γ(k) = Var[Π(w·x)](k)`` of the (optionally windowed) data. Π is
linear, so ``E[Π w x]`` and ``E[(Π w x)²]`` accumulate in the same pass and the mean is removed at the end.

Power law. ``Γ(k) ≈ A² |k|^{−2Δ}`` with |k| in cycles per pixel (paper eq. 14): the fit regresses
``log Γ`` on ``log |k|`` over every mode outside the central cross (``|k_y|·H < m`` or ``|k_x|·W < m``;
the DC mode always excluded), ``Δ = −slope / 2`` and ``A = exp(intercept / 2)``. A crop of a field is
aperiodic, and its plain (boxcar) spectrum leaks power from low to high |k|, which flattens the fit
(true Δ = 2 reads as 1.74); a Hann window, scaled to keep the mean power, removes the bias.

Mahalanobis distances live in :mod:`cloudjax.mahalanobis` (re-exported here); the report of
``cloudjax stats`` in :mod:`cloudjax.stats_report`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.mahalanobis import (
    mahalanobis_between,
    mahalanobis_distance,
    mahalanobis_table,
    mahalanobis_to_center,
    mahalanobis_weight,
)
from cloudjax.spectral import _spatial_axes, radial_bins, rfft_real, wavenumbers

__all__ = [
    "DatasetStats",
    "StatsAccumulator",
    "spectral_window",
    "cross_mask",
    "mahalanobis_weight",
    "dataset_stats",
    "PowerLawFit",
    "fit_power_law",
    "fit_power_law_spectrum",
    "mahalanobis_distance",
    "mahalanobis_between",
    "mahalanobis_to_center",
    "mahalanobis_table",
]


# ----------------------------------------------------------------------------------------------------------
# Streaming statistics


def spectral_window(H: int, W: int, window: str | None) -> np.ndarray | None:
    """``(H, W)`` separable Hann window ``sin²(π(n + ½)/N)``, scaled so that ``mean(w²) = 1``; None for None.

    The scaling keeps the expected power of white noise: ``E‖Π(w·x)‖² = E‖x‖²``.
    """
    if window is None:
        return None
    if window != "hann":
        raise ValueError(f"window must be 'hann' or None, got {window!r}")
    wy = np.sin(np.pi * (np.arange(H) + 0.5) / H) ** 2
    wx = np.sin(np.pi * (np.arange(W) + 0.5) / W) ** 2
    w = wy[:, None] * wx[None, :]
    return (w / np.sqrt(np.mean(w**2))).astype(np.float32)


@functools.partial(jax.jit, static_argnames="window")
def _batch_sums(batch: jnp.ndarray, shift: jnp.ndarray, window: str | None) -> dict[str, jnp.ndarray]:
    """Sums over the batch of ``x − shift`` (``(B, H, W, C)``): moments, channel products, Π moments."""
    x = batch.astype(jnp.float32) - shift
    w = spectral_window(x.shape[1], x.shape[2], window)
    X = rfft_real(x if w is None else x * w[:, :, None])
    return {
        "s1": x.sum(0),
        "s2": (x * x).sum(0),
        "cross": jnp.einsum("bhwc,bhwd->cd", x, x, precision="highest"),
        "f1": X.sum(0),
        "f2": (X * X).sum(0),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetStats:
    """Statistics of a dataset of images ``(H, W, C)`` (float64 numpy arrays).

    Attributes:
      count: number of images.
      mean, std: ``(H, W, C)`` per-pixel mean and standard deviation (population, ddof 0).
      channel_cov: ``(C, C)`` covariance of the channels at a pixel, per-pixel means removed, averaged
        over pixels (the ``channel_cov`` of :class:`cloudjax.PowerLawNoise`).
      fourier_variance: ``(H, W, C)`` Π-space variance ``Var[Π(w·x)]`` per channel, w the window.
      window: the window used for ``fourier_variance``: ``"hann"`` or None.
    """

    count: int
    mean: np.ndarray
    std: np.ndarray
    channel_cov: np.ndarray
    fourier_variance: np.ndarray
    window: str | None = "hann"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)

    def fit(self, method: str = "pixel", mask_cross: int | None = None) -> PowerLawFit:
        """Power-law fit of the channel-averaged Π-space variance (:func:`fit_power_law_spectrum`)."""
        return fit_power_law_spectrum(self.fourier_variance.mean(-1), method=method, mask_cross=mask_cross)

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists)."""
        return {f.name: _tolist(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DatasetStats:
        arrays = {k: np.asarray(d[k], np.float64) for k in ("mean", "std", "channel_cov", "fourier_variance")}
        return cls(count=int(d["count"]), window=d["window"], **arrays)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> DatasetStats:
        return cls.from_dict(json.loads(text))


def _tolist(v):
    return v.tolist() if isinstance(v, np.ndarray) else v


class StatsAccumulator:
    """One-pass accumulator of :class:`DatasetStats`: ``update(batch)`` for each batch, then ``result()``.

    Sums are float64 on the host, of the data minus the first batch's mean (a fixed shift, so that
    ``E[x²] − E[x]²`` does not cancel catastrophically); each batch is reduced by one jitted function.
    """

    def __init__(self, window: str | None = "hann"):
        if window not in ("hann", None):
            raise ValueError(f"window must be 'hann' or None, got {window!r}")
        self.window = window
        self.count = 0
        self._shift = None
        self._sums = None

    def update(self, batch) -> None:
        """Add a batch ``(B, H, W, C)`` of images."""
        batch = jnp.asarray(batch)
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(f"batch must have shape (B, H, W, C) with B >= 1, got {batch.shape}")
        if self._shift is None:
            self._shift = batch.astype(jnp.float32).mean(0)
        elif batch.shape[1:] != self._shift.shape:
            raise ValueError(f"batch images have shape {batch.shape[1:]}, earlier ones {self._shift.shape}")
        sums = {k: np.asarray(v, np.float64) for k, v in _batch_sums(batch, self._shift, self.window).items()}
        self._sums = sums if self._sums is None else {k: self._sums[k] + v for k, v in sums.items()}
        self.count += batch.shape[0]

    def result(self) -> DatasetStats:
        if self.count == 0:
            raise ValueError("no images were added")
        n, s = self.count, self._sums
        m1 = s["s1"] / n  # mean of x − shift
        H, W, _ = m1.shape
        pixel_mean_outer = np.einsum("hwc,hwd->cd", m1, m1) / (H * W)
        f_mean = s["f1"] / n
        return DatasetStats(
            count=n,
            mean=np.asarray(self._shift, np.float64) + m1,
            std=np.sqrt(np.maximum(s["s2"] / n - m1**2, 0.0)),
            channel_cov=s["cross"] / (n * H * W) - pixel_mean_outer,
            fourier_variance=np.maximum(s["f2"] / n - f_mean**2, 0.0),
            window=self.window,
        )


def dataset_stats(
    batches: Iterable, window: str | None = "hann", progress: Callable[[int], None] | None = None
) -> DatasetStats:
    """Stream an iterable of batches ``(B, H, W, C)`` once into :class:`DatasetStats`.

    ``progress(n)`` is called after each batch with its size.
    """
    acc = StatsAccumulator(window)
    for batch in batches:
        acc.update(batch)
        if progress is not None:
            progress(int(np.shape(batch)[0]))
    return acc.result()


# ----------------------------------------------------------------------------------------------------------
# Power-law fit


@dataclasses.dataclass(frozen=True, eq=False)
class PowerLawFit:
    """Fit ``Γ(k) ≈ A² |k|^{−2Δ}`` of a Π-space variance (|k| in cycles per pixel).

    Attributes:
      delta: Δ, minus half the log-log slope.
      amplitude: A, ``exp(intercept / 2)``.
      r_value: Pearson correlation of the fitted log-log points (−1 is a perfect power law).
      k, gamma: ``(H, W)`` |k| and Γ of every mode (Π layout).
      mask: ``(H, W)`` bool, True for the modes the fit used (outside the central cross, not DC).
      method: ``"pixel"`` (every mode a point) or ``"radial"`` (ring averages as points).
      mask_cross: half-width of the masked central cross, in frequency steps.
    """

    delta: float
    amplitude: float
    r_value: float
    k: np.ndarray
    gamma: np.ndarray
    mask: np.ndarray
    method: str
    mask_cross: int

    def predict(self, k) -> np.ndarray:
        """The fitted ``A² |k|^{−2Δ}``."""
        return self.amplitude**2 * np.asarray(k, np.float64) ** (-2 * self.delta)


def cross_mask(H: int, W: int, mask_cross: int = 4) -> np.ndarray:
    """``(H, W)`` bool, True outside the central cross ``|k_y|·H < m`` or ``|k_x|·W < m`` (and never DC)."""
    if int(mask_cross) != mask_cross or mask_cross < 0:
        raise ValueError(f"mask_cross must be an integer >= 0, got {mask_cross}")
    fy = np.abs(np.fft.fftfreq(H) * H)[:, None]
    fx = np.abs(np.fft.fftfreq(W) * W)[None, :]
    keep = (fy >= mask_cross) & (fx >= mask_cross)
    keep[0, 0] = False
    return keep


def fit_power_law_spectrum(variance, method: str = "pixel", mask_cross: int | None = None) -> PowerLawFit:
    """Fit ``A² |k|^{−2Δ}`` to an ``(H, W)`` Π-space variance (e.g. ``DatasetStats.fourier_variance``).

    Args:
      variance: ``(H, W)`` positive Π-space variance, rfft_real's layout.
      method: ``"pixel"``: linear regression of log Γ on log |k| over every unmasked mode (the paper's
        recipe); ``"radial"``: over the ring averages of the unmasked modes (one point per |k| bin, so the
        many high-|k| modes do not dominate).
      mask_cross: half-width m of the masked central cross, in frequency steps (0 masks only DC); None:
        4 (the paper's), or ``min(H, W) // 8`` for images smaller than 32 pixels.
    """
    gamma = np.asarray(variance, np.float64)
    if gamma.ndim != 2 or min(gamma.shape) < 2:
        raise ValueError(f"variance must be an (H, W) array with H, W >= 2, got shape {gamma.shape}")
    if method not in ("pixel", "radial"):
        raise ValueError(f"method must be 'pixel' or 'radial', got {method!r}")
    H, W = gamma.shape
    mask_cross = min(4, min(H, W) // 8) if mask_cross is None else mask_cross
    k = wavenumbers(H, W).astype(np.float64)
    mask = cross_mask(H, W, mask_cross) & (gamma > 0)
    if method == "pixel":
        log_k, log_g = np.log(k[mask]), np.log(gamma[mask])
    else:
        bins = radial_bins(H, W)[0][mask]
        counts = np.bincount(bins)
        used = counts > 0
        log_k = np.log(np.bincount(bins, k[mask])[used] / counts[used])
        log_g = np.log(np.bincount(bins, gamma[mask])[used] / counts[used])
    if not np.any(gamma[k > 0] > 0):
        raise ValueError(
            "the images do not vary (every Fourier mode but the mean has zero variance): no spectrum to fit"
        )
    if log_k.size < 3:
        raise ValueError(f"mask_cross={mask_cross} leaves {log_k.size} points to fit on a {H}x{W} grid; need 3")
    slope, intercept = np.polyfit(log_k, log_g, 1)
    r = np.corrcoef(log_k, log_g)[0, 1]
    return PowerLawFit(
        delta=float(-slope / 2),
        amplitude=float(np.exp(intercept / 2)),
        r_value=float(r),
        k=k,
        gamma=gamma,
        mask=mask,
        method=method,
        mask_cross=int(mask_cross),
    )


def _as_bhwc(x, axes: Sequence[int]) -> jnp.ndarray:
    """View ``(*examples, H, W, *channels)`` as ``(B, H, W, C)``; the two spatial axes must be adjacent."""
    x = jnp.asarray(x)
    a, b = _spatial_axes(x.ndim, axes)
    if b != a + 1:
        raise ValueError(f"axes {tuple(axes)} must be two adjacent axes (..., H, W, ...) in that order")
    return x.reshape(math.prod(x.shape[:a]), x.shape[a], x.shape[b], math.prod(x.shape[b + 1 :]))


def fit_power_law(
    images,
    axes: Sequence[int] = (-3, -2),
    window: str | None = "hann",
    method: str = "pixel",
    mask_cross: int | None = None,
) -> PowerLawFit:
    """Fit Δ and A of a set of images: ``Γ(k) = Var[Π(w·x)](k) ≈ A² |k|^{−2Δ}``.

    Args:
      images: ``(*examples, H, W, *channels)`` real array, at least 2 examples; Γ is the variance over
        the examples (per-pixel mean removed), averaged over channels.
      axes: the spatial axes, default ``(-3, -2)``; ``(-2, -1)`` for plain fields ``(N, H, W)``.
      window: ``"hann"`` (default; unbiased on aperiodic crops) or None (the paper's plain FFT).
      method, mask_cross: see :func:`fit_power_law_spectrum`.
    """
    x = _as_bhwc(images, axes)
    if x.shape[0] < 2:
        raise ValueError(f"images must hold at least 2 examples to estimate a variance, got {x.shape[0]}")
    return dataset_stats([x], window=window).fit(method=method, mask_cross=mask_cross)
