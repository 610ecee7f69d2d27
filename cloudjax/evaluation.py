"""Evaluation of a model's samples: drawn from fixed keys, scored against held-out images with intervals, plotted.

* :func:`draw` — samples from the same starting keys for every sampler and NFE, seconds per image timed without
  the compile; :func:`plot_samples` — sample sheets beside the data.
* :func:`score` — every metric of :mod:`cloudjax.metrics` with ``bootstrap`` resamplings of both sets (on the
  :func:`features` of each), and :func:`interval` — their 95 % percentile interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from cloudjax import metrics

__all__ = ["features", "measure", "score", "interval", "draw", "plot_samples"]


# --- scoring ------------------------------------------------------------------------------------------------------


def features(images: np.ndarray, classifier, inception=None) -> dict[str, np.ndarray]:
    """What the metrics read of a set of images ``(N, H, W, C)``, one row per image: the images themselves, their
    radial log spectra and, with a classifier or Inception weights, their features (so a bootstrap resamples rows,
    not networks)."""
    out = {"images": images, "spectrum": np.asarray(metrics.fourier_features(images))}
    if classifier is not None:
        out["classifier"] = metrics.classifier_features(classifier, images)
    if inception is not None:
        out["inception"] = metrics.inception_features(images, inception)
    return out


def measure(fx: dict, fy: dict, key: jax.Array, swd_patches: int) -> dict[str, float]:
    """Every metric of the set ``fy`` against the reference ``fx`` (:func:`features` of each, data units)."""
    (x, y), (k_swd, k_hf) = (fx["images"], fy["images"]), jax.random.split(key)
    swd = metrics.sliced_wasserstein(x, y, k_swd, num_patches=swd_patches)
    result = {f"swd_{level}": float(v) for level, v in swd.items()}
    result["spectral_distance"] = float(metrics.spectral_distance(x, y))
    result["frechet_pixel"] = metrics.frechet_distance(x.reshape(len(x), -1), y.reshape(len(y), -1))
    result["frechet_spectrum"] = metrics.frechet_distance(fx["spectrum"], fy["spectrum"])
    if "classifier" in fx:
        result["frechet_classifier"] = metrics.frechet_distance(fx["classifier"], fy["classifier"])
    if "inception" in fx:
        result["fid"] = metrics.frechet_distance(fx["inception"], fy["inception"])
    result["high_frequency_accuracy"] = float(metrics.high_frequency_test(x, y, k_hf))
    return result


def score(
    fx: dict, samples: np.ndarray, key: jax.Array, classifier, swd_patches: int, bootstrap: int = 0, inception=None
):
    """``(metrics, replicates)``: every metric of ``samples`` against the reference features ``fx``, plus the pixel
    mean and std; and each metric over ``bootstrap`` resamplings (with replacement) of both sets, ``{metric:
    (bootstrap,)}``, each with its own metric key — the spread of the metric over new sample and reference sets.

    A resampled set repeats images, which inflates a distance between distributions (the Fréchet distances most:
    repeated rows shrink the covariance); the replicates are therefore shifted by their mean's excess over the
    measured value (the bootstrap's bias estimate), so that intervals are centred on what was measured.
    """
    fy = features(samples, classifier, inception)
    result = measure(fx, fy, key, swd_patches) | {
        "sample_mean": float(samples.mean()),
        "sample_std": float(samples.std()),
    }
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    draws = []
    for b in range(bootstrap):
        ix, iy = rng.integers(0, len(fx["images"]), len(fx["images"])), rng.integers(0, len(samples), len(samples))
        take = lambda f, i: {k: v[i] for k, v in f.items()}
        draws.append(measure(take(fx, ix), take(fy, iy), jax.random.fold_in(key, b), swd_patches))
    replicates = {m: np.array([d[m] for d in draws]) for m in (draws[0] if draws else {})}
    return result, {m: v - (v.mean() - result[m]) for m, v in replicates.items()}


def interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """The percentile bootstrap interval ``[low, high]`` of a metric's replicates (NaN ones left out)."""
    tail = 50 * (1 - level)
    return [float(v) for v in np.nanpercentile(replicates, [tail, 100 - tail], method="nearest")]


# --- sampling -----------------------------------------------------------------------------------------------------

# A model draws ``num`` samples in data units: ``model(key, num, steps, method, t_start) -> (num, H, W, C)``.
Model = Callable[[jax.Array, int, int, str, float], np.ndarray]


def draw(model: Model, sampler: str, steps: int, t_start: float, batch: int, num: int, seed: int):
    """``num`` samples in data units clipped to the data's range [0, 1] (as any saved image is), the fraction of
    pixels that fell outside it, and the seconds per image, compile time excluded.

    Batch i starts from ``fold_in(key(seed), i)``, the same for every sampler and step count of a model. Batch 0
    also compiles, so the clock runs over the others (or over batch 0 again when there is only one).
    """
    run = lambda i: model(jax.random.fold_in(jax.random.key(seed), i), batch, steps, sampler, t_start)
    batches = [run(0)]
    start = time.perf_counter()
    batches += [run(i) for i in range(1, -(-num // batch))]
    if len(batches) == 1:
        start = time.perf_counter()
        run(0)
    seconds = (time.perf_counter() - start) / (batch * max(len(batches) - 1, 1))
    samples = np.concatenate(batches)[:num]
    return np.clip(samples, 0, 1), float(np.mean((samples < 0) | (samples > 1))), seconds


def _tile(images: np.ndarray, n: int = 4) -> np.ndarray:
    """The first n² images ``(N, H, W, 1)`` as one ``(nH, nW)`` grid, clipped to [0, 1] for display."""
    x = np.clip(images[: n * n, ..., 0], 0, 1)
    x = np.concatenate([x, np.zeros((n * n - len(x), *x.shape[1:]))])
    H, W = x.shape[1:]
    return x.reshape(n, n, H, W).transpose(0, 2, 1, 3).reshape(n * H, n * W)


def plot_samples(real: np.ndarray, sheets: dict[tuple[str, int], np.ndarray], path: Path) -> None:
    """Real images, then one row per model and one column per NFE (same starting noise along a row)."""
    from cloudjax.plots import new_figure

    names = list(dict.fromkeys(v for v, _ in sheets))
    nfes = sorted({n for _, n in sheets})
    fig = new_figure(figsize=(2.2 * (len(nfes) + 1), 2.3 * len(names)))
    axes = fig.subplots(len(names), len(nfes) + 1, squeeze=False)
    for row, name in enumerate(names):
        axes[row, 0].imshow(_tile(real), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title("data", fontsize=8)
        for col, nfe in enumerate(nfes, start=1):
            if (name, nfe) in sheets:
                axes[row, col].imshow(_tile(sheets[(name, nfe)]), cmap="gray", vmin=0, vmax=1)
                axes[row, col].set_title(f"{name}, NFE {nfe}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
