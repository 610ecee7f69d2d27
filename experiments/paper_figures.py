#!/usr/bin/env python
"""Every figure and table of "Cloud Diffusion Part 1" (Randono), regenerated on any cloudjax dataset.

    python experiments/paper_figures.py --data patches --image-size 32 --num 2000 --out runs/paper

writes one PNG per figure and ``figures.json`` with every number the figures show. One pass over the data
gives what all figures share: the per-pixel mean μ and std σ, the normalised images ``(x − μ)/σ`` (eq. 19),
their centred complex FFT ``Z`` (eq. 6) and their real Fourier transform ``X = Π∘FFT`` (eq. 30). One
power-law fit gives the Δ that the noise figures, the Mahalanobis distances and the wager use. Images are
analysed in grey, as in the paper.

Figures, in the paper's numbering: 3 mean and std, 4 images vs matched white noise, 5 real-space
covariance, 6 Fourier transforms, 7 Fourier-space covariances Γ and C (and how diagonal Γ is), 8 Γ_diag,
9 the power-law fit, 10/11 periodic vs cropped noise tiled, 12 white/pink/cloud/red noise, 14 the forward
process, 17 radial signal and noise spectra over time, 19 the Mahalanobis distances, and §2.1–2.6 the wager
(guess one pixel from another) scored on held-out images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

import cloudjax as cj
from cloudjax.diffusion import GaussianDiffusion
from cloudjax.noise import power_law_autocovariance
from cloudjax.plots import new_figure, plot_power_law_fit
from cloudjax.spectral import radial_bins
from cloudjax.stats import PowerLawFit, cross_mask, fit_power_law, mahalanobis_table

PAD = 3  # cloud noise is the centre crop of a 3N × 3N periodic field (the paper's recipe, the library default)
NOISE_BATCH = 256  # noise fields per draw: one array shape for every draw, so JAX compiles the kernels once
# The author's numbers (Cloud Diffusion Part 1: STL-10 unlabeled, grey, 96×96, letterboxed images removed).
PAPER = {
    "image_size": 96,
    "delta": 1.49994,
    "r_value": -0.986,
    "mahalanobis": {
        "white-images": 19.70,
        "cloud-images": 4.18,
        "images-images": 5.30,
        "cloud-cloud": 2.75,
        "white-white": 27.33,
    },
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes, seeds and the paper's analysis choices."""

    image_size: int = 32
    num: int = 2000  # images in the statistics set
    heldout: int = 500  # held-out images the wager is scored on
    seed: int = 0
    cross: int = 4  # masked central cross: modes with |k_y|·H < cross or |k_x|·W < cross
    points: int = 4  # random points in Figs. 5 and 7
    times: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)  # diffusion times t ∈ [0, 1] in Figs. 14 and 17
    pairs: int = 64  # wager pixel pairs per held-out image

    def __post_init__(self):
        if self.image_size < 2 * self.cross + 2:
            raise ValueError(f"image_size must be at least 2·cross + 2 = {2 * self.cross + 2}, got {self.image_size}")
        for name in ("num", "heldout", "points", "pairs"):
            if getattr(self, name) < (2 if name == "num" else 1):
                raise ValueError(f"{name} must be positive (num at least 2), got {getattr(self, name)}")
        if not all(0.0 < t < 1.0 for t in self.times):
            raise ValueError(f"times must lie in (0, 1), got {self.times}")


@dataclasses.dataclass(frozen=True)
class Shared:
    """The one statistics pass and the one power-law fit that every figure reads."""

    config: Config
    images: np.ndarray  # (N, H, W) grey in [0, 1]: the statistics set
    heldout: np.ndarray  # (M, H, W) grey in [0, 1]: scored by the wager only
    mean: np.ndarray  # (H, W) μ_ij (eq. 1)
    std: np.ndarray  # (H, W) σ_ij (eq. 2)
    normed: np.ndarray  # (N, H, W) (x − μ)/σ (eq. 19)
    fourier: np.ndarray  # (N, H, W) complex FFT of normed, orthonormal, centred: DC at (H//2, W//2)
    pi: np.ndarray  # (N, H, W) Π∘FFT of normed in rfft_real's unshifted layout
    fit: PowerLawFit  # of normed: .delta, .amplitude, .r_value; .mask = the modes off the cross (Π layout)
    key: jax.Array


def analyse(images: np.ndarray, heldout: np.ndarray, config: Config) -> Shared:
    """One pass over grey ``(N, H, W)`` images in [0, 1]: per-pixel statistics, transforms, the Δ fit."""
    images = np.asarray(images, np.float32)
    if images.ndim != 3 or images.shape[1:] != (config.image_size,) * 2 or len(images) < 2:
        raise ValueError(f"images must be (N >= 2, {config.image_size}, {config.image_size}), got {images.shape}")
    mean, std = images.mean(0), images.std(0)
    std = np.maximum(std, 1e-3 * std.mean())  # a constant pixel stays 0 after normalising
    normed = (images - mean) / std
    fourier = np.fft.fftshift(np.fft.fft2(normed, norm="ortho"), axes=(-2, -1))
    pi = np.asarray(cj.rfft_real(normed, axes=(-2, -1)))
    fit = fit_power_law(normed[..., None], mask_cross=config.cross)
    heldout, key = np.asarray(heldout, np.float32), jax.random.key(config.seed)
    return Shared(config, images, heldout, mean, std, normed, fourier, pi, fit, key)


# ------------------------------------------------------------------------------------------ measurements


def centred_cross(H: int, W: int, width: int) -> np.ndarray:
    """``(H, W)`` bool, True on the central cross ``|k_y|·H < width`` or ``|k_x|·W < width`` (DC included) in
    the centred layout: the modes the paper masks."""
    return np.fft.fftshift(~cross_mask(H, W, width))


def cross_excess(power: np.ndarray, width: int) -> float:
    """How much stronger the central cross is than the rest at equal |k|, for a centred ``(H, W)`` power
    spectrum: the geometric mean over rings of equal |k| of (mean power on the cross) / (mean power off it).
    1 for a radial spectrum."""
    H, W = power.shape
    cross = centred_cross(H, W, width)
    rings = np.fft.fftshift(radial_bins(H, W)[0])
    ratios = [
        power[(rings == r) & cross].mean() / power[(rings == r) & ~cross].mean()
        for r in range(1, rings.max() + 1)
        if ((rings == r) & cross).any() and ((rings == r) & ~cross).any()
    ]
    return float(np.exp(np.mean(np.log(ratios))))


def offdiag_fraction(samples: np.ndarray, standardize: bool = False) -> float:
    """Fraction of the covariance's squared Frobenius norm that lies off the diagonal, ``Σ_{a≠b} Σ_ab² / Σ_ab Σ_ab²``.

    ``samples`` is ``(N, ...)`` (trailing axes flattened to D coordinates), centred here. A sample covariance
    of N draws is never diagonal (each entry carries noise of size 1/√N), so both sums are the unbiased
    U-statistics ``Σ_{n≠m} x_na x_nb x_ma x_mb / N(N−1)``: 0 means diagonal, whatever N and D. They come from
    the N×N Gram matrix (or the D×D covariance, whichever is smaller): ``Σ_ab (XᵀX)_ab² = Σ_nm (XXᵀ)_nm²``.
    ``standardize`` scales every coordinate to unit variance first (the correlation matrix).
    """
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    x = x - x.mean(0)
    if standardize:
        x = x / np.maximum(x.std(0), 1e-12)
    sq = x**2
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    total = np.sum(gram**2) - np.sum(sq.sum(1) ** 2)
    diagonal = np.sum(sq.sum(0) ** 2) - np.sum(sq**2)
    return float(1.0 - diagonal / total)


def seam_ratio(fields: np.ndarray) -> float:
    """Mean squared jump across the seams of tiled ``(..., H, W)`` fields over the one between neighbours.

    About 1 when opposite edges match (a periodic field tiles seamlessly), larger when they do not.
    """
    seam = np.mean((fields[..., 0, :] - fields[..., -1, :]) ** 2) + np.mean((fields[..., 0] - fields[..., -1]) ** 2)
    inside = np.mean(np.diff(fields, axis=-2) ** 2) + np.mean(np.diff(fields, axis=-1) ** 2)
    return float(seam / inside)


def crossing_frequency(k: np.ndarray, snr: np.ndarray) -> float | None:
    """The lowest |k| where ``snr`` falls through 1, log-log interpolated between bins.

    None when it never does (the signal dominates every bin) or is below 1 from the first bin on.
    """
    below = np.flatnonzero(snr < 1)
    if below.size == 0 or below[0] == 0:
        return None
    i = below[0]
    f = np.log(snr[i - 1]) / (np.log(snr[i - 1]) - np.log(snr[i]))
    return float(np.exp(np.log(k[i - 1]) + f * (np.log(k[i]) - np.log(k[i - 1]))))


def wager(mean, std, heldout, delta, pairs, rng, pad=PAD) -> dict:
    """Guess pixel 2 from pixel 1 at random pairs of positions of held-out images, under two Gaussian models.

    white (§2.2, eq. 4): ``x2 ~ N(μ2, σ2²)``, the per-pixel mean and std only.
    power law (§2.3–2.6): ``z = (x − μ)/σ`` is Gaussian with the fitted power-law covariance, so
    ``(z1, z2)`` has correlation ρ = ρ(p2 − p1) (:func:`cloudjax.noise.power_law_autocovariance`, unit variance) and
    ``x2 | x1 ~ N(μ2 + σ2 ρ z1, σ2² (1 − ρ²))``.

    Returns ``(M, pairs)`` arrays (``distance``, ``positions`` (y1, x1, y2, x2), ``value1``, ``value2``, ``z1``,
    ``z2``, ``rho``) and, per model, ``guess``, ``var``, the mean squared error and the mean Gaussian
    log-likelihood (nats per guess).
    """
    M, H, W = heldout.shape
    rho_grid = power_law_autocovariance(H, W, delta, pad)
    p1 = rng.integers(0, H * W, (M, pairs))
    p2 = (p1 + rng.integers(1, H * W, (M, pairs))) % (H * W)
    (y1, x1), (y2, x2) = np.divmod(p1, W), np.divmod(p2, W)
    rho = rho_grid[(y2 - y1) % (pad * H), (x2 - x1) % (pad * W)]
    flat, mu, sd = heldout.reshape(M, -1), mean.reshape(-1), std.reshape(-1)
    v1, v2 = np.take_along_axis(flat, p1, 1), np.take_along_axis(flat, p2, 1)
    z1 = (v1 - mu[p1]) / sd[p1]
    models = {
        "white": (mu[p2], sd[p2] ** 2),
        "power_law": (mu[p2] + sd[p2] * rho * z1, sd[p2] ** 2 * (1 - rho**2)),
    }
    result = dict(
        distance=np.hypot(y2 - y1, x2 - x1),
        positions=np.stack([y1, x1, y2, x2], -1),
        value1=v1,
        value2=v2,
        z1=z1,
        z2=(v2 - mu[p2]) / sd[p2],
        rho=rho,
    )
    for name, (guess, var) in models.items():
        loglik = -0.5 * (np.log(2 * np.pi * var) + (v2 - guess) ** 2 / var)
        result[name] = dict(
            guess=guess, var=var, mse=float(np.mean((v2 - guess) ** 2)), log_likelihood=float(np.mean(loglik))
        )
    return result


# ------------------------------------------------------------------------------------------ figures


def _show(ax, image, title, **kwargs):
    ax.imshow(image, **kwargs)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _rng(s: Shared, figure: int) -> np.random.Generator:
    return np.random.default_rng([s.config.seed, figure])


def _key(s: Shared, figure: int) -> jax.Array:
    return jax.random.fold_in(s.key, figure)


def _points(rng: np.random.Generator, allowed: np.ndarray, n: int) -> list[tuple[int, int]]:
    """``n`` distinct random positions where ``allowed`` (2-D bool) is True."""
    ys, xs = np.nonzero(allowed)
    pick = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
    return [(int(ys[i]), int(xs[i])) for i in pick]


def _conjugate(z: np.ndarray) -> np.ndarray:
    """Move every centred mode to the position of its conjugate partner −k (180° about the centre)."""
    H, W = z.shape[-2:]
    return np.roll(np.flip(z, (-2, -1)), (1 - H % 2, 1 - W % 2), axis=(-2, -1))


def fig03_mean_std(s: Shared, out: Path) -> dict:
    """Per-pixel mean μ and std σ (eqs. 1–2), on [0, 1] and stretched to their own range."""
    fig = new_figure(figsize=(6, 6))
    axes = fig.subplots(2, 2)
    numbers = {}
    for row, (name, image) in enumerate((("mean", s.mean), ("std", s.std))):
        for col, (lo, hi) in enumerate(((0.0, 1.0), (image.min(), image.max()))):
            _show(axes[row, col], image, f"{name}, range [{lo:.3f}, {hi:.3f}]", cmap="gray", vmin=lo, vmax=hi)
        numbers[name] = dict(
            min=image.min(), max=image.max(), average=image.mean(), relative_spread=image.std() / image.mean()
        )
    _save(fig, out / "fig03_mean_std.png")
    H = s.mean.shape[0]
    numbers["mean_top_minus_bottom"] = s.mean[: H // 2].mean() - s.mean[H // 2 :].mean()
    return numbers


def _neighbour_correlation(z: np.ndarray) -> float:
    """Mean product of horizontally and vertically adjacent values of unit-variance fields ``(N, H, W)``."""
    return float((np.mean(z[:, 1:] * z[:, :-1]) + np.mean(z[:, :, 1:] * z[:, :, :-1])) / 2)


def fig04_images_vs_white(s: Shared, out: Path) -> dict:
    """Images next to white noise with their per-pixel mean and std, ``x ~ N(μ_ij, σ_ij²)`` (eq. 4)."""
    idx = _rng(s, 4).choice(len(s.images), 4, replace=False)
    white = _rng(s, 4).standard_normal(s.images.shape)
    fig = new_figure(figsize=(8, 4.4))
    axes = fig.subplots(2, 4)
    for col, n in enumerate(idx):
        _show(axes[0, col], s.images[n], f"image {n}", cmap="gray", vmin=0, vmax=1)
        _show(axes[1, col], s.mean + s.std * white[n], "white noise", cmap="gray", vmin=0, vmax=1)
    _save(fig, out / "fig04_images_vs_white.png")
    return dict(
        indices=idx,
        neighbour_correlation=dict(images=_neighbour_correlation(s.normed), white=_neighbour_correlation(white)),
    )


def fig05_covariance(s: Shared, out: Path) -> dict:
    """Real-space covariance ``Σ^{ij}_{kl} = E[x̂_ij x̂_kl]`` (eq. 5) of the normalised images around random kl,
    and its average over rings of equal distance |ij − kl|."""
    N, H, W = s.normed.shape
    points = _points(_rng(s, 5), np.ones((H, W), bool), s.config.points)
    ys, xs = np.mgrid[:H, :W]
    fig = new_figure(figsize=(2.5 * len(points), 2.8))
    axes = fig.subplots(1, len(points), squeeze=False)
    rings = []
    for ax, (y, x) in zip(axes[0], points, strict=True):
        cov = np.einsum("nij,n->ij", s.normed, s.normed[:, y, x]) / N
        _show(ax, cov, f"Σ around ({y}, {x})", cmap="magma", vmin=min(cov.min(), 0), vmax=1)
        ax.plot(x, y, "c+", ms=8)
        r = np.rint(np.hypot(ys - y, xs - x)).astype(int)
        rings.append([cov[r == d].mean() for d in range(min(H, W) // 4 + 1) if (r == d).any()])
    _save(fig, out / "fig05_covariance.png")
    return dict(points=points, covariance_by_distance=rings)


def fig06_fourier_samples(s: Shared, out: Path) -> dict:
    """Images with the real part, imaginary part and magnitude of their centred FFT Z (eq. 6), and the
    :func:`cross_excess` of each one's power |Z|²."""
    idx = _rng(s, 6).choice(len(s.images), 4, replace=False)
    fig = new_figure(figsize=(8, 2.1 * len(idx)))
    axes = fig.subplots(len(idx), 4)
    for row, n in enumerate(idx):
        z = s.fourier[n]
        lim = np.percentile(np.abs(z), 99)
        _show(axes[row, 0], s.images[n], f"image {n}", cmap="gray", vmin=0, vmax=1)
        _show(axes[row, 1], z.real, "Re Z", cmap="RdBu_r", vmin=-lim, vmax=lim)
        _show(axes[row, 2], z.imag, "Im Z", cmap="RdBu_r", vmin=-lim, vmax=lim)
        _show(axes[row, 3], np.log10(np.abs(z) + 1e-6), "log10 |Z|", cmap="viridis")
    _save(fig, out / "fig06_fourier_samples.png")
    return dict(indices=idx, cross_excess=[cross_excess(np.abs(s.fourier[n]) ** 2, s.config.cross) for n in idx])


def fig07_fourier_covariance(s: Shared, out: Path) -> dict:
    """``Γ^{ij}_{kl} = E[Z_ij Z*_kl]`` and ``C^{ij}_{kl} = E[Z_ij Z_kl]`` (eqs. 8–9) around random modes kl,
    whole and with the central cross masked, and how diagonal they are.

    Per point: the rms and max correlation ``|Γ_ij,kl| / √(Γ_ij,ij Γ_kl,kl)`` with every other mode off the
    cross (``independent_rms_correlation = 1/√N`` is what N samples of independent modes give) and the error
    of ``C = conj Γ`` with ij reflected (eq. 10). Globally, :func:`offdiag_fraction` of the covariance and of
    the correlation matrix in real space, in Π space and in Π space without the cross.
    """
    N, H, W = s.fourier.shape
    cross = centred_cross(*s.mean.shape, s.config.cross)
    points = _points(_rng(s, 7), ~cross, s.config.points)
    fig = new_figure(figsize=(8, 2.1 * len(points)))
    axes = fig.subplots(len(points), 4, squeeze=False)
    variance = np.mean(np.abs(s.fourier) ** 2, axis=0)
    per_point = []
    for row, (y, x) in enumerate(points):
        zp = s.fourier[:, y, x]
        gamma = np.einsum("nij,n->ij", s.fourier, zp.conj()) / N
        c = np.einsum("nij,n->ij", s.fourier, zp) / N
        diag = gamma[y, x].real
        others = ~cross
        others[y, x] = False
        corr = np.abs(gamma[others]) / np.sqrt(variance[others] * diag)
        per_point.append(
            dict(
                mode=(y - H // 2, x - W // 2),
                gamma_diag=diag,
                rms_offdiag_correlation=np.sqrt(np.mean(corr**2)),
                max_offdiag_correlation=corr.max(),
                relation_error=np.abs(c - _conjugate(gamma).conj()).max() / diag,
            )
        )
        for col, (name, cov) in enumerate((("Γ", gamma), ("C", c), ("Γ masked", gamma), ("C masked", c))):
            shown = np.where(cross, np.nan, cov.real) if col >= 2 else cov.real
            _show(axes[row, col], shown, f"Re {name}, kl = ({y}, {x})", cmap="RdBu_r", vmin=-diag, vmax=diag)
    _save(fig, out / "fig07_fourier_covariance.png")
    spaces = dict(real_space=s.normed, fourier=s.pi, fourier_masked=s.pi[:, s.fit.mask])
    return dict(
        points=per_point,
        independent_rms_correlation=1 / np.sqrt(N),
        offdiag_energy_fraction={name: offdiag_fraction(x) for name, x in spaces.items()},
        offdiag_correlation_fraction={name: offdiag_fraction(x, standardize=True) for name, x in spaces.items()},
    )


def fig08_gamma_diag(s: Shared, out: Path) -> dict:
    """``Γ_diag = E|Z_ij|²`` whole and with the central cross masked; its :func:`cross_excess` and DC value."""
    H, W = s.mean.shape
    gamma = np.mean(np.abs(s.fourier) ** 2, axis=0)
    fig = new_figure(figsize=(6, 3.2))
    axes = fig.subplots(1, 2)
    lo, hi = np.log10(gamma).min(), np.log10(gamma).max()
    _show(axes[0], np.log10(gamma), "log10 Γ_diag", cmap="viridis", vmin=lo, vmax=hi)
    masked = np.where(centred_cross(*s.mean.shape, s.config.cross), np.nan, np.log10(gamma))
    _show(axes[1], masked, "log10 Γ_diag, cross masked", cmap="viridis", vmin=lo, vmax=hi)
    _save(fig, out / "fig08_gamma_diag.png")
    return dict(cross_excess=cross_excess(gamma, s.config.cross), dc=gamma[H // 2, W // 2], mean=gamma.mean())


def fig09_power_law_fit(s: Shared, out: Path) -> dict:
    """Γ against |k|, linear and log-log, masked modes light blue, with the fit ``A² |k|^{−2Δ}`` (eq. 14).

    The fit is the library's (Hann-windowed Π-space variance, every unmasked mode a point); ``plain_fft`` is
    the paper's recipe without a window, which spectral leakage from the aperiodic edges biases low.
    """
    plot_power_law_fit(s.fit, out / "fig09_power_law_fit.png")
    plain = fit_power_law(s.normed[..., None], window=None, mask_cross=s.config.cross)
    return dict(
        delta=s.fit.delta,
        amplitude=s.fit.amplitude,
        r_value=s.fit.r_value,
        fitted_modes=s.fit.mask.sum(),
        plain_fft=dict(delta=plain.delta, amplitude=plain.amplitude, r_value=plain.r_value),
        paper=dict(delta=PAPER["delta"], r_value=PAPER["r_value"], image_size=PAPER["image_size"]),
    )


def _noise_fields(s: Shared, key: jax.Array, delta: float, pad: int = PAD) -> np.ndarray:
    """``(NOISE_BATCH, H, W, 1)`` power-law fields."""
    return np.asarray(cj.power_law_noise(key, (NOISE_BATCH, *s.mean.shape, 1), delta, pad=pad))


def fig10_11_tiling(s: Shared, out: Path) -> dict:
    """Noise with the fitted Δ tiled 3 × 3: the periodic field (Fig. 10) joins without seams, the centre crop
    of a 3× grid (Fig. 11) does not. :func:`seam_ratio` of 256 fields of each, and of the images."""
    numbers = dict(images=seam_ratio(s.normed))
    for pad, name, figure in ((1, "periodic", "fig10_periodic_tiled"), (PAD, "cropped", "fig11_cropped_tiled")):
        fields = _noise_fields(s, _key(s, 10), s.fit.delta, pad)[..., 0]
        numbers[name] = seam_ratio(fields)
        fig = new_figure(figsize=(4, 4.3))
        _show(
            fig.subplots(),
            np.tile(fields[0], (3, 3)),
            f"{name} (pad {pad}), Δ = {s.fit.delta:.2f}: seam ratio {numbers[name]:.2f}",
            cmap="gray",
        )
        _save(fig, out / f"{figure}.png")
    return numbers


def _noises(s: Shared) -> dict:
    return {"white": cj.WhiteNoise(), "cloud": cj.PowerLawNoise(s.fit.delta, pad=PAD)}


def fig12_noise_types(s: Shared, out: Path) -> dict:
    """White, pink, cloud (the fitted Δ) and red noise (Table 2); Δ fitted back from 256 samples of each."""
    deltas = {"white": 0.0, "pink": 1.0, "cloud": s.fit.delta, "red": 2.0}
    fig = new_figure(figsize=(8.8, 4.6))
    axes = fig.subplots(2, len(deltas))
    numbers = {}
    for col, (name, delta) in enumerate(deltas.items()):
        x = _noise_fields(s, jax.random.fold_in(_key(s, 12), col), delta)
        refit = fit_power_law(x, mask_cross=s.config.cross).delta
        numbers[name] = dict(delta=delta, refit_delta=refit, pixel_variance=np.var(x))
        for row in range(2):
            _show(axes[row, col], x[row, ..., 0], f"{name}, Δ = {delta:.2f}", cmap="gray", vmin=-2.5, vmax=2.5)
    _save(fig, out / "fig12_noise_types.png")
    return numbers


def _log_spectrum(x: np.ndarray) -> np.ndarray:
    return np.log10(np.abs(np.fft.fftshift(np.fft.fft2(x, norm="ortho"), axes=(-2, -1))) + 1e-6)


def fig14_forward_process(s: Shared, out: Path) -> dict:
    """``x_t = α_t x0 + σ_t ε`` (eq. 35, offset-cosine schedule) for white and cloud noise, in real space and as
    log |Z|, x0 first. ``log_spectrum_correlation``: per t, the correlation over modes of log |Z(x_t)| with
    log |Z(x0)|, averaged over up to 42 images: how much x_t still looks like x0 in Fourier space."""
    H, W = s.mean.shape
    times = np.array((*s.config.times, 1.0), np.float32)
    count = min(NOISE_BATCH // len(times), len(s.normed))
    x0 = s.normed[_rng(s, 14).choice(len(s.normed), count, replace=False)]
    batch = np.repeat(x0[:, None, ..., None], len(times), axis=1).reshape(-1, H, W, 1)
    t = np.tile(times, len(x0))
    reference = _log_spectrum(x0)[:, None]
    reference = reference - reference.mean((-2, -1), keepdims=True)
    fig = new_figure(figsize=(1.6 * (len(times) + 1), 7.0))
    axes = fig.subplots(4, len(times) + 1)
    numbers = dict(times=times)
    for row, (name, noise) in enumerate(_noises(s).items()):
        diffusion = GaussianDiffusion(noise=noise, schedule="offset_cosine")
        eps = noise.sample(_key(s, 14), (NOISE_BATCH, H, W, 1))[: len(batch)]
        xt = np.asarray(diffusion.q_sample(None, batch, t, noise=eps))[..., 0].reshape(len(x0), len(times), H, W)
        spectra = _log_spectrum(xt)
        centred = spectra - spectra.mean((-2, -1), keepdims=True)
        corr = np.sum(centred * reference, (-2, -1)) / np.sqrt(
            np.sum(centred**2, (-2, -1)) * np.sum(reference**2, (-2, -1))
        )
        numbers[name] = dict(log_spectrum_correlation=corr.mean(0))
        lo, hi = np.percentile(spectra[0], (1, 99))
        panels = [("x0", x0[0], _log_spectrum(x0[0]))]
        panels += [(f"{name}, t = {time:.1f}", xt[0, i], spectra[0, i]) for i, time in enumerate(times)]
        for col, (title, image, spectrum) in enumerate(panels):
            _show(axes[2 * row, col], image, title, cmap="gray", vmin=-2.5, vmax=2.5)
            _show(axes[2 * row + 1, col], spectrum, "log10 |Z|", cmap="viridis", vmin=lo, vmax=hi)
    _save(fig, out / "fig14_forward_process.png")
    numbers["alpha"], numbers["sigma"] = diffusion.alpha_sigma(times)
    return numbers


def fig17_radial_snr(s: Shared, out: Path) -> dict:
    """Radial spectra of the signal ``α_t² Γ(k)`` (data) and the noise ``σ_t² S(k)`` over t (eqs. 36–37).

    Per noise: ``log10_snr_range``, how many decades the radial SNR ``α_t² Γ / σ_t² S`` spans over |k| (the
    same at every t; 0 for a flat SNR); and per t, ``crossing_k``, where the radial SNR first falls through 1
    (:func:`crossing_frequency`), and ``snr_above_one``, the fraction of modes (DC excluded) with SNR > 1.
    """
    from matplotlib import colormaps

    H, W = s.mean.shape
    gamma = s.pi.var(0)
    k, profile = cj.radial_profile(gamma)
    k, profile = k[1:], np.asarray(profile)[1:]
    times = np.array(s.config.times, np.float32)
    alpha, sigma = (np.asarray(v) for v in GaussianDiffusion(schedule="offset_cosine").alpha_sigma(times))
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(times)))
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    numbers = dict(times=times, alpha=alpha, sigma=sigma, k=k, data_profile=profile)
    for ax, (name, noise) in zip(axes, _noises(s).items(), strict=True):
        variance = noise.fourier_variance(H, W)
        noise_profile = np.asarray(cj.radial_profile(variance)[1])[1:]
        ratio = profile / noise_profile
        numbers[name] = dict(log10_snr_range=np.log10(ratio.max() / ratio.min()), crossing_k=[], snr_above_one=[])
        for a, sg, colour, t in zip(alpha, sigma, colours, times, strict=True):
            crossing = crossing_frequency(k, a**2 * ratio / sg**2)
            numbers[name]["crossing_k"].append(crossing)
            numbers[name]["snr_above_one"].append(np.mean((a**2 * gamma / (sg**2 * variance)).ravel()[1:] > 1))
            ax.loglog(k, a**2 * profile, c=colour, label=f"signal, t = {t:.1f}")
            ax.loglog(k, sg**2 * noise_profile, c=colour, ls="--")
            if crossing is not None:
                ax.axvline(crossing, c=colour, ls=":", lw=1)
        ax.set_title(f"{name} noise (dashed), crossings dotted")
        ax.set_xlabel("|k| (cycles / pixel)")
        ax.tick_params(axis="x", which="minor", labelbottom=False)
    axes[0].set_ylabel("radial Π-space variance")
    axes[0].legend(fontsize=7)
    _save(fig, out / "fig17_radial_snr.png")
    return numbers


def fig19_mahalanobis(s: Shared, out: Path) -> dict:
    """The nine Mahalanobis distances of Fig. 19 (eqs. 41–43, reference covariance diag |k|^{−2Δ}) between
    white noise, cloud noise and the images (``"a-b"`` pairwise, ``"a"`` to the centre), next to the author's,
    on the first 256 images of the statistics set and as many noise samples.

    The author's units (``author_units``, :func:`cloudjax.stats.mahalanobis_weight`): his Π is not
    orthonormal and his |k| is index / (N − 1), so per pair ``d_author² = (N/(N−1))^{2Δ} (d² + s) / 2`` with s
    the self-conjugate modes' part; the same noise sets are measured in both units. Distances depend on the
    image side N: white-noise distances grow ∝ N (a sum of |k|^{2Δ} over N² modes), unit-variance power-law
    ones ∝ N^{2−Δ}, so compare with the paper (96 px) at 96 px; the ratios are taken in the author's units.
    """
    data = s.normed[:NOISE_BATCH, ..., None]
    table = mahalanobis_table(data, s.fit.delta, _key(s, 19))
    author = mahalanobis_table(data, s.fit.delta, _key(s, 19), units="author")
    paper = PAPER["mahalanobis"]
    ratios = dict(
        white_over_cloud_to_images=(
            author["white-images"] / author["cloud-images"],
            paper["white-images"] / paper["cloud-images"],
        ),
        images_over_cloud_to_images=(
            author["images-images"] / author["cloud-images"],
            paper["images-images"] / paper["cloud-images"],
        ),
        white_over_cloud_spread=(
            author["white-white"] / author["cloud-cloud"],
            paper["white-white"] / paper["cloud-cloud"],
        ),
    )
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    names = list(table)
    ax.barh(names, [author[n] for n in names], color="tab:blue", label=f"ours ({s.mean.shape[0]} px, author units)")
    ax.scatter(
        [paper[n] for n in names if n in paper],
        [n for n in names if n in paper],
        c="tab:red",
        zorder=3,
        label=f"paper (STL-10, {PAPER['image_size']} px)",
    )
    ax.set_xlabel(f"Mahalanobis distance, Δ = {s.fit.delta:.2f}")
    ax.legend(fontsize=8)
    _save(fig, out / "fig19_mahalanobis.png")
    return dict(
        delta=s.fit.delta,
        distances=table,
        author_units=author,
        paper=paper,
        ratios={name: dict(ours=ours, paper=theirs) for name, (ours, theirs) in ratios.items()},
    )


def wager_figure(s: Shared, out: Path) -> dict:
    """§2.1–2.6, the wager: guess pixel 2 from pixel 1 on held-out images (:func:`wager`); the empirical
    correlation against the model's ρ and the error of both models by distance (rounded; distances with at
    least 50 pairs), and a Table 1 score card."""
    w = wager(s.mean, s.std, s.heldout, s.fit.delta, s.config.pairs, _rng(s, 2))
    d = np.rint(w["distance"]).astype(int).ravel()
    present = np.flatnonzero(np.bincount(d) >= 50)

    def by_distance(values):
        return np.array([values.ravel()[d == r].mean() for r in present])

    curves = dict(
        distance=present,
        count=np.array([np.sum(d == r) for r in present]),
        empirical_correlation=by_distance(w["z1"] * w["z2"]),
        model_correlation=by_distance(w["rho"]),
        mse_white=by_distance((w["value2"] - w["white"]["guess"]) ** 2),
        mse_power_law=by_distance((w["value2"] - w["power_law"]["guess"]) ** 2),
    )
    fig = new_figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].plot(present, curves["empirical_correlation"], "o-", ms=3, label="held-out images")
    axes[0].plot(present, curves["model_correlation"], "s--", ms=3, label=f"power law, Δ = {s.fit.delta:.2f}")
    axes[0].set(xlabel="distance between the pixels", ylabel="correlation", title="ρ(distance)")
    axes[1].plot(present, curves["mse_white"], "o-", ms=3, label=f"white: MSE {w['white']['mse']:.4f}")
    axes[1].plot(present, curves["mse_power_law"], "s--", ms=3, label=f"power law: MSE {w['power_law']['mse']:.4f}")
    axes[1].set(xlabel="distance between the pixels", ylabel="squared error of the guess", title="the wager")
    for ax in axes:
        ax.legend(fontsize=8)
    _save(fig, out / "wager.png")
    card = [
        dict(
            pixel1=(int(x1), int(y1)),
            value1=w["value1"][i, 0],
            pixel2=(int(x2), int(y2)),
            value2=w["value2"][i, 0],
            guess_white=w["white"]["guess"][i, 0],
            sd_white=np.sqrt(w["white"]["var"][i, 0]),
            guess_power_law=w["power_law"]["guess"][i, 0],
            sd_power_law=np.sqrt(w["power_law"]["var"][i, 0]),
        )
        for i, (y1, x1, y2, x2) in enumerate(w["positions"][:5, 0])
    ]
    return dict(
        pairs=w["distance"].size,
        white={m: w["white"][m] for m in ("mse", "log_likelihood")},
        power_law={m: w["power_law"][m] for m in ("mse", "log_likelihood")},
        mse_ratio=w["power_law"]["mse"] / w["white"]["mse"],
        by_distance=curves,
        scorecard=card,
    )


FIGURES = (
    fig03_mean_std,
    fig04_images_vs_white,
    fig05_covariance,
    fig06_fourier_samples,
    fig07_fourier_covariance,
    fig08_gamma_diag,
    fig09_power_law_fit,
    fig10_11_tiling,
    fig12_noise_types,
    fig14_forward_process,
    fig17_radial_snr,
    fig19_mahalanobis,
    wager_figure,
)


# ------------------------------------------------------------------------------------------ running


def _plain(x):
    """numpy / JAX values → JSON-ready Python values."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def run(images: np.ndarray, heldout: np.ndarray, config: Config, out: str | Path, data: str = "array") -> dict:
    """Write every figure's PNG and ``figures.json`` into ``out``; return the numbers (as in the JSON).

    ``images`` ``(N, H, W)`` (the statistics set) and ``heldout`` ``(M, H, W)`` are grey, in [0, 1].
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = analyse(images, heldout, config)
    numbers = dict(config=dataclasses.asdict(config), data=dict(spec=data, num=len(images), heldout=len(heldout)))
    for figure in FIGURES:
        numbers[figure.__name__] = _plain(figure(s, out))
    (out / "figures.json").write_text(json.dumps(numbers, indent=1))
    return numbers


def load(spec: str, config: Config, data_dir: str | None = None, drop_letterbox: bool = False):
    """``config.num + config.heldout`` distinct random images of ``spec`` in grey (``cloudjax.data``), split
    into the statistics set ``(num, H, W)`` and the held-out set ``(heldout, H, W)``."""
    from cloudjax.data.pipeline import open_source

    source = open_source(
        spec, config.image_size, channels=1, data_dir=data_dir, seed=config.seed, drop_letterbox=drop_letterbox
    )
    total = config.num + config.heldout
    if source.num_examples < total:
        raise ValueError(f"data: {spec!r} has {source.num_examples} images; --num + --heldout need {total}")
    pick = np.random.default_rng(config.seed).permutation(source.num_examples)[:total]
    images = source.get(pick)[..., 0]
    return images[: config.num], images[config.num :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate the figures of Cloud Diffusion Part 1 (PNG + figures.json).")
    p.add_argument("--data", default="patches", help="patches[:NUM], fashion_mnist, folder:PATH, npz:PATH, tfds:NAME")
    p.add_argument("--data-dir", default=None, help="where the dataset's files are (fashion_mnist, tfds)")
    p.add_argument("--drop-letterbox", action="store_true", help="drop images with bars on their edges (paper)")
    p.add_argument("--image-size", type=int, default=Config.image_size)
    p.add_argument("--num", type=int, default=Config.num, help="images in the statistics set")
    p.add_argument("--heldout", type=int, default=Config.heldout, help="held-out images for the wager")
    p.add_argument("--cross", type=int, default=Config.cross, help="half-width of the masked central cross")
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    try:
        config = Config(
            image_size=args.image_size, num=args.num, heldout=args.heldout, cross=args.cross, seed=args.seed
        )
        images, heldout = load(args.data, config, args.data_dir, args.drop_letterbox)
        numbers = run(images, heldout, config, args.out, data=args.data)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fit, dist, bet = numbers["fig09_power_law_fit"], numbers["fig19_mahalanobis"], numbers["wager_figure"]
    print(
        f"Δ = {fit['delta']:.3f} (plain FFT {fit['plain_fft']['delta']:.3f}), A = {fit['amplitude']:.3g}, "
        f"r = {fit['r_value']:.3f}"
    )
    print("Mahalanobis (author units): " + ", ".join(f"{k} {v:.2f}" for k, v in dist["author_units"].items()))
    white, power = bet["white"], bet["power_law"]
    print(
        f"wager MSE: white {white['mse']:.5f}, power law {power['mse']:.5f}; "
        f"log-likelihood: white {white['log_likelihood']:.3f}, power law {power['log_likelihood']:.3f}"
    )
    print(f"wrote {len(FIGURES)} figures and figures.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
