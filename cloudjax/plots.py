"""Figures written as PNG files. matplotlib is imported inside each function (``pip install cloudjax[plot]``)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

__all__ = ["plot_power_law_fit", "plot_noise_sheet"]


def _figure(**kwargs):
    """A matplotlib Figure that is not registered with pyplot (no backend state, nothing to close)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_power_law_fit(fit, path: str | Path) -> Path:
    """Paper Fig. 9: Γ against |k| on linear and log-log axes, the fitted ``A² |k|^{−2Δ}`` as a line.

    Modes left out of the fit (central cross) are light blue; DC is not drawn.
    """
    k, gamma, used = fit.k.ravel(), fit.gamma.ravel(), fit.mask.ravel()
    masked = ~used & (k > 0)
    line_k = np.geomspace(k[k > 0].min(), k.max(), 100)
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, (False, True), strict=True):
        ax.scatter(k[masked], gamma[masked], s=4, c="lightblue", label="masked (central cross)")
        ax.scatter(k[used], gamma[used], s=4, c="tab:blue", label="fitted modes")
        ax.plot(
            line_k, fit.predict(line_k), c="tab:red", label=f"A²|k|^(−2Δ), Δ={fit.delta:.3f}, A={fit.amplitude:.3g}"
        )
        ax.set_xlabel("|k| (cycles / pixel)")
        ax.set_ylabel("Γ (Π-space variance)")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.tick_params(which="minor", labelbottom=False, labelleft=False)
            ax.set_title(f"log-log, r = {fit.r_value:.3f}")
        else:
            ax.set_ylim(0, 1.05 * gamma[k > 0].max())
            ax.set_title("linear")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_noise_sheet(
    key: jax.Array,
    size: int,
    deltas: dict[str, float] | None = None,
    path: str | Path = "noise.png",
    rows: int = 2,
) -> Path:
    """Paper Fig. 12: ``rows`` samples of power-law noise (``pad=3``) for each named Δ, one column each.

    ``deltas`` defaults to white 0, pink 1, cloud 1.5, red 2.
    """
    from cloudjax.noise import power_law_noise

    deltas = deltas or {"white": 0.0, "pink": 1.0, "cloud": 1.5, "red": 2.0}
    noise_fn = jax.jit(power_law_noise, static_argnums=(1, 2, 3))
    keys = jax.random.split(key, len(deltas))
    fig = _figure(figsize=(2.2 * len(deltas), 2.2 * rows))
    axes = fig.subplots(rows, len(deltas), squeeze=False)
    for col, ((name, delta), k) in enumerate(zip(deltas.items(), keys, strict=True)):
        noise = np.asarray(noise_fn(k, (rows, size, size), delta, (-2, -1)))
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(noise[row], cmap="gray", vmin=-2.5, vmax=2.5)
            ax.set_axis_off()
        axes[0, col].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
