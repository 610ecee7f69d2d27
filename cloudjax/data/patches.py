"""Natural-image patches cut from the photographs bundled with scikit-image (no download).

A patch is a random ``N × N`` crop of one photo at a random scale: each photo is shrunk once per process
by block averaging over ``f × f`` pixels, ``f`` in 1, 2, 3, 4, 6, 8, and a crop of that level is a crop of
side ``f·N`` of the photo, anti-aliased down to ``N``. Block (area) averaging keeps the power law of
natural images: the fitted Δ stays ≈ 1.4 at every level, whereas Gaussian-smoothed interpolation
(``skimage.transform.rescale``) steepens it to 2 and more. Drawing a photo, then a level at least ``2N`` on a
side, then a position and a horizontal flip makes thousands of patches per second. Natural patches have
a power-law Π-space variance with Δ ≈ 1.3–1.4 (:func:`cloudjax.fit_power_law`).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["patches", "PHOTOS"]

# Photo-like images that ship inside scikit-image (textures included; drawings, scans, microscopy,
# astronomy and the motion-blurred clock left out). The first five are in colour.
PHOTOS = (
    *("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"),
    *("brick", "camera", "coins", "grass", "gravel", "moon"),
)
_COLOUR = PHOTOS[:5]
_FACTORS = (1, 2, 3, 4, 6, 8)


def block_mean(images: np.ndarray, f: int) -> np.ndarray:
    """Average ``(..., h, w, C)`` over ``f × f`` blocks (trailing rows and columns that do not fill one dropped).

    Area averaging shrinks images without steepening their power spectrum, unlike Gaussian anti-aliasing.
    """
    h, w = images.shape[-3] // f, images.shape[-2] // f
    lead, c = images.shape[:-3], images.shape[-1]
    return images[..., : h * f, : w * f, :].reshape(*lead, h, f, w, f, c).mean((-4, -2))


@functools.cache
def _pyramids(channels: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per photo, its levels ``(h / f, w / f, channels)`` float32 in [0, 1], largest first (cached)."""
    import skimage.data
    from skimage.color import rgb2gray

    pyramids = []
    for name in PHOTOS if channels == 1 else _COLOUR:
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: (left, right, disparity)
        photo = np.asarray(photo, np.float32) / 255.0
        if channels == 1:
            photo = rgb2gray(photo) if photo.ndim == 3 else photo  # ITU-R 709 luminance
            photo = photo[..., None]
        pyramids.append(tuple(block_mean(photo, f).astype(np.float32) for f in _FACTORS))
    return tuple(pyramids)


def patches(
    num: int,
    image_size: int,
    channels: int = 1,
    seed: int = 0,
    normalize: str | None = "pixel",
    flip: bool = True,
) -> np.ndarray:
    """``num`` natural-image patches, float32 ``(num, image_size, image_size, channels)``.

    Args:
      num: number of patches (>= 1; >= 2 to normalise).
      image_size: patch side N in pixels, 4 <= N <= 256.
      channels: 1 (grey luminance, all photos) or 3 (RGB, the colour photos).
      seed: the same seed gives the same patches.
      normalize: ``"pixel"`` — ``(x − μ_ij) / σ_ij`` with per-pixel (and channel) mean and std over the
        ``num`` patches (paper eq. 19); ``"scalar"`` — one mean and std over everything; ``None`` — raw
        values in [0, 1].
      flip: flip each patch left-right with probability 1/2.
    """
    if int(num) != num or num < 1:
        raise ValueError(f"num must be a positive integer, got {num}")
    if int(image_size) != image_size or not 4 <= image_size <= 256:
        raise ValueError(f"image_size must be an integer in [4, 256], got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if normalize not in ("pixel", "scalar", None):
        raise ValueError(f"normalize must be 'pixel', 'scalar' or None, got {normalize!r}")
    if normalize is not None and num < 2:
        raise ValueError(f"normalize={normalize!r} needs num >= 2, got {num}")
    n = int(image_size)
    # Levels at least 2N on a side offer (N + 1)² distinct crops or more; a smaller level would repeat patches.
    usable = [[lv for lv in photo if min(lv.shape[:2]) >= 2 * n] or [photo[0]] for photo in _pyramids(channels)]
    rng = np.random.default_rng(seed)
    photo_ids = rng.integers(len(usable), size=num)
    u = rng.random((num, 3))
    flips = rng.random(num) < 0.5 if flip else np.zeros(num, bool)
    out = np.empty((num, n, n, channels), np.float32)
    for i, (p, (ul, uy, ux)) in enumerate(zip(photo_ids, u, strict=True)):
        levels = usable[p]
        level = levels[int(ul * len(levels))]
        top = int(uy * (level.shape[0] - n + 1))
        left = int(ux * (level.shape[1] - n + 1))
        crop = level[top : top + n, left : left + n]
        out[i] = crop[:, ::-1] if flips[i] else crop
    if normalize == "pixel":
        out = (out - out.mean(0)) / np.maximum(out.std(0), 1e-6)
    elif normalize == "scalar":
        out = (out - out.mean()) / max(float(out.std()), 1e-6)
    return out.astype(np.float32)
