"""The Gaussian forward process over any noise model (jump trick), prediction targets and training losses.

Forward process (paper eqs. 34–35): ``x_t = α_t x0 + σ_t ε`` with ε ~ N(0, Σ) drawn from the noise model —
white (Σ = I) or cloud (Σ diagonal in Π space with variance ``noise.fourier_variance``). It needs no
step-by-step noising because a sum of independent N(0, Σ) draws is again N(0, c Σ) for the same Σ.

Predictions. A network may predict ε, x0 or v = α ε − σ x0 (Salimans & Ho); each determines the other two
given x_t: ``x_t = α x0 + σ ε`` and ``(α² + σ²) x0 = α x_t − σ v``, ``(α² + σ²) ε = σ x_t + α v``.

Losses: a norm of the prediction error e, optionally times a weight per t, named ``NORM`` or
``NORM+WEIGHTING`` (``"l2"``, ``"mahalanobis+min_snr"``, …; ``"pixel"`` and ``"min_snr"`` are the older names
of ``"l2"`` and ``"l2+min_snr"``). Norms (:func:`error_norm`; mean over pixels, so noises and image sizes share
one scale; for a zero ε prediction ``l2`` and ``mahalanobis`` give 1 per pixel):

* ``"l2"``: mean e².
* ``"l1"``: mean |e| (Cold Diffusion's; Gaussian processes take the two squared norms, which their ELBO gives).
* ``"mahalanobis"``: the error whitened by the noise covariance, ``mean |Σ^{-1/2} e|²`` — in Π space
  ``(Π e)² / fourier_variance`` and, for colour noise, ``eᵀ channel_cov⁻¹ e`` per mode. This is the
  ELBO-consistent norm for coloured noise: every KL term of the ELBO compares two Gaussians q(x_s | x_t, x0)
  and p(x_s | x_t) with the same covariance c Σ, so it is ½ ‖μ_q − μ_p‖² in the Σ⁻¹ metric, and μ_q − μ_p is
  a scalar multiple of the x0 (or ε, or v) error. It is the author's loss Σ |k|^{2Δ} (Π e)² normalised.
  For white noise it equals ``"l2"``. (The ELBO's per-t weights are dropped, as in the simple loss.)

Time weightings: none, or ``"min_snr"``, Min-SNR-γ (Hang et al. 2023): the x0-space error weighted by
min(SNR, γ), SNR = α²/σ², i.e. ``min(SNR, γ) / SNR`` on ε errors and ``min(SNR, γ) / (SNR + 1)`` on v errors.

:class:`GaussianDiffusion` implements :class:`cloudjax.process.ForwardProcess` (``kind = "gaussian"``); its spec
(:class:`cloudjax.process.ProcessSpec`) is :class:`GaussianSpec`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax import registry
from cloudjax._config import setting
from cloudjax.noise import WhiteNoise
from cloudjax.noise_settings import NoiseSettings
from cloudjax.process import check_noise, check_output, check_times, per_example, with_labels
from cloudjax.schedules import get_schedule, time_grid
from cloudjax.spectral import irfft_real, rfft_real

__all__ = [
    "GaussianDiffusion",
    "GaussianSpec",
    "PREDICTIONS",
    "LOSS_WEIGHTINGS",
    "to_x0_eps",
    "from_x0_eps",
    "whiten",
    "error_norm",
    "gaussian_oracle",
    "gaussian_oracle_loss",
]

PREDICTIONS = registry.PREDICTIONS
LOSS_WEIGHTINGS = registry.LOSSES["gaussian"]


def _check_prediction(prediction: str) -> None:
    registry.check("prediction", prediction, PREDICTIONS)


def to_x0_eps(prediction: str, out: jnp.ndarray, x_t: jnp.ndarray, alpha, sigma) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(x0, ε) from a network output ``out`` of type ``prediction`` at x_t = α x0 + σ ε (α, σ broadcastable)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x_t - alpha * out) / sigma
    norm = alpha**2 + sigma**2
    return (alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm


def from_x0_eps(prediction: str, x0: jnp.ndarray, eps: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """The ``prediction`` (ε, x0 or v = α ε − σ x0) for given x0 and ε."""
    _check_prediction(prediction)
    return {"eps": lambda: eps, "x0": lambda: x0, "v": lambda: alpha * eps - sigma * x0}[prediction]()


def stratified_times(key: jax.Array, batch: int) -> jnp.ndarray:
    """Training times ``t_b = (u + b / B) mod 1`` for b < B with one u ~ U(0, 1): float32 ``(B,)``, each t_b
    uniform on [0, 1), the batch spread evenly over it (lower variance than B independent draws)."""
    return jnp.mod(jax.random.uniform(key, (), jnp.float32) + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)


@struct.dataclass
class GaussianDiffusion:
    """Diffusion ``x_t = α_t x0 + σ_t ε`` with ε from ``noise``; a frozen pytree (``noise`` is its only node)
    and a :class:`~cloudjax.process.ForwardProcess` of kind ``"gaussian"``.

    Attributes:
      noise: noise model with ``sample(key, shape)`` and ``fourier_variance(H, W)`` (``WhiteNoise``,
        ``PowerLawNoise``, ...).
      schedule: a name (``"cosine"``, ``"offset_cosine"``, ``"linear"``) or a schedule object from
        :mod:`cloudjax.schedules` (e.g. ``calibrated_schedule(...)``); stored resolved to an object.
      prediction: what the network predicts, ``"eps"``, ``"x0"`` or ``"v"``.
      loss_weighting: the loss, a name in ``registry.LOSSES["gaussian"]``: a norm ``"l2"`` (alias ``"pixel"``) or
        ``"mahalanobis"``, optionally ``+min_snr`` (``"min_snr"`` = ``"l2+min_snr"``); see the module
        docstring (the ``"l1"`` norm is Cold Diffusion's). Read back as :attr:`norm` and :attr:`time_weighting`.
      min_snr_gamma: γ of the min-SNR weighting.
    """

    kind: ClassVar[str] = "gaussian"

    noise: Any = struct.field(default_factory=WhiteNoise)
    schedule: Any = struct.field(pytree_node=False, default="cosine")
    prediction: str = struct.field(pytree_node=False, default="eps")
    loss_weighting: str = struct.field(pytree_node=False, default="pixel")
    min_snr_gamma: float = struct.field(pytree_node=False, default=5.0)

    def __post_init__(self):
        object.__setattr__(self, "schedule", get_schedule(self.schedule))
        _check_prediction(self.prediction)
        registry.check("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        if not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")

    @property
    def norm(self) -> str:
        """The loss's norm: ``"l2"``, ``"mahalanobis"`` or ``"l1"``."""
        return registry.parse_loss(self.loss_weighting)[0]

    @property
    def time_weighting(self) -> str:
        """The loss's time weighting: ``"none"`` or ``"min_snr"``."""
        return registry.parse_loss(self.loss_weighting)[1]

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) for t in [0, 1], each of t's shape."""
        return self.schedule.alpha_sigma(t)

    def q_sample(self, key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray | None = None):
        """Jump trick: ``x_t = α_t x0 + σ_t ε``, ε ~ the noise model (or ``noise`` if given).

        Args:
          key: PRNG key for ε (unused when ``noise`` is given).
          x0: clean images ``(B, H, W, C)``.
          t: times ``(B,)`` (or a scalar) in [0, 1].
          noise: optional ε of x0's shape.
        """
        x0 = jnp.asarray(x0)
        if noise is None:
            noise = self.noise.sample(key, x0.shape)
        check_noise(noise, x0)
        return self.mean(x0, t) + self.alpha_sigma(per_example(t, x0))[1] * noise

    def mean(self, x0: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        """``E[x_t | x0] = α_t x0`` for x0 ``(B, H, W, C)`` and t ``(B,)`` (or a scalar) in [0, 1]."""
        x0 = jnp.asarray(x0)
        check_times(t)
        return self.alpha_sigma(per_example(t, x0))[0] * x0

    def to_x0_eps(self, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(x̂0, ε̂) from the network output ``out`` at (x_t, t), t of shape ``(B,)``."""
        return to_x0_eps(self.prediction, out, x_t, *self.alpha_sigma(per_example(t, x_t)))

    def target(self, x0: jnp.ndarray, eps: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        """The regression target (ε, x0 or v) for x0 and ε at times t ``(B,)``."""
        return from_x0_eps(self.prediction, x0, eps, *self.alpha_sigma(per_example(t, x0)))

    def time_weight(self, t: jnp.ndarray) -> jnp.ndarray:
        """Per-example loss weight at t: 1, or the min-SNR-γ weight expressed on this prediction's error."""
        t = jnp.asarray(t, jnp.float32)
        if self.time_weighting != "min_snr":
            return jnp.ones_like(t)
        alpha, sigma = self.alpha_sigma(t)
        snr = alpha**2 / sigma**2
        clipped = jnp.minimum(snr, self.min_snr_gamma)
        return {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1.0)}[self.prediction]

    def squared_error(self, err: jnp.ndarray) -> jnp.ndarray:
        """Per-example error ``(B,)`` of ``err`` ``(B, H, W, C)`` in this diffusion's norm (:func:`error_norm`;
        a mean squared error except for ``"l1"``)."""
        return error_norm(self.norm, err, self.noise)

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jnp.ndarray, labels=None) -> jnp.ndarray:
        """Scalar training loss for a batch x0 ``(B, H, W, C)``; ``apply_fn(x_t, t)`` returns the prediction
        (``labels``: see :meth:`cloudjax.process.ForwardProcess.loss`).

        t is stratified over the batch, ``t_b = (u + b / B) mod 1`` with one u ~ U(0, 1) (unbiased for U(0, 1)
        per example, lower variance), float32 of shape ``(B,)``; ε comes from the noise model.
        """
        x0 = jnp.asarray(x0, jnp.float32)
        if x0.ndim != 4:
            raise ValueError(f"x0 must be a (batch, H, W, C) array, got shape {x0.shape}")
        key_t, key_eps = jax.random.split(key)
        t = stratified_times(key_t, x0.shape[0])
        eps = self.noise.sample(key_eps, x0.shape)
        x_t = self.q_sample(None, x0, t, noise=eps)
        out = check_output(with_labels(apply_fn, labels, x0.shape[0])(x_t, t), x_t.shape, "apply_fn")
        err = out - self.target(x0, eps, t)
        return jnp.mean(self.time_weight(t) * self.squared_error(err))

    # The sampler's side of the ForwardProcess interface (see cloudjax.process).

    def stages(self, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> tuple[np.ndarray]:
        """One stage: ``steps`` uniform steps from t_start to t_end (:func:`cloudjax.schedules.time_grid`)."""
        return (time_grid(steps, t_start, t_end),)

    def state_shape(self, shape: tuple[int, ...], stage: int) -> tuple[int, ...]:
        """The images' shape (one stage)."""
        return tuple(shape)

    def coefficients(self, ts: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α, σ) at each time of ``ts``."""
        return self.alpha_sigma(ts)

    def prior(self, key: jax.Array, shape, at_start, init: jnp.ndarray | None = None) -> jnp.ndarray:
        """``σ_start ε`` with ε = ``init`` (of ``shape``) or a noise-model draw: the noise part of the marginal
        ``α x0 + σ ε``; its data part has mean α E[x0] = 0 for normalised data and is dropped."""
        if init is None:
            return at_start[1] * self.noise.sample(key, shape)
        if jnp.shape(init) != tuple(shape):
            raise ValueError(f"init_noise must have shape {tuple(shape)}, got {jnp.shape(init)}")
        return at_start[1] * init

    def predict(self, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(x̂0, ε̂) from the network output (same as :meth:`to_x0_eps`)."""
        return self.to_x0_eps(out, x_t, t)

    def output(self, x: jnp.ndarray, x0: jnp.ndarray, at_end) -> jnp.ndarray:
        """x̂0 at the last time, or the state itself where σ = 0 there (it is clean)."""
        return jnp.where(at_end[1] > 0, x0, x)


def error_norm(norm: str, err: jnp.ndarray, noise=None) -> jnp.ndarray:
    """Per-example error ``(B,)`` of ``err`` ``(B, H, W, C)`` in ``norm``: ``"l2"`` mean e², ``"l1"`` mean |e|,
    ``"mahalanobis"`` mean (Σ^{-1/2} e)² for ``noise``'s Σ (:func:`whiten`)."""
    registry.check("norm", norm, registry.NORMS)
    if norm == "mahalanobis":
        err = whiten(noise, err)
    err = jnp.abs(err) if norm == "l1" else err**2
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def _noise_fourier_std(noise, shape: tuple[int, ...]) -> np.ndarray:
    """``(H, W, 1)`` standard deviation of the noise per Π mode (one channel), for images of ``shape``."""
    H, W = shape[-3], shape[-2]
    with jax.ensure_compile_time_eval():  # a constant, also when called under jit
        variance = np.asarray(noise.fourier_variance(H, W), np.float64)
    return np.sqrt(variance)[..., None].astype(np.float32)


def whiten(noise, x: jnp.ndarray) -> jnp.ndarray:
    """Π-space ``Σ^{-1/2} x`` for ``x`` ``(..., H, W, C)``: Π x divided by the noise's Π std per mode and, for
    colour noise (``channel_cov``), mapped by ``diag(λ)^{-1/2} Vᵀ`` per mode (channel_cov = V diag(λ) Vᵀ).

    ``mean(whiten(noise, ε)²) = 1`` in expectation for ε drawn from ``noise``.
    """
    X = rfft_real(x) / _noise_fourier_std(noise, x.shape)
    channel_cov = getattr(noise, "channel_cov", None)
    if channel_cov is None:
        return X
    lam, V = jnp.linalg.eigh(jnp.asarray(channel_cov, jnp.float32))
    return (X @ V) / jnp.sqrt(lam)


def _oracle_posterior(diffusion: GaussianDiffusion, data_fourier_variance, shape):
    """Broadcast C and N to ``(H, W, C)`` Π grids for images of ``shape``; checks the oracle's assumptions."""
    if getattr(diffusion.noise, "channel_cov", None) is not None:
        raise ValueError("gaussian_oracle supports noise without channel_cov only")
    C = np.asarray(data_fourier_variance, np.float32)
    if C.ndim == 2:
        C = C[..., None]
    H, W, ch = shape[-3:]
    if C.shape[:2] != (H, W) or C.shape[2] not in (1, ch):
        raise ValueError(f"data_fourier_variance must be (H, W) or (H, W, C) = ({H}, {W}, {ch}), got {C.shape}")
    if np.any(C < 0) or not np.all(np.isfinite(C)):
        raise ValueError("data_fourier_variance must be finite and >= 0")
    N = _noise_fourier_std(diffusion.noise, shape) ** 2
    return C, N


def gaussian_oracle(diffusion: GaussianDiffusion, data_fourier_variance) -> Callable:
    """The exact denoiser for zero-mean Gaussian data with diagonal Π covariance C, as ``denoise_fn(x_t, t)``.

    Per Π mode, ``E[x0 | x_t] = α C / (α² C + σ² N) · x_t`` with N the noise's Π variance
    (``fourier_variance``). Exact when the noise's Π covariance is diagonal (white, or ``PowerLawNoise`` with
    pad = 1); for pad > 1 it is the best denoiser that ignores the crop's small mode correlations.
    The returned function gives ``diffusion.prediction`` (ε, x0 or v) for x_t ``(B, H, W, C)`` and t ``(B,)``.

    Args:
      diffusion: the process (noise without ``channel_cov``).
      data_fourier_variance: C, shape ``(H, W)`` (shared by all channels) or ``(H, W, C)``.
    """

    def denoise(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        C, N = _oracle_posterior(diffusion, data_fourier_variance, x_t.shape)
        alpha, sigma = diffusion.alpha_sigma(per_example(t, x_t))
        x0 = irfft_real(alpha * C / (alpha**2 * C + sigma**2 * N) * rfft_real(x_t))
        eps = irfft_real(sigma * N / (alpha**2 * C + sigma**2 * N) * rfft_real(x_t))
        return from_x0_eps(diffusion.prediction, x0, eps, alpha, sigma)

    return denoise


def gaussian_oracle_loss(
    diffusion: GaussianDiffusion, data_fourier_variance, shape: tuple[int, int, int], t=None, num_t: int = 4096
):
    """The minimum of ``diffusion.loss`` (reached by :func:`gaussian_oracle`) for that Gaussian data.

    Per Π mode the oracle's x0 error has variance ``V = C σ² N / (α² C + σ² N)``; the ε error is −α/σ times the
    x0 error and the v error −(α² + σ²)/σ times it. The loss at t is the weighting's mean of those variances
    (divided by N for the ``"mahalanobis"`` norm) times ``time_weight(t)``.

    Args:
      diffusion: the process.
      data_fourier_variance: C, ``(H, W)`` or ``(H, W, C)``.
      shape: image shape ``(H, W, C)``.
      t: times of any shape; None averages over t ~ U(0, 1) (midpoint rule with ``num_t`` points).

    Returns:
      the expected loss at each t (t's shape), or its average over t (scalar).
    """
    C, N = _oracle_posterior(diffusion, data_fourier_variance, tuple(shape))
    C, N = np.broadcast_to(C, shape), np.broadcast_to(N, shape)
    ts = (np.arange(num_t) + 0.5) / num_t if t is None else t
    t_flat = jnp.reshape(jnp.asarray(ts, jnp.float32), (-1, 1, 1, 1))
    alpha, sigma = diffusion.alpha_sigma(t_flat)
    V = C * sigma**2 * N / (alpha**2 * C + sigma**2 * N)
    gain = {"x0": 1.0, "eps": alpha / sigma, "v": (alpha**2 + sigma**2) / sigma}[diffusion.prediction]
    per_mode = gain**2 * V / (N if diffusion.norm == "mahalanobis" else 1.0)
    losses = diffusion.time_weight(t_flat[:, 0, 0, 0]) * jnp.mean(per_mode, axis=(1, 2, 3))
    return jnp.mean(losses) if t is None else losses.reshape(jnp.shape(ts))


@dataclasses.dataclass(frozen=True)
class GaussianSpec(NoiseSettings):
    """The spec of :class:`GaussianDiffusion`: the noise settings (:class:`~cloudjax.noise_settings.NoiseSettings`)
    and the network's target ``prediction``; a UNet, the DDIM sampler with 50 steps."""

    kind = "gaussian"

    prediction: str = setting("eps", "network target", registry.PREDICTIONS)

    def build(self, measurements: Mapping, image_shape: tuple[int, int, int]) -> GaussianDiffusion:
        noise = self.noise_model(measurements, image_shape[-1])
        return GaussianDiffusion(noise, self.schedule_model(measurements), self.prediction, self.loss_weighting)
