"""Figures written as PNG files. matplotlib is imported inside each function (``pip install cloudjax[plot]``)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

__all__ = ["new_figure", "save_figure", "plot_power_law_fit", "plot_noise_sheet"]


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot (no backend state, nothing to close); matplotlib is imported here."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` whole (:func:`cloudjax._files.atomic_output`), in the format its suffix names."""
    from cloudjax._files import atomic_output

    with atomic_output(path) as f:
        fig.savefig(f, dpi=100, format=Path(path).suffix[1:] or "png")
    return Path(path)


def plot_power_law_fit(fit, path: str | Path) -> Path:
    """Paper Fig. 9: Γ against |k| on linear and log-log axes, the fitted ``A² |k|^{−2Δ}`` as a line.

    Modes left out of the fit (central cross) are light blue; DC is not drawn.
    """
    k, gamma, used = fit.k.ravel(), fit.gamma.ravel(), fit.mask.ravel()
    masked = ~used & (k > 0)
    line_k = np.geomspace(k[k > 0].min(), k.max(), 100)
    fig = new_figure(figsize=(10, 4))
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
    return save_figure(fig, path)


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
    fig = new_figure(figsize=(2.2 * len(deltas), 2.2 * rows))
    axes = fig.subplots(rows, len(deltas), squeeze=False)
    for col, ((name, delta), k) in enumerate(zip(deltas.items(), keys, strict=True)):
        noise = np.asarray(noise_fn(k, (rows, size, size), delta, (-2, -1)))
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(noise[row], cmap="gray", vmin=-2.5, vmax=2.5)
            ax.set_axis_off()
        axes[0, col].set_title(name, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Sample grids

__all__ += ["image_grid", "save_image_grid", "plot_sample_comparison"]


def image_grid(images, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """``(N, H, W, C)`` images in [0, 1] → one uint8 ``(rows·(H+pad)+pad, cols·(W+pad)+pad, C)`` tiled image.

    ``ncols`` defaults to ⌈√N⌉; values are clipped to [0, 1]; padding is white.
    """
    x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {x.shape}")
    n, H, W, C = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (H + pad) + pad, ncols * (W + pad) + pad, C), np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[pad + r * (H + pad) : (r + 1) * (H + pad), pad + c * (W + pad) : (c + 1) * (W + pad)] = x[i]
    return np.round(grid * 255).astype(np.uint8)


def save_image_grid(images, path: str | Path, ncols: int | None = None, scale: int = 4) -> Path:
    """Write :func:`image_grid` of ``images`` (in [0, 1]) as a PNG, each pixel ``scale``×``scale``."""
    from etils import epath  # the run folder may be a bucket
    from PIL import Image

    from cloudjax._files import atomic_output

    grid = image_grid(images, ncols).repeat(scale, axis=0).repeat(scale, axis=1)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format="PNG")
    return path


def plot_sample_comparison(named_images: dict, path: str | Path, ncols: int | None = None) -> Path:
    """Titled sample grids side by side, e.g. ``{"data": x, "white": w, "cloud": c}`` (each in [0, 1])."""
    fig = new_figure(figsize=(3.2 * len(named_images), 3.4))
    axes = fig.subplots(1, len(named_images), squeeze=False)[0]
    for ax, (name, images) in zip(axes, named_images.items(), strict=True):
        grid = image_grid(images, ncols)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
