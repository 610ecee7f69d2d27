"""The report of ``cloudjax stats``: stats.json, the Δ fit plot and the noise figure, from one pass over the data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from cloudjax.mahalanobis import mahalanobis_table
from cloudjax.stats import dataset_stats


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
