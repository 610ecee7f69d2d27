"""Sample-quality metrics that need no download.

Every metric compares a reference set ``x`` (data) with a candidate set ``y`` (generated samples), both
channels-last image batches ``(N, H, W, C)`` in the same value range. All but FID and KID are chosen so that
low- and high-frequency fidelity can be read separately.

* :func:`sliced_wasserstein` — multi-scale sliced Wasserstein distance between 7×7 patches of the
  Laplacian pyramid levels (Karras et al. 2018), one value per frequency band.
* :func:`spectral_distance` — RMS difference of the radially averaged log power spectra; blur
  (the "airbrushed" look) lowers the high-|k| power and shows here.
* :func:`frechet_distance` — the Gaussian Fréchet distance between two feature sets, with features from
  :func:`fourier_features` (Π space) or :func:`classifier_features` (a small CNN cloudjax trains on the
  data's labels: a "classifier Fréchet distance").
* :func:`high_frequency_test` — Falck et al.'s test: cross-validated accuracy of a logistic regression
  telling real from generated images by their high-frequency power; 0.5 means indistinguishable.
* :func:`fid`, :func:`kid`, :func:`inception_features` — the classic FID and KID, with the Inception-v3
  weights read from a local file (:mod:`cloudjax.fid`, re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cloudjax.fid import (
    feature_statistics,
    fid,
    frechet_distance,
    frechet_from_statistics,
    inception_features,
    kernel_inception_distance,
    kid,
    load_inception,
    load_statistics,
    save_statistics,
)
from cloudjax.models.classifier import (
    Classifier,
    ClassifierConfig,
    classifier_features,
    load_classifier,
    save_classifier,
    train_classifier,
)
from cloudjax.spectral import _spatial_axes, radial_profile, rfft_real

__all__ = [
    "laplacian_pyramid",
    "sliced_wasserstein",
    "log_power_spectrum",
    "spectral_distance",
    "frechet_distance",
    "fourier_features",
    "ClassifierConfig",
    "Classifier",
    "train_classifier",
    "classifier_features",
    "save_classifier",
    "load_classifier",
    "high_frequency_features",
    "high_frequency_test",
    "inception_features",
    "fid",
    "kid",
    "kernel_inception_distance",
    "feature_statistics",
    "save_statistics",
    "load_statistics",
    "frechet_from_statistics",
    "load_inception",
]

_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
_TINY = 1e-20  # floor under powers before taking logs


def _check_images(name: str, x) -> jnp.ndarray:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (N, H, W, C), got shape {x.shape}")
    return x


# --- Laplacian-pyramid sliced Wasserstein distance --------------------------------------------------------------


def _blur(x: jnp.ndarray) -> jnp.ndarray:
    """Separable 5-tap binomial low-pass of ``(N, H, W, C)`` with reflected borders."""
    for axis in (1, 2):
        n = x.shape[axis]
        padded = jnp.pad(x, [(2, 2) if a == axis else (0, 0) for a in range(4)], mode="reflect")
        x = sum(w * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i, w in enumerate(_BINOMIAL))
    return x


def _upsample(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Zero insertion and a 4× binomial blur (the pyramid's expand step), cropped to ``size``."""
    N, h, w, C = x.shape
    up = jnp.zeros((N, 2 * h, 2 * w, C), x.dtype).at[:, ::2, ::2].set(x)
    return 4 * _blur(up)[:, : size[0], : size[1]]


@functools.partial(jax.jit, static_argnames="min_resolution")
def laplacian_pyramid(x: jnp.ndarray, min_resolution: int = 8) -> list[jnp.ndarray]:
    """Laplacian pyramid of ``(N, H, W, C)`` images, finest band first.

    Level ℓ is ``G_ℓ − expand(G_{ℓ+1})`` with ``G_0 = x`` and ``G_{ℓ+1} = blur(G_ℓ)[::2, ::2]``; the last
    level is the low-pass residual ``G_L``, the first whose next halving would fall below ``min_resolution``.
    The levels sum back to ``x`` (expanded), so together they carry all of the image.
    """
    x = _check_images("x", x)
    if min_resolution < 3:
        raise ValueError(f"min_resolution must be >= 3, got {min_resolution}")
    levels = []
    while (min(x.shape[1:3]) + 1) // 2 >= min_resolution:
        low = _blur(x)[:, ::2, ::2]
        levels.append(x - _upsample(low, x.shape[1:3]))
        x = low
    levels.append(x)
    return levels


def _random_patches(key: jax.Array, images: jnp.ndarray, num: int, size: int) -> jnp.ndarray:
    """``(num, size, size, C)`` windows at uniformly random images and positions."""
    N, H, W, C = images.shape
    kn, ki, kj = jax.random.split(key, 3)
    n = jax.random.randint(kn, (num,), 0, N)
    i = jax.random.randint(ki, (num,), 0, H - size + 1)
    j = jax.random.randint(kj, (num,), 0, W - size + 1)
    window = lambda n, i, j: jax.lax.dynamic_slice(images, (n, i, j, 0), (1, size, size, C))[0]
    return jax.vmap(window)(n, i, j)


def sliced_wasserstein(
    x: jnp.ndarray,
    y: jnp.ndarray,
    key: jax.Array,
    *,
    patch_size: int = 7,
    num_patches: int = 16384,
    num_projections: int = 512,
    min_resolution: int = 8,
) -> dict[str, float]:
    """Multi-scale sliced Wasserstein distance (SWD) between two image sets (Karras et al. 2018).

    For every Laplacian-pyramid level (:func:`laplacian_pyramid`), ``num_patches`` random
    ``patch_size × patch_size`` neighbourhoods are drawn from each set and flattened to vectors of
    dimension D = patch² · C; both sets are normalised per channel with the mean and std of ``x``'s
    patches, projected on ``num_projections`` random unit directions u, and
    ``SWD = mean_u (1/n) Σ_i |sort(u·p_x)_i − sort(u·p_y)_i|`` (the 1-D Wasserstein-1 distance per
    direction). Karras normalise each set by its own statistics; normalising both by the reference keeps a
    global shift or gain of the samples visible.

    The projections run jitted; the sorts run in NumPy on the host, which sorts a (16384, 512) array
    about ten times faster than XLA:CPU, so this function is called from Python, not inside ``jit``.

    Args:
      x, y: ``(N, H, W, C)`` reference and candidate images (the counts may differ).
      key: PRNG key for the patch positions and the projections.

    Returns:
      ``{"HxW": SWD of that level, ..., "mean": mean over levels}``, finest (highest-frequency) band first;
      the last level is the low-pass residual. 0 for identical distributions (up to sampling noise).
    """
    x, y = _check_images("x", x), _check_images("y", y)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must have the same image shape, got {x.shape[1:]} and {y.shape[1:]}")
    if patch_size < 1 or min_resolution < patch_size:
        raise ValueError(f"need 1 <= patch_size <= min_resolution, got {patch_size} and {min_resolution}")
    if min(x.shape[1:3]) < min_resolution:
        raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} are smaller than min_resolution={min_resolution}")
    projections = _swd_projections(
        x,
        y,
        key,
        patch_size=patch_size,
        num_patches=num_patches,
        num_projections=num_projections,
        min_resolution=min_resolution,
    )
    result = {
        level: float(np.abs(np.sort(px, axis=0) - np.sort(py, axis=0)).mean())
        for level, (px, py) in jax.device_get(projections).items()
    }
    result["mean"] = float(np.mean(list(result.values())))
    return result


@functools.partial(jax.jit, static_argnames=("patch_size", "num_patches", "num_projections", "min_resolution"))
def _swd_projections(x, y, key, *, patch_size, num_patches, num_projections, min_resolution):
    """``{"HxW": (u·p_x, u·p_y)}``: each pyramid level's normalised patches of both sets projected on random unit
    directions, two ``(num_patches, num_projections)`` arrays (see :func:`sliced_wasserstein`)."""
    result = {}
    pyramids = zip(laplacian_pyramid(x, min_resolution), laplacian_pyramid(y, min_resolution), strict=True)
    for level, (lx, ly) in enumerate(pyramids):
        kx, ky, kp = jax.random.split(jax.random.fold_in(key, level), 3)
        px = _random_patches(kx, lx, num_patches, patch_size)
        py = _random_patches(ky, ly, num_patches, patch_size)
        mean = px.mean(axis=(0, 1, 2))
        std = px.std(axis=(0, 1, 2)) + 1e-8
        px = ((px - mean) / std).reshape(num_patches, -1)
        py = ((py - mean) / std).reshape(num_patches, -1)
        u = jax.random.normal(kp, (px.shape[1], num_projections))
        u = u / jnp.linalg.norm(u, axis=0)
        result[f"{lx.shape[1]}x{lx.shape[2]}"] = (px @ u, py @ u)
    return result


# --- Power spectra ---------------------------------------------------------------------------------------------


def _spatial_last(x: jnp.ndarray, axes: Sequence[int]) -> jnp.ndarray:
    """Move the two spatial ``axes`` to the end: ``(..., H, W)``."""
    a, b = _spatial_axes(x.ndim, axes)
    return jnp.moveaxis(x, (a, b), (-2, -1))


def log_power_spectrum(x: jnp.ndarray, axes: Sequence[int] = (-3, -2)) -> tuple[np.ndarray, jnp.ndarray]:
    """Radially averaged log power spectrum of a set of images: ``(k, log E[(Π x)²](k))``.

    The power ``(Π x)²`` (:func:`cloudjax.rfft_real`) is averaged over every non-spatial axis (images and
    channels) and over each ring of equal |k|; ``k`` is in cycles per pixel, ``k[0] = 0`` the mean (DC).
    """
    power = _spatial_last(rfft_real(x, axes=axes) ** 2, axes)
    power = power.reshape(-1, *power.shape[-2:]).mean(axis=0)
    k, profile = radial_profile(power)
    return k, jnp.log(jnp.maximum(profile, _TINY))


@functools.partial(jax.jit, static_argnames="axes")
def spectral_distance(x: jnp.ndarray, y: jnp.ndarray, axes: tuple[int, int] = (-3, -2)) -> jnp.ndarray:
    """RMS over |k| > 0 of ``log P_x(k) − log P_y(k)``, the radially averaged log power spectra.

    Natural-log units: 0.1 means the powers differ by about 10% on average; a set blurred until its
    high-|k| power drops by e² is 2 away at those k. The DC ring (the image mean) is left out.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if _spatial_last(x, axes).shape[-2:] != _spatial_last(y, axes).shape[-2:]:
        raise ValueError(f"x and y must have the same spatial size, got {x.shape} and {y.shape}")
    _, log_px = log_power_spectrum(x, axes)
    _, log_py = log_power_spectrum(y, axes)
    return jnp.sqrt(jnp.mean((log_px[1:] - log_py[1:]) ** 2))


# --- Fréchet distance and features -------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="radial")
def fourier_features(x: jnp.ndarray, radial: bool = True) -> jnp.ndarray:
    """Π-space features of ``(N, H, W, C)`` images for :func:`frechet_distance`.

    ``radial=True``: each image's log power ``log (Π x)²`` averaged over rings of equal |k|, per channel,
    shape ``(N, R·C)``. ``radial=False``: the flattened ``Π x``, shape ``(N, H·W·C)``; Π is orthonormal, so
    the Fréchet distance on these features equals the pixel-space one (the author's figure in Cloud Diffusion Part 1).
    """
    x = _check_images("x", x)
    X = rfft_real(x)
    if not radial:
        return X.reshape(len(x), -1)
    _, profile = radial_profile(X**2, axes=(1, 2))  # (N, C, R)
    return jnp.log(jnp.maximum(profile, _TINY)).reshape(len(x), -1)


# --- Falck et al.'s high-frequency test --------------------------------------------------------------------------


def high_frequency_features(x: jnp.ndarray, k_min: float = 0.25) -> jnp.ndarray:
    """``(N, R_hi)`` per-image log power averaged over channels and over each |k| ring with k ≥ ``k_min``.

    ``k_min`` is in cycles per pixel (Nyquist is 0.5 along an axis, √0.5 in the corner).
    """
    x = _check_images("x", x)
    k, profile = radial_profile(rfft_real(x) ** 2, axes=(1, 2))  # (N, C, R)
    keep = np.flatnonzero(k >= k_min)
    if keep.size == 0:
        raise ValueError(f"k_min={k_min} is above every wavenumber of a {x.shape[1]}x{x.shape[2]} image")
    return jnp.log(jnp.maximum(profile.mean(axis=1)[:, keep], _TINY))


@functools.partial(jax.jit, static_argnames=("k_min", "folds", "steps"))
def high_frequency_test(
    real: jnp.ndarray,
    fake: jnp.ndarray,
    key: jax.Array,
    *,
    k_min: float = 0.25,
    folds: int = 5,
    steps: int = 500,
    l2: float = 1e-3,
) -> jnp.ndarray:
    """Held-out accuracy of a logistic regression telling ``real`` from ``fake`` by high-frequency power.

    Falck et al.'s test: features are :func:`high_frequency_features`; n = min(N_real, N_fake) images of each
    set are split at random into ``folds`` folds; for each fold a logistic regression (standardised features,
    L2 penalty ``l2``, Adam for ``steps`` steps) is fitted on the other folds and scored on it. Returns the
    accuracy over all 2n held-out predictions: 0.5 means the high frequencies are indistinguishable, 1 that
    they give the samples away.
    """
    real, fake = _check_images("real", real), _check_images("fake", fake)
    n = min(len(real), len(fake))
    if n < folds or folds < 2:
        raise ValueError(f"need folds >= 2 and at least {folds} images per set, got folds={folds} and n={n}")
    feats = jnp.concatenate([high_frequency_features(real[:n], k_min), high_frequency_features(fake[:n], k_min)])
    labels = jnp.repeat(jnp.array([0.0, 1.0]), n)
    fold = jax.random.permutation(key, 2 * n) % folds
    optimizer = optax.adam(0.05)

    def correct_in_fold(f):
        train = (fold != f).astype(jnp.float32)
        mean = (train @ feats) / train.sum()
        std = jnp.sqrt((train @ (feats - mean) ** 2) / train.sum()) + 1e-6
        z = (feats - mean) / std

        def loss(params):
            w, b = params
            nll = optax.sigmoid_binary_cross_entropy(z @ w + b, labels)
            return (train * nll).sum() / train.sum() + l2 * jnp.sum(w**2)

        def update(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss)(params), state)
            return (optax.apply_updates(params, updates), state), None

        params = (jnp.zeros(feats.shape[1]), jnp.zeros(()))
        (params, _), _ = jax.lax.scan(update, (params, optimizer.init(params)), length=steps)
        w, b = params
        hit = ((z @ w + b > 0) == (labels > 0.5)).astype(jnp.float32)
        return ((1 - train) * hit).sum()

    return jax.vmap(correct_in_fold)(jnp.arange(folds)).sum() / (2 * n)
