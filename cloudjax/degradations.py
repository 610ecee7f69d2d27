"""Deterministic degradations for Cold Diffusion: ``D(x0, t)`` for integer t ∈ {0, …, T}.

A degradation is a frozen pytree (its settings are static fields) with a ``steps`` attribute T and
``__call__(x0, t)``: ``x0`` is ``(..., H, W, C)`` float, ``t`` an integer scalar or an array of shape ``x0.shape[:-3]``
(one step per image); t = 0 is the identity, t = T the most degraded. Shape and dtype are kept; every call works
under ``jax.jit`` and ``jax.vmap``. A concrete t outside {0, …, T} raises ``ValueError``; a traced one is clipped.

* :class:`GaussianBlur`: T Gaussian blurs composed, computed in one Fourier pass (not t convolutions).
* :class:`GaussianMask`: Gaussian-mask inpainting, a product of t masks growing from a centre.
* :class:`Downsample`: super-resolution, the resolution halved (``factor``) per step, returned at full size.
* :class:`Decolorize`: a linear fade to grey.

Any function ``D(x0, t)`` with the same contract works in their place; it need not be linear, e.g. a dynamic range
that shrinks to zero for images in [−1, 1]::

    def fade_range(x0, t, steps=10):
        r = (steps - jnp.asarray(t)[..., None, None, None]) / steps
        return jnp.clip(x0, -r, r)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax.registry import BLUR_ROUTINES

__all__ = ["BLUR_ROUTINES", "GaussianBlur", "GaussianMask", "Downsample", "Decolorize"]

PADDINGS = ("circular", "reflect")
DOWNSAMPLE_METHODS = ("area", "bicubic")


def _check_steps(steps: int, name: str = "steps") -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {steps}")


def _as_stds(stds, name: str = "stds") -> tuple[float, ...]:
    stds = tuple(float(s) for s in np.ravel(np.asarray(stds, np.float64)))
    if not stds:
        raise ValueError(f"{name} must hold at least one std (one per step), got none")
    bad = next((i for i, s in enumerate(stds) if not (np.isfinite(s) and s > 0)), None)
    if bad is not None:
        raise ValueError(f"{name} must be finite and > 0, got {stds[bad]} at step {bad} (of {len(stds)})")
    return stds


def _steps_per_image(x0: jnp.ndarray, t, steps: int) -> jnp.ndarray:
    """Check ``x0`` and ``t``; return t as int32 of shape ``x0.shape[:-3]`` (concrete t checked, traced t clipped)."""
    if x0.ndim < 3 or not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0 must be a float array of shape (..., H, W, C), got {x0.dtype} {x0.shape}")
    try:
        concrete = np.asarray(t)
    except jax.errors.TracerArrayConversionError:  # traced under jit or vmap: checked by dtype and shape only
        concrete = None
    if concrete is not None:
        if not np.issubdtype(concrete.dtype, np.integer):
            raise ValueError(f"t must be an integer step in 0..{steps}, got dtype {concrete.dtype}")
        if concrete.size and (concrete.min() < 0 or concrete.max() > steps):
            raise ValueError(f"t must lie in 0..{steps} (steps), got values in {concrete.min()}..{concrete.max()}")
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"t must be an integer step in 0..{steps}, got dtype {t.dtype}")
    batch = x0.shape[:-3]
    try:
        fits = jnp.broadcast_shapes(t.shape, batch) == batch
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"t must be a scalar or of shape {batch} (x0's batch), got {t.shape}")
    return jnp.broadcast_to(jnp.clip(t, 0, steps).astype(jnp.int32), batch)


def _per_image(a: jnp.ndarray) -> jnp.ndarray:
    """Broadcast a per-image array ``(...,)`` against images ``(..., H, W, C)``."""
    return a[..., None, None, None]


def _compute_dtype(x: jnp.ndarray):
    return jnp.promote_types(x.dtype, jnp.float32)


# --------------------------------------------------------------------------------------------------------------------
# Gaussian blur


def _gaussian_taps(std: float, kernel_size: int) -> np.ndarray:
    """Normalised 1-D Gaussian of ``kernel_size`` taps centred at ``(kernel_size - 1) / 2``, float64."""
    offsets = np.arange(kernel_size) - (kernel_size - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * std**2))
    return taps / taps.sum()


@functools.lru_cache(maxsize=64)
def _cumulative_transfer(stds: tuple[float, ...], kernel_size: int, period: int, bins: int) -> np.ndarray:
    """``(T + 1, bins)`` complex64 table: row t is the product of the first t steps' 1-D transfer functions.

    Step i correlates with the taps w_j at offsets d_j = j − ⌊(k − 1)/2⌋ (``lax.conv``'s SAME alignment), so on a
    period-L grid its transfer function is Ĝ_i(u) = Σ_j w_j exp(2πi·u·d_j / L) for frequency u = 0 … bins − 1.
    """
    offsets = np.arange(kernel_size) - (kernel_size - 1) // 2
    phases = np.exp(2j * np.pi * np.arange(bins)[:, None] * offsets[None, :] / period)  # (bins, k)
    steps = np.stack([phases @ _gaussian_taps(s, kernel_size) for s in stds])  # (T, bins)
    return np.cumprod(np.concatenate([np.ones((1, bins)), steps]), axis=0).astype(np.complex64)


def _mirror(x: jnp.ndarray, axis: int) -> jnp.ndarray:
    """Whole-sample symmetric extension along ``axis``: x_0 … x_{N−1} x_{N−2} … x_1 (period 2N − 2)."""
    n = x.shape[axis]
    inner = jax.lax.slice_in_dim(x, 1, max(n - 1, 1), axis=axis)
    return jnp.concatenate([x, jnp.flip(inner, axis=axis)], axis=axis)


@struct.dataclass
class GaussianBlur:
    """Cold Diffusion's blur: step i convolves every channel with the normalised, truncated Gaussian of std ``stds[i]``.

    ``D(x, t) = G_t ∗ … ∗ G_1 ∗ x`` with ``kernel_size``² kernels and ``padding`` at every step ("circular": the
    image wraps around, the reference's default; "reflect": mirrored without repeating the edge pixel). Gaussians are
    separable and both paddings turn a step into a convolution on a periodic grid (the image itself, or its
    mirrored ``(2H − 2, 2W − 2)`` extension), where the t steps are one product of transfer functions:
    ``D(x, t) = F⁻¹[ F[x] · Π_{i≤t} Ĝ_i ]``, one FFT and one inverse whatever t is. Equal to the t-fold
    ``lax.conv`` composition (SAME alignment: padding ⌊(k−1)/2⌋ before, ⌊k/2⌋ after) to float32 precision.
    Reflect padding needs an odd ``kernel_size``: an even kernel is centred between pixels and its mirrored steps
    do not compose into one filter. The kernel may not be larger than the image.

    Attributes:
      stds: the T blur stds, one per step (stored as a tuple of floats).
      kernel_size: k, the side of the square kernel.
      padding: "circular" or "reflect".
      final_mean: add one last step (T = len(stds) + 1) that replaces the image by its per-channel mean, as the
        reference code does for generation (``--discrete``): D(x, T) is flat, a colour a Gaussian mixture can model.
    """

    stds: tuple[float, ...] = struct.field(pytree_node=False)
    kernel_size: int = struct.field(pytree_node=False, default=11)
    padding: str = struct.field(pytree_node=False, default="circular")
    final_mean: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self):
        object.__setattr__(self, "stds", _as_stds(self.stds))
        if int(self.kernel_size) != self.kernel_size or self.kernel_size < 1:
            raise ValueError(f"kernel_size must be an integer >= 1, got {self.kernel_size}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.padding == "reflect" and self.kernel_size % 2 == 0:
            raise ValueError(f"padding='reflect' needs an odd kernel_size, got {self.kernel_size}")

    @property
    def steps(self) -> int:
        return len(self.stds) + int(self.final_mean)

    @classmethod
    def from_routine(
        cls,
        routine: str,
        steps: int,
        std: float,
        kernel_size: int = 11,
        padding: str = "circular",
        final_mean: bool = False,
    ) -> GaussianBlur:
        """The reference code's std sequences for T = ``steps`` steps (σ_i for step i = 0 … T − 1):

        "constant" σ_i = std, "incremental" σ_i = std·(i + 1), "exponential" σ_i = exp(std·i). With ``final_mean``
        the last step is the mean, so ``steps − 1`` blurs. The reference settings: MNIST constant 7, k = 11, T = 20;
        CelebA restoration exponential 0.01, k = 15, T = 200; generation exponential 0.01, k = 27, T = 300,
        circular, ``final_mean=True`` (σ from 1 to 19.7).
        """
        _check_steps(steps)
        blurs = steps - int(final_mean)
        if blurs < 1:
            raise ValueError(f"steps must be >= 2 with final_mean (one blur, then the mean), got {steps}")
        i = np.arange(blurs)
        if routine == "constant":
            stds = np.full(blurs, std, np.float64)
        elif routine == "incremental":
            stds = std * (i + 1.0)
        elif routine == "exponential":
            stds = np.exp(std * i)
        else:
            raise ValueError(f"routine must be one of {BLUR_ROUTINES}, got {routine!r}")
        return cls(_as_stds(stds, "std"), kernel_size, padding, final_mean)

    def __call__(self, x0: jnp.ndarray, t) -> jnp.ndarray:
        t = _steps_per_image(x0, t, self.steps)
        H, W = x0.shape[-3:-1]
        if self.kernel_size > min(H, W):
            raise ValueError(f"kernel_size {self.kernel_size} is larger than the {H}x{W} image")
        x = x0.astype(_compute_dtype(x0))
        if self.padding == "reflect":
            x = _mirror(_mirror(x, -3), -2)
        LH, LW = x.shape[-3:-1]
        blurs = jnp.minimum(t, len(self.stds))
        gain_h = jnp.asarray(_cumulative_transfer(self.stds, self.kernel_size, LH, LH))[blurs]  # (..., LH)
        gain_w = jnp.asarray(_cumulative_transfer(self.stds, self.kernel_size, LW, LW // 2 + 1))[blurs]
        X = jnp.fft.rfft2(x, axes=(-3, -2)) * gain_h[..., :, None, None] * gain_w[..., None, :, None]
        y = jnp.fft.irfft2(X, s=(LH, LW), axes=(-3, -2))[..., :H, :W, :]
        if self.final_mean:
            y = jnp.where(_per_image(t > len(self.stds)), y.mean(axis=(-3, -2), keepdims=True), y)
        return jnp.where(_per_image(t == 0), x0, y.astype(x0.dtype))  # t = 0 exactly, not to FFT round-off


# --------------------------------------------------------------------------------------------------------------------
# Gaussian mask


@struct.dataclass
class GaussianMask:
    """Cold Diffusion's inpainting: ``D(x, t) = (Π_{i≤t} z_i) ⊙ x`` with masks ``z_i(p) = 1 − exp(−|p − c|²/2σ_i²)``.

    Each mask is 1 minus a Gaussian with its peak 1 at the centre c (the reference code's 1 − G/max G); as σ_i grows the
    masked region grows, and the product removes more of the image at every step. The same masks multiply every
    channel.

    Attributes:
      stds: σ_1 … σ_T in pixels, one per step (use :meth:`linear` for the reference code's σ_i = std·(i + initial)).
      centers: None for the image centre ((H − 1)/2, (W − 1)/2), else per-image (row, col) centres in pixels,
        shape ``(..., 2)`` broadcasting against x0's batch shape. One image keeps its centre across all steps, so
        build the mask once per batch (:meth:`at_random`) and use it for training and every sampler step.
    """

    stds: tuple[float, ...] = struct.field(pytree_node=False)
    centers: jax.Array | None = None

    def __post_init__(self):
        object.__setattr__(self, "stds", _as_stds(self.stds))

    @property
    def steps(self) -> int:
        return len(self.stds)

    @classmethod
    def linear(cls, steps: int = 50, std: float = 0.1, initial: float = 11.0) -> GaussianMask:
        """σ_i = std·(i + initial) for i = 0 … steps − 1; the defaults are the reference code's MNIST/CIFAR setting
        (its CelebA-128 one is 100 steps, std 0.2, initial 1)."""
        _check_steps(steps)
        for name, value in (("std", std), ("initial", initial)):
            if not (np.isfinite(value) and value > 0):  # σ_0 = std·initial
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        return cls(_as_stds(std * (np.arange(steps) + initial)))

    def at_random(self, key: jax.Array, shape) -> GaussianMask:
        """This mask with one uniformly random centre per image for images of ``shape`` ``(..., H, W, C)``."""
        if len(shape) < 3:
            raise ValueError(f"shape must be the images' shape (..., H, W, C), got {tuple(shape)}")
        *batch, H, W, _ = shape
        return self.replace(centers=jax.random.uniform(key, (*batch, 2)) * jnp.array([H - 1, W - 1], jnp.float32))

    def __call__(self, x0: jnp.ndarray, t) -> jnp.ndarray:
        t = _steps_per_image(x0, t, self.steps)
        H, W = x0.shape[-3:-1]
        centers = jnp.array([(H - 1) / 2, (W - 1) / 2]) if self.centers is None else jnp.asarray(self.centers)
        if centers.shape[-1:] != (2,):
            raise ValueError(f"centers must have shape (..., 2), got {centers.shape}")
        centers = jnp.broadcast_to(centers, x0.shape[:-3] + (2,)).astype(jnp.float32)
        var = 2 * jnp.square(jnp.asarray(self.stds, jnp.float32))[:, None]  # (T, 1)
        rows = jnp.square(jnp.arange(H) - centers[..., 0, None])[..., None, :] / var  # (..., T, H)
        cols = jnp.square(jnp.arange(W) - centers[..., 1, None])[..., None, :] / var  # (..., T, W)
        z = 1 - jnp.exp(-(rows[..., :, None] + cols[..., None, :]))  # (..., T, H, W)
        active = jnp.arange(self.steps) < t[..., None]  # (..., T)
        mask = jnp.prod(jnp.where(active[..., None, None], z, 1.0), axis=-3)  # (..., H, W)
        return (x0 * mask[..., None]).astype(x0.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Down-sampling and decolouring


@struct.dataclass
class Downsample:
    """Cold Diffusion's super-resolution: step i brings the image from N/f^(i−1) to N/f^i pixels a side.

    ``D(x, t)`` is the image at resolution ``(H, W) / factor^t``, nearest-upsampled back to ``(H, W)``. Down-sampling
    is "area" (the mean of each ``factor^t``-pixel block, which is also what t area steps give) or "bicubic" (the
    reference's: each step resizes the previous full-size result, no antialiasing; ``jax.image.resize``'s Keys cubic,
    a = −0.5, where PyTorch uses a = −0.75). Both are linear. ``factor^steps`` must divide H and W.

    Attributes:
      steps: T (the reference code: 3 for 32 → 4 px, 4 for 128 → 8 px).
      factor: resolution divisor per step.
      method: "area" or "bicubic".
    """

    steps: int = struct.field(pytree_node=False, default=3)
    factor: int = struct.field(pytree_node=False, default=2)
    method: str = struct.field(pytree_node=False, default="area")

    def __post_init__(self):
        _check_steps(self.steps)
        if int(self.factor) != self.factor or self.factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {self.factor}")
        if self.method not in DOWNSAMPLE_METHODS:
            raise ValueError(f"method must be one of {DOWNSAMPLE_METHODS}, got {self.method!r}")

    def __call__(self, x0: jnp.ndarray, t) -> jnp.ndarray:
        t = _steps_per_image(x0, t, self.steps)
        *batch, H, W, C = x0.shape
        if H % self.factor**self.steps or W % self.factor**self.steps:
            raise ValueError(
                f"steps={self.steps} with factor={self.factor} needs H and W divisible by {self.factor**self.steps}, "
                f"got a {H}x{W} image"
            )
        y = out = x0.astype(_compute_dtype(x0))
        for step in range(1, self.steps + 1):
            block = self.factor**step
            h, w = H // block, W // block
            if self.method == "area":
                small = y.reshape(*batch, h, block, w, block, C).mean(axis=(-4, -2))
            else:
                small = jax.image.resize(y, (*batch, h, w, C), "cubic", antialias=False)
            y = jnp.repeat(jnp.repeat(small, block, axis=-3), block, axis=-2)
            out = jnp.where(_per_image(t == step), y, out)
        return out.astype(x0.dtype)


@struct.dataclass
class Decolorize:
    """Cold Diffusion's decolouring: ``D(x, t) = f·x + (1 − f)·mean_c(x)`` per pixel, with f = 1 − t/T.

    A per-pixel channel mix f·I + (1 − f)/C·11ᵀ falling linearly to grey at t = T; linear in x.

    Attributes:
      steps: T.
    """

    steps: int = struct.field(pytree_node=False)

    def __post_init__(self):
        _check_steps(self.steps)

    def __call__(self, x0: jnp.ndarray, t) -> jnp.ndarray:
        t = _steps_per_image(x0, t, self.steps)
        x = x0.astype(_compute_dtype(x0))
        f = _per_image(1 - t.astype(x.dtype) / self.steps)
        return (f * x + (1 - f) * x.mean(axis=-1, keepdims=True)).astype(x0.dtype)
