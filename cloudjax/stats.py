"""Dataset statistics, the power-law fit of the Π-space variance, and Mahalanobis distances.

Statistics stream over batches ``(B, H, W, C)`` once: per-pixel mean and std, the ``(C, C)`` channel
covariance and the Π-space variance ``Γ(k) = Var[Π(w·x)](k)`` of the (optionally windowed) data. Π is
linear, so ``E[Π w x]`` and ``E[(Π w x)²]`` accumulate in the same pass and the mean is removed at the end.

Power law. ``Γ(k) ≈ A² |k|^{−2Δ}`` with |k| in cycles per pixel (paper eq. 14): the fit regresses
``log Γ`` on ``log |k|`` over every mode outside the central cross (``|k_y|·H < m`` or ``|k_x|·W < m``;
the DC mode always excluded), ``Δ = −slope / 2`` and ``A = exp(intercept / 2)``. A crop of a field is
aperiodic, and its plain (boxcar) spectrum leaks power from low to high |k|, which flattens the fit
(true Δ = 2 reads as 1.74); a Hann window, scaled to keep the mean power, removes the bias.

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

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.noise import power_law_noise
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
    "write_stats_report",
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


# ----------------------------------------------------------------------------------------------------------
# Mahalanobis distances


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


# ----------------------------------------------------------------------------------------------------------
# Report


def write_stats_report(
    images,
    out_dir: str | Path,
    *,
    window: str | None = "hann",
    table_size: int = 512,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Stream a dataset once and write ``stats.json``, ``fit.png`` (Fig. 9) and ``noise.png`` (Fig. 12).

    Args:
      images: an array ``(N, H, W, C)`` or an iterable of such batches.
      out_dir: created if missing.
      window: window of the Π-space variance (see :func:`fit_power_law`).
      table_size: how many images (the first ones) the Mahalanobis table uses; they are normalised per
        pixel with the streamed mean and std first.
      seed: seed of the noise sets and the noise sheet.
      progress: called with each batch's size.

    Returns:
      the dict written to ``stats.json``: Δ, A, r, image shape, count, per-channel mean and std, the
      channel covariance, the Δ of the noise sets and the table (``noise_delta`` = max(Δ, 0): a fitted Δ < 0,
      e.g. of white data, has no cloud noise), the Mahalanobis table (cloudjax's units, see the module
      docstring) and the full :class:`DatasetStats` under ``"dataset"``.
    """
    from cloudjax._files import atomic_write
    from cloudjax.plots import plot_noise_sheet, plot_power_law_fit

    if isinstance(images, (np.ndarray, jax.Array)):
        array = np.asarray(images)
        if array.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {array.shape}")
        images = (array[i : i + 256] for i in range(0, len(array), 256))
    kept = []

    def keep(batches):
        n = 0
        for batch in batches:
            if n < table_size:
                kept.append(np.asarray(batch[: table_size - n]))
                n += len(kept[-1])
            yield batch

    stats = dataset_stats(keep(images), window=window, progress=progress)
    if stats.count < 2:
        raise ValueError(f"images must hold at least 2 images, got {stats.count}")
    fit = stats.fit()
    noise_delta = max(float(fit.delta), 0.0)  # Δ < 0 (a spectrum rising with |k|): no cloud noise; white is closest
    table_data = (np.concatenate(kept) - stats.mean) / np.maximum(stats.std, 1e-6)
    key_table, key_sheet = jax.random.split(jax.random.key(seed))
    H, W, C = stats.image_shape
    report = {
        "delta": fit.delta,
        "amplitude": fit.amplitude,
        "r_value": fit.r_value,
        "fit": {"method": fit.method, "mask_cross": fit.mask_cross, "window": window},
        "image_shape": [H, W, C],
        "count": stats.count,
        "channel_mean": stats.mean.mean((0, 1)).tolist(),
        "channel_std": np.sqrt((stats.std**2).mean((0, 1))).tolist(),
        "channel_cov": stats.channel_cov.tolist(),
        "noise_delta": noise_delta,
        "mahalanobis": mahalanobis_table(table_data, noise_delta, key_table),
        "mahalanobis_size": len(table_data),
        "dataset": stats.to_dict(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "stats.json", json.dumps(report, indent=1))
    plot_power_law_fit(fit, out / "fit.png")
    deltas = {"white": 0.0, "pink": 1.0, f"cloud (Δ={noise_delta:.2f})": noise_delta, "red": 2.0}
    plot_noise_sheet(key_sheet, max(H, W), deltas=deltas, path=out / "noise.png")
    return report
