"""FID and KID with the Inception-v3 of the reference implementations, weights from a local file.

The network is :class:`cloudjax.models.inception.InceptionV3` (pytorch-fid's port of the TensorFlow 2015 graph)
run in JAX; ``weights`` is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (read with torch) or the
``.npz`` :func:`convert_weights` makes of it once (read without torch), or an already loaded network.

* :func:`inception_features` — ``(N, H, W, C)`` images in [0, 1] → ``(N, 2048)`` pool3 features.
* :func:`frechet_distance` / :func:`frechet_from_statistics` — ``‖μ_x − μ_y‖² + tr Σ_x + tr Σ_y −
  2 tr (Σ_x^½ Σ_y Σ_x^½)^½`` in float64 on the host; ``tr (Σ_x Σ_y)^½`` (what pytorch-fid takes from
  ``scipy.linalg.sqrtm``) comes from two symmetric eigendecompositions, with no complex parts.
* :func:`fid` — FID of two image sets, or of saved statistics (:func:`save_statistics`: ``mu``, ``sigma`` in an
  ``.npz``, the keys pytorch-fid's ``--save-stats`` writes).
* :func:`kernel_inception_distance` / :func:`kid` — Bińkowski et al.'s unbiased MMD² with the kernel
  ``k(a, b) = (a·b / d + 1)³``, mean and std over random subsets.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cloudjax.models import inception as _inception
from cloudjax.models.inception import InceptionV3

__all__ = [
    "load_inception",
    "convert_weights",
    "inception_features",
    "feature_statistics",
    "save_statistics",
    "load_statistics",
    "frechet_from_statistics",
    "frechet_distance",
    "fid",
    "kernel_inception_distance",
    "kid",
]


# --- the network ---------------------------------------------------------------------------------------------


def load_inception(weights: str | Path | InceptionV3, dtype=jnp.float32) -> InceptionV3:
    """The FID network from a weights file (the last two read are kept), or ``weights`` itself if a network."""
    if isinstance(weights, InceptionV3):
        return weights
    path = Path(weights).absolute()
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return _load_cached(path, stamp, jnp.dtype(dtype))


@functools.lru_cache(maxsize=2)
def _load_cached(path: Path, stamp, dtype) -> InceptionV3:
    return _inception.load(path, dtype)


def convert_weights(src: str | Path, dst: str | Path) -> Path:
    """Write the arrays the network reads from ``src`` (pytorch-fid's ``.pth``; needs torch) to ``dst`` (``.npz``
    with the same keys, float32, no pickle), after checking every key and shape. Returns the path written."""
    state = _inception.read_state_dict(src)
    _inception.from_state_dict(state, name=f"Inception weights {src}")  # the same checks as at load time
    dst = Path(dst).with_suffix(".npz")
    np.savez(dst, **{k: np.asarray(state[k], np.float32) for k in _inception.reference_layout()})
    return dst


@functools.partial(jax.jit, static_argnums=0)
def _pool3(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


def inception_features(images, weights, batch_size: int = 50, dtype=jnp.float32) -> np.ndarray:
    """``(N, H, W, C)`` images in [0, 1] (C = 1 is repeated to RGB) → ``(N, 2048)`` float32 pool3 features.

    ``weights``: a weights file or a network (:func:`load_inception`). Batches of ``batch_size``, the last one
    padded: one compiled program per (batch_size, H, W), whatever N; ``dtype`` bfloat16 computes in bfloat16.
    """
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 1 or 3), got shape {x.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    graphdef, state = nnx.split(load_inception(weights, dtype))
    x = np.repeat(x, 3 // x.shape[-1], axis=-1)
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *x.shape[1:]), np.float32)])
        out.append(np.asarray(_pool3(graphdef, state, padded))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


# --- Fréchet distance ------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, float64) of ``(N, D)`` features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def save_statistics(path: str | Path, features: np.ndarray) -> Path:
    """``mu``, ``sigma`` (:func:`feature_statistics`) and ``num`` of ``features`` → ``path`` (``.npz``)."""
    mu, sigma = feature_statistics(features)
    path = Path(path).with_suffix(".npz")
    np.savez(path, mu=mu, sigma=sigma, num=len(features))
    return path


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from an ``.npz`` written by :func:`save_statistics` (or pytorch-fid's ``--save-stats``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"statistics {path}: not an .npz with 'mu' and 'sigma' ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"statistics {path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return mu, sigma


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root ``V diag(√λ) Vᵀ`` of a positive semi-definite matrix (negative λ clipped)."""
    lam, V = np.linalg.eigh(c)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def frechet_from_statistics(mu_x, sigma_x, mu_y, sigma_y) -> float:
    """d² between the Gaussians N(μ_x, Σ_x) and N(μ_y, Σ_y), in float64 (the module docstring's formula)."""
    mu_x, mu_y, sx, sy = (np.asarray(a, np.float64) for a in (mu_x, mu_y, sigma_x, sigma_y))
    if mu_x.shape != mu_y.shape or sx.shape != sy.shape or sx.shape != (mu_x.size, mu_x.size):
        raise ValueError(f"statistics do not match: mu {mu_x.shape}, {mu_y.shape}; sigma {sx.shape}, {sy.shape}")
    s = _sqrt_psd(sx)
    cross = s @ sy @ s
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0, None)).sum()
    return float(np.sum((mu_x - mu_y) ** 2) + np.trace(sx) + np.trace(sy) - 2 * tr_sqrt)


def frechet_distance(feat_x: np.ndarray, feat_y: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance d² between Gaussians fitted to two feature sets ``(N, D)`` (FID's number)."""
    fx, fy = np.asarray(feat_x), np.asarray(feat_y)
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(f"feat_x and feat_y must be (N, D) with the same D, got {fx.shape} and {fy.shape}")
    if min(len(fx), len(fy)) < 2:
        raise ValueError("feat_x and feat_y need at least 2 rows each")
    return frechet_from_statistics(*feature_statistics(fx), *feature_statistics(fy))


def fid(x, y, weights=None, batch_size: int = 50, dtype=jnp.float32) -> float:
    """FID between ``x`` and ``y``, each images ``(N, H, W, C)`` in [0, 1], a statistics ``.npz`` path, or a
    ``(mu, sigma)`` pair; ``weights`` (a file or a network) is needed for images only."""
    model = None

    def stats(a):
        nonlocal model
        if isinstance(a, (str, Path)):
            return load_statistics(a)
        if isinstance(a, tuple):
            return a
        if weights is None:
            raise ValueError("weights: images need the Inception weights (a file or a network)")
        model = model or load_inception(weights, dtype)
        return feature_statistics(inception_features(a, model, batch_size))

    return frechet_from_statistics(*stats(x), *stats(y))


# --- Kernel Inception distance -----------------------------------------------------------------------------------


def kernel_inception_distance(
    feat_x: np.ndarray, feat_y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) over ``num_subsets`` random subsets of ``min(subset_size, N_x, N_y)`` rows of each set of the
    unbiased MMD² ``Σ_{i≠j} k(x_i, x_j) / m(m−1) + Σ_{i≠j} k(y_i, y_j) / m(m−1) − 2 Σ_ij k(x_i, y_j) / m²``."""
    fx, fy = np.asarray(feat_x, np.float64), np.asarray(feat_y, np.float64)
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(f"feat_x and feat_y must be (N, D) with the same D, got {fx.shape} and {fy.shape}")
    m = min(subset_size, len(fx), len(fy))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 rows and num_subsets >= 1, got {m} and {num_subsets}")
    rng = np.random.default_rng(seed)
    kernel = lambda a, b: (a @ b.T / fx.shape[1] + 1) ** 3
    values = []
    for _ in range(num_subsets):
        a, b = fx[rng.choice(len(fx), m, replace=False)], fy[rng.choice(len(fy), m, replace=False)]
        kxx, kyy = kernel(a, a), kernel(b, b)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kernel(a, b).mean())
    return float(np.mean(values)), float(np.std(values))


def kid(x, y, weights, batch_size: int = 50, dtype=jnp.float32, **kwargs) -> tuple[float, float]:
    """:func:`kernel_inception_distance` of the Inception features of images ``x`` and ``y`` in [0, 1]."""
    model = load_inception(weights, dtype)
    return kernel_inception_distance(*(inception_features(a, model, batch_size) for a in (x, y)), **kwargs)
