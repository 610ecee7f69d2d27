"""Cold Diffusion (Bansal et al. 2023): undo a deterministic degradation D(x0, t), t ∈ {0, …, T}.

A restoration network R(x_t, t) ≈ x0 is trained on ``x_t = D(x0, t)`` with t uniform on {1, …, T} and an L1
(or L2) loss; the network sees the time as t / T ∈ [0, 1], like every process in cloudjax. Sampling (the
``"cold"``, ``"cold_naive"`` and ``"direct"`` rules of :mod:`cloudjax.samplers`) starts from degraded images
x_T and steps down the grid with x̂0 = R(x_t, t / T):

* Algorithm 2 (``"cold"``): ``x_s = x_t − D(x̂0, t) + D(x̂0, s)``;
* Algorithm 1 (``"cold_naive"``): ``x_s = D(x̂0, s)``;
* direct: x̂0 = R(x_T, 1), one network call.

Generation from blur: when D(·, T) maps every image to its per-channel mean (a blur whose last step is "to the
mean"), new images start from flat images whose colours come from a Gaussian mixture fitted to the training
images' per-channel means (:class:`MeanPrior`), plus the reference code's small "broken symmetry" noise, added once.
Without that noise two images with equal means give the same sample: Algorithm 2 is deterministic.

A degradation is any callable ``D(x0, t)`` with x0 ``(B, H, W, C)`` and integer t ``(B,)`` in {0, …, T},
``D(x0, 0) = x0``: the built-in ones (:mod:`cloudjax.degradations`) or a user function, linear or not, e.g.
``lambda x, t: jnp.tanh(x)`` interpolated over t: ``(1 − t/T) x + (t/T) tanh(x)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.tree_util import Partial

from cloudjax import degradations, registry
from cloudjax._config import check_fields, fill, refuse, setting
from cloudjax.diffusion import error_norm
from cloudjax.models import UNet
from cloudjax.process import Degradation, check_output, with_labels

__all__ = ["ColdDiffusion", "ColdSpec", "MeanPrior", "fit_gmm", "MAX_DEGRADATION_STEPS"]

# The largest T of a ColdSpec: a degradation works on (batch, T, H, W) arrays (the mask) or T + 1 transfer tables
# (the blur), so T = 1,000 keeps a batch of 64 at 32 px under 300 MB; the Cold Diffusion paper's largest T is 300.
MAX_DEGRADATION_STEPS = 1000


def fit_gmm(x, components: int = 1, iterations: int = 100, seed: int = 0, reg: float = 1e-6):
    """A full-covariance Gaussian mixture fitted to points x ``(N, D)`` by EM (float32, jit-compiled).

    Starts from ``components`` distinct data points as means, the data covariance for every component and equal
    weights; ``reg`` is added to every covariance's diagonal (relative to the data variance).

    Returns:
      ``(weights (K,), means (K, D), covariances (K, D, D))`` as numpy arrays.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[0] < components or components < 1:
        raise ValueError(f"x must be (N, D) with N >= components >= 1, got shape {x.shape}, components {components}")
    return tuple(np.asarray(a) for a in _em(x, components, iterations, jax.random.key(seed), reg))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _em(x, k, iterations, key, reg):
    n, d = x.shape
    ridge = reg * jnp.mean(jnp.var(x, axis=0)) * jnp.eye(d) + 1e-12 * jnp.eye(d)
    means = x[jax.random.choice(key, n, (k,), replace=False)]
    covs = jnp.broadcast_to(jnp.cov(x, rowvar=False).reshape(d, d) + ridge, (k, d, d))
    weights = jnp.full((k,), 1.0 / k)

    def step(_, params):
        weights, means, covs = params
        log_resp = jnp.log(weights) + _gaussian_log_density(x, means, covs)  # (n, k)
        resp = jnp.exp(log_resp - jax.nn.logsumexp(log_resp, axis=1, keepdims=True))
        nk = resp.sum(axis=0) + 1e-12
        means = (resp.T @ x) / nk[:, None]
        diff = x[None] - means[:, None]  # (k, n, d)
        covs = jnp.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None] + ridge
        return nk / n, means, covs

    return jax.lax.fori_loop(0, iterations, step, (weights, means, covs))


def _gaussian_log_density(x, means, covs):
    """``(n, k)`` log N(x_n | means_k, covs_k)."""
    chol = jnp.linalg.cholesky(covs)  # (k, d, d)
    diff = x[None] - means[:, None]  # (k, n, d)
    z = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, 1, 2), lower=True)  # (k, d, n)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=1)
    return (-0.5 * jnp.sum(z**2, axis=1) - log_det[:, None] - 0.5 * x.shape[1] * math.log(2 * math.pi)).T


@struct.dataclass
class MeanPrior:
    """Flat images whose per-channel colour is drawn from a Gaussian mixture, plus white noise of std ``noise``.

    Attributes:
      weights, means, chol: the mixture, ``(K,)``, ``(K, C)`` and the Cholesky factors ``(K, C, C)`` of its
        covariances (nested tuples, so the prior is static and stored in run.json as it is).
      noise: std of the "broken symmetry" noise added once to the start (the reference code's 0.002 on [−1, 1] images).
    """

    weights: tuple = struct.field(pytree_node=False)
    means: tuple = struct.field(pytree_node=False)
    chol: tuple = struct.field(pytree_node=False)
    noise: float = struct.field(pytree_node=False, default=0.002)

    @classmethod
    def fit(cls, images, components: int = 1, noise: float = 0.002, seed: int = 0) -> MeanPrior:
        """The prior of images ``(N, H, W, C)``: a ``components``-Gaussian mixture fitted to their per-channel means."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError(f"images must be finite, got {np.sum(~np.isfinite(images))} NaN or inf values")
        weights, means, covs = fit_gmm(images.mean(axis=(1, 2)), components, seed=seed)
        nested = lambda a: tuple(map(nested, a)) if np.ndim(a) else float(a)
        return cls(nested(weights), nested(means), nested(np.linalg.cholesky(covs)), float(noise))

    def sample(self, key: jax.Array, shape) -> jnp.ndarray:
        """``shape`` ``(B, H, W, C)`` float32: one colour per image from the mixture, plus the noise."""
        B, C = shape[0], shape[-1]
        means, chol = jnp.asarray(self.means, jnp.float32), jnp.asarray(self.chol, jnp.float32)
        if means.shape[1] != C:
            raise ValueError(f"the prior has {means.shape[1]} channels, shape asks for {C}")
        key_k, key_z, key_noise = jax.random.split(key, 3)
        k = jax.random.choice(key_k, len(self.weights), (B,), p=jnp.asarray(self.weights, jnp.float32))
        colour = means[k] + jnp.einsum("bij,bj->bi", chol[k], jax.random.normal(key_z, (B, C)))
        flat = jnp.broadcast_to(colour[:, None, None, :], tuple(shape))
        return flat + self.noise * jax.random.normal(key_noise, tuple(shape))


def _as_pytree(degradation):
    """The degradation as a pytree: built-in ones already are; a plain function becomes a static ``Partial``."""
    leaves = jax.tree.leaves(degradation)
    if all(isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int) for leaf in leaves):
        return degradation
    return Partial(degradation)


@struct.dataclass
class ColdDiffusion(Degradation):
    """Cold Diffusion over ``degradation``: a :class:`~cloudjax.process.ForwardProcess` of kind ``"cold"``.

    Attributes:
      degradation: ``D(x0, t)``, x0 ``(B, H, W, C)``, integer t ``(B,)`` in {0, …, steps}, D(x0, 0) = x0.
      steps: T, the number of degradation steps (>= 1); None takes the degradation's ``steps`` (built-in ones
        have it), which must agree when both are given.
      loss_weighting: ``"l1"`` (the paper's) or ``"l2"``: the norm of the x0 error.
      mean_prior: a :class:`MeanPrior` to generate from (the start when ``sample`` gets no ``init_noise``), or None.
    """

    degradation: Callable
    steps: int = struct.field(pytree_node=False, default=None)
    loss_weighting: str = struct.field(pytree_node=False, default="l1")
    mean_prior: Any = None

    kind: ClassVar[str] = "cold"
    prediction: ClassVar[str] = "x0"

    def __post_init__(self):
        if not callable(self.degradation):
            raise ValueError(f"degradation must be a callable D(x0, t), got {self.degradation!r}")
        steps = getattr(self.degradation, "steps", None)
        if self.steps is None and steps is not None:
            object.__setattr__(self, "steps", steps)
        if steps is not None and self.steps != steps:
            raise ValueError(f"steps={self.steps} differs from the degradation's steps={steps}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer) or self.steps < 1:
            raise ValueError(f"steps must be an integer T >= 1, got {self.steps!r}")
        registry.check("loss_weighting", self.loss_weighting, registry.LOSSES["cold"])
        object.__setattr__(self, "degradation", _as_pytree(self.degradation))
        object.__setattr__(self, "steps", int(self.steps))

    def degrade(self, x0: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        """``D(x0, t)`` for integer t ``(B,)`` in {0, …, T}."""
        return self.degradation(x0, t)

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jnp.ndarray, labels=None) -> jnp.ndarray:
        """Mean L1 (or L2) error of ``apply_fn(D(x0, t), t / T)`` against x0, t uniform on {1, …, T} per example
        (``labels``: see :meth:`cloudjax.process.ForwardProcess.loss`)."""
        x0 = jnp.asarray(x0, jnp.float32)
        if x0.ndim != 4:
            raise ValueError(f"x0 must be a (batch, H, W, C) array, got shape {x0.shape}")
        t = jax.random.randint(key, x0.shape[:1], 1, self.steps + 1)
        x_t = self.degrade(x0, t)
        apply_fn = with_labels(apply_fn, labels, x0.shape[0])
        out = check_output(apply_fn(x_t, t.astype(jnp.float32) / self.steps), x_t.shape, "apply_fn")
        return jnp.mean(error_norm(self.loss_weighting, out - x0))

    # The sampler's side of the ForwardProcess interface (see cloudjax.process).

    def stages(self, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> tuple[np.ndarray]:
        """``steps + 1`` times i / T, i evenly spaced integers from t_start·T down to t_end·T (one stage)."""
        if not 0.0 <= t_end < t_start <= 1.0:
            raise ValueError(f"t_start, t_end must satisfy 0 <= t_end < t_start <= 1, got {t_start}, {t_end}")
        hi, lo = round(t_start * self.steps), round(t_end * self.steps)
        if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= hi - lo:
            raise ValueError(f"steps must be an integer in [1, {hi - lo}] (T = {self.steps} from t_start to t_end)")
        i = np.floor(np.linspace(hi, lo, int(steps) + 1) + 0.5)  # distinct: neighbours are >= 1 apart
        return ((i / self.steps).astype(np.float32),)

    def state_shape(self, shape: tuple[int, ...], stage: int) -> tuple[int, ...]:
        """The images' shape (one stage)."""
        return tuple(shape)

    def coefficients(self, ts: jnp.ndarray) -> jnp.ndarray:
        """The integer steps t·T."""
        return jnp.round(ts * self.steps).astype(jnp.int32)

    def prior(self, key: jax.Array, shape, at_start, init: jnp.ndarray | None = None) -> jnp.ndarray:
        """The start: ``init`` (the degraded images to restore, of ``shape``), or a draw from :attr:`mean_prior`."""
        if init is not None:
            if jnp.shape(init) != tuple(shape):
                raise ValueError(
                    f"init_noise (the degraded images) must have shape {tuple(shape)}, got {jnp.shape(init)}"
                )
            return jnp.asarray(init, jnp.float32)
        if self.mean_prior is None:
            raise ValueError("this ColdDiffusion has no mean_prior to generate from: pass init_noise= degraded images")
        return self.mean_prior.sample(key, shape)

    def predict(self, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, None]:
        """The network predicts x0."""
        return out, None

    def output(self, x: jnp.ndarray, x0: jnp.ndarray, at_end) -> jnp.ndarray:
        """The last state (restored when t_end = 0)."""
        return x


@dataclasses.dataclass(frozen=True)
class ColdSpec:
    """The spec of :class:`ColdDiffusion` (:class:`~cloudjax.process.ProcessSpec`) over one of the built-in
    degradations, "blur" (default), "mask", "downsample" or "decolor", with T = ``degradation_steps`` <= 1,000; a
    UNet; Algorithm 2 with T steps. Settings left None take the reference code's MNIST/CIFAR values scaled to the
    image size S (:func:`_size_defaults`, filled by ``resolve``): blur T = 20 steps of a constant σ = 7·S/28 px
    Gaussian, kernel ≈ 11·S/28 (odd), ``blur_routine`` "constant", ``blur_padding`` "circular"; mask T = 50,
    σ_i = mask_std·(i + mask_initial) with mask_std = 0.1·S/32, mask_initial 11; downsample T = log2(S/4); decolor
    T = 20. generation (blur only, default False): the last step goes to the per-channel mean and a
    ``gmm_components`` (default 1) Gaussian mixture of the data's means is measured to generate new images; without
    it sampling restores degraded images. A setting given where it does not apply is refused.
    """

    kind = "cold"

    degradation: str = setting("blur", "what D(x0, t) does", registry.DEGRADATIONS)
    degradation_steps: int | None = setting(
        None, "T (defaults, the reference code's: blur 20, mask 50, downsample log2(size/4), decolor 20)"
    )
    blur_routine: str | None = setting(None, "blur stds per step (default constant)", registry.BLUR_ROUTINES)
    blur_std: float | None = setting(None, "blur std in px (default 7·size/28, constant)")
    blur_kernel: int | None = setting(None, "blur kernel side (default ≈ 11·size/28, odd)")
    blur_padding: str | None = setting(None, "blur padding (default circular)", ("circular", "reflect"))
    mask_std: float | None = setting(None, "mask: σ_i = std·(i + initial) (default 0.1·size/32)")
    mask_initial: float | None = setting(None, "mask: initial of σ_i (default 11)")
    generation: bool | None = setting(
        None, "blur: last step to the per-channel mean, fit a Gaussian mixture to the means to generate"
    )
    gmm_components: int | None = setting(None, "generation: mixture components (default 1)")
    loss_weighting: str = setting("l1", "loss: the norm of the x0 error", registry.LOSSES["cold"])

    def __post_init__(self):
        check_fields(self)
        blur, mask = self.degradation == "blur", self.degradation == "mask"
        if blur:
            fill(self, blur_routine="constant", blur_padding="circular", generation=False)
        if mask:
            fill(self, mask_initial=11.0)
        if self.generation:
            fill(self, gmm_components=1)
        what = f"process 'cold' with degradation {self.degradation!r}"
        what += " without generation" if blur and not self.generation else ""
        applies = dict(blur_routine=blur, blur_std=blur, blur_kernel=blur, blur_padding=blur, generation=blur)
        refuse(self, what, **applies, gmm_components=bool(self.generation), mask_std=mask, mask_initial=mask)
        T = self.degradation_steps
        if T is not None and not 1 <= T <= MAX_DEGRADATION_STEPS:
            raise ValueError(f"degradation_steps must be in 1 … {MAX_DEGRADATION_STEPS}, got {T}")
        positive = dict(blur_std=self.blur_std, blur_kernel=self.blur_kernel, mask_std=self.mask_std)
        positive.update(mask_initial=self.mask_initial, gmm_components=self.gmm_components)
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def generates(self) -> bool:
        return bool(self.generation)

    sampler = "cold"

    @property
    def sampler_steps(self) -> int:
        return self.degradation_steps

    def resolve(self, image_size: int, channels: int, unet) -> ColdSpec:
        """The size defaults filled; the degradation checked against the images (built once)."""
        if self.degradation == "decolor" and channels == 1:
            raise ValueError("degradation 'decolor' needs channels=3 (grey images have no colour to fade)")
        defaults = _size_defaults(self.degradation, image_size)
        spec = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        if spec.degradation == "blur" and spec.blur_kernel > image_size:
            raise ValueError(f"blur_kernel {spec.blur_kernel} is larger than the image ({image_size} px)")
        if spec.degradation == "downsample" and image_size % 2**spec.degradation_steps:
            T = spec.degradation_steps
            raise ValueError(f"degradation_steps {T} halves {image_size} px below one pixel or unevenly")
        spec.degrade()
        return spec

    def network(self, unet, image_size: int, rngs):
        return UNet(unet, rngs=rngs)

    def measure(self, images: np.ndarray, std: np.ndarray, seed: int) -> dict:
        """Generation: the :class:`MeanPrior` of the images, with the reference code's 0.002 "broken symmetry" noise
        on [−1, 1] images in normalised units (data are in [0, 1])."""
        if not self.generation:
            return {}
        prior = MeanPrior.fit(images, self.gmm_components, noise=0.001 / float(np.mean(std)), seed=seed)
        return {"mean_prior": dataclasses.asdict(prior)}

    def build(self, measurements: Mapping, image_shape: tuple[int, int, int]) -> ColdDiffusion:
        for name in set(measurements) ^ ({"mean_prior"} if self.generation else set()):
            raise ValueError(f"{name} must be measured for cold generation (and only then)")
        prior = _mean_prior(measurements["mean_prior"], image_shape[-1]) if self.generation else None
        return ColdDiffusion(self.degrade(), self.degradation_steps, self.loss_weighting, prior)

    def degrade(self):
        """The degradation D of these (resolved) settings."""
        T = self.degradation_steps
        if self.degradation == "blur":
            routine = (self.blur_routine, T, self.blur_std, self.blur_kernel, self.blur_padding)
            return degradations.GaussianBlur.from_routine(*routine, final_mean=self.generation)
        if self.degradation == "mask":
            return degradations.GaussianMask.linear(T, self.mask_std, self.mask_initial)
        return degradations.Downsample(T) if self.degradation == "downsample" else degradations.Decolorize(T)


def _size_defaults(degradation: str, size: int) -> dict:
    """The reference code's MNIST/CIFAR settings (28–32 px) scaled to ``size`` px images."""
    if degradation == "blur":
        kernel = max(3, int(11 * size / 28) - (int(11 * size / 28) + 1) % 2)  # odd, ≈ 11 at 28 px
        std, kernel = round(7 * size / 28, 3), min(kernel, size - 1 + size % 2)
        return dict(degradation_steps=20, blur_std=std, blur_kernel=kernel)
    if degradation == "mask":
        return dict(degradation_steps=50, mask_std=round(0.1 * size / 32, 4))
    if degradation == "downsample":
        return dict(degradation_steps=max(1, int(math.log2(size / 4))))
    return dict(degradation_steps=20)


def _mean_prior(stored: Mapping, channels: int) -> MeanPrior:
    """The :class:`MeanPrior` of its run.json entry, checked: ``ValueError`` unless it holds finite weights
    ``(K,)`` >= 0 summing to 1, means ``(K, C)``, Cholesky factors ``(K, C, C)`` and a noise std >= 0."""
    tuples = lambda v: tuple(map(tuples, v)) if isinstance(v, list | tuple) else v
    p = MeanPrior(**{k: tuples(v) for k, v in stored.items()})
    w, m, L = (np.asarray(a, np.float64) for a in (p.weights, p.means, p.chol))
    K, C = len(w), channels
    shapes = (w.shape, m.shape, L.shape) == ((K,), (K, C), (K, C, C))
    values = np.concatenate([w, m.ravel(), L.ravel(), [p.noise]]) if shapes else None
    if not (shapes and np.isfinite(values).all() and w.min() >= 0 and p.noise >= 0):
        raise ValueError("mean_prior must hold finite weights (K,) >= 0, means (K, C), chol (K, C, C) and noise")
    if abs(w.sum() - 1) > 1e-4:
        raise ValueError(f"mean_prior's weights must sum to 1, got {w.sum()}")
    return p
