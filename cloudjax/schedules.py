"""Continuous-time noise schedules t ∈ [0, 1] → (α_t, σ_t) and discrete sampling grids.

The forward process is ``x_t = α_t x0 + σ_t ε`` with ε drawn from a noise model (white or cloud). Every
schedule here is variance preserving, ``α_t² + σ_t² = 1``, runs from (nearly) clean data at t = 0 to
(nearly) pure noise at t = 1, and is described by its log signal-to-noise ratio
``λ_t = log(α_t² / σ_t²)``, decreasing in t.

* :class:`CosineSchedule` — the angle θ_t = arctan(σ_t / α_t) is linear in t between two end points.
  ``"cosine"`` spans λ ∈ [−15, 15] (the continuous cosine schedule of Nichol & Dhariwal, end points clipped
  as in simple diffusion); ``"offset_cosine"`` is the Cloud Diffusion author's, θ from arccos 0.95 to
  arccos 0.02, i.e. ``x_t = cos θ x0 + sin θ ε`` with α_0 = 0.95 and α_1 = 0.02.
* :class:`LinearSchedule` — DDPM's linear β_i (1e-4 → 0.02, T = 1000): ``ᾱ_i = Π_{j≤i} (1 − β_j)``, α_t² is
  ᾱ interpolated geometrically at i = tT, so the discrete DDPM values are hit exactly on the grid t = i / T.
* :class:`CalibratedSchedule` — a reference schedule whose λ is shifted by a constant so that a coloured
  noise has the reference's *average per-frequency SNR* (Falck et al. 2025). Build it with
  :func:`calibrated_schedule` from the data's and the noise's Π-space variances.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax.process import Schedule

__all__ = [
    "CosineSchedule",
    "LinearSchedule",
    "CalibratedSchedule",
    "calibrated_schedule",
    "get_schedule",
    "time_grid",
    "SCHEDULES",
]


def _log_snr(alpha: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))


@struct.dataclass
class CosineSchedule:
    """θ_t = θ_0 + t (θ_1 − θ_0) with θ = arccos α; ``α_t = cos θ_t``, ``σ_t = sin θ_t``.

    The defaults span the full quarter turn (α_1 = 0: an ε prediction cannot be inverted at t = 1); the named
    ``"cosine"`` stops at λ = ±15 instead.

    Attributes:
      alpha_start: α at t = 0, in (0, 1].
      alpha_end: α at t = 1, in [0, alpha_start).
    """

    alpha_start: float = struct.field(pytree_node=False, default=1.0)
    alpha_end: float = struct.field(pytree_node=False, default=0.0)

    def __post_init__(self):
        if not 0.0 <= self.alpha_end < self.alpha_start <= 1.0:
            raise ValueError(
                f"alpha_start, alpha_end must satisfy 0 <= alpha_end < alpha_start <= 1, "
                f"got {self.alpha_start}, {self.alpha_end}"
            )

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) for t in [0, 1] of any shape, float32."""
        t = jnp.asarray(t, jnp.float32)
        theta0, theta1 = math.acos(self.alpha_start), math.acos(self.alpha_end)
        theta = theta0 + t * (theta1 - theta0)
        return jnp.cos(theta), jnp.sin(theta)

    def log_snr(self, t: jnp.ndarray) -> jnp.ndarray:
        """λ_t = log(α_t² / σ_t²) = −2 log tan θ_t."""
        return _log_snr(*self.alpha_sigma(t))


def _cosine_from_log_snr(log_snr_max: float, log_snr_min: float) -> CosineSchedule:
    """The cosine schedule whose λ runs from ``log_snr_max`` at t = 0 to ``log_snr_min`` at t = 1."""
    # λ = −2 log tan θ  ⇒  α = cos θ = sigmoid(λ)^(1/2).
    return CosineSchedule(
        alpha_start=math.sqrt(1.0 / (1.0 + math.exp(-log_snr_max))),
        alpha_end=math.sqrt(1.0 / (1.0 + math.exp(-log_snr_min))),
    )


@struct.dataclass
class LinearSchedule:
    """DDPM's schedule: β_i linear from ``beta_start`` to ``beta_end`` for i = 1 … T, ``ᾱ_i = Π (1 − β_j)``.

    Continuous time: ``log α_t² = log ᾱ`` linearly interpolated at i = tT (exact at t = i / T), ``σ_t² = 1 − α_t²``.
    α_0 = 1 and σ_0 = 0 (clean data); α_1 ≈ 0.0066 for the defaults.
    """

    beta_start: float = struct.field(pytree_node=False, default=1e-4)
    beta_end: float = struct.field(pytree_node=False, default=0.02)
    num_steps: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if int(self.num_steps) != self.num_steps or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps}")

    def _log_alpha_bar(self) -> np.ndarray:
        """``(T + 1,)`` table of log ᾱ_i, i = 0 … T."""
        betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
        return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) for t in [0, 1] of any shape, float32."""
        t = jnp.asarray(t, jnp.float32)
        table = self._log_alpha_bar()
        log_ab = jnp.interp(t * self.num_steps, jnp.arange(self.num_steps + 1.0), jnp.asarray(table, jnp.float32))
        return jnp.exp(0.5 * log_ab), jnp.sqrt(0.0 - jnp.expm1(log_ab))

    def log_snr(self, t: jnp.ndarray) -> jnp.ndarray:
        """λ_t = log(ᾱ / (1 − ᾱ))."""
        return _log_snr(*self.alpha_sigma(t))


@struct.dataclass
class CalibratedSchedule:
    """A reference schedule with λ shifted by ``log(snr_ratio)``: ``α'² / σ'² = snr_ratio · α² / σ²``.

    Written without λ so that the end points stay exact: ``α'² = r α² / (σ² + r α²)``, ``σ'² = σ² / (σ² + r α²)``.
    With r = mean(C) this is Falck et al.'s ``ᾱ_eq = ᾱ·mean(C) / (1 − ᾱ + ᾱ·mean(C))``.

    Attributes:
      base: the reference schedule.
      snr_ratio: r > 0.
    """

    base: CosineSchedule | LinearSchedule = struct.field(pytree_node=False)
    snr_ratio: float = struct.field(pytree_node=False, default=1.0)

    def __post_init__(self):
        if not (np.isfinite(self.snr_ratio) and self.snr_ratio > 0):
            raise ValueError(f"snr_ratio must be a finite number > 0, got {self.snr_ratio}")

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) for t in [0, 1] of any shape, float32."""
        alpha, sigma = self.base.alpha_sigma(t)
        norm = jnp.sqrt(sigma**2 + self.snr_ratio * alpha**2)
        return math.sqrt(self.snr_ratio) * alpha / norm, sigma / norm

    def log_snr(self, t: jnp.ndarray) -> jnp.ndarray:
        """λ'_t = λ_t + log(snr_ratio)."""
        return _log_snr(*self.alpha_sigma(t))


def calibrated_schedule(
    data_variance: np.ndarray,
    noise_variance: np.ndarray,
    base: str | CosineSchedule | LinearSchedule = "cosine",
    reference_variance: np.ndarray | float = 1.0,
) -> CalibratedSchedule:
    """Schedule giving ``noise_variance`` the average per-frequency SNR that ``base`` gives the reference noise.

    The SNR of Π mode i at time t is ``α_t² C_i / (σ_t² N_i)`` (C: data Π-variance, N: noise Π-variance). Matching
    ``mean_i`` of it with the reference noise (default white, N_ref = 1) at every t needs
    ``α'²/σ'² = r · α²/σ²`` with ``r = mean(C / N_ref) / mean(C / N)``.

    Args:
      data_variance: the data's Π-space variance C, shape ``(H, W)`` or ``(H, W, C)``.
      noise_variance: the noise's Π-space variance N (e.g. ``noise.fourier_variance(H, W)``), broadcastable to C.
      base: the reference schedule (name or object).
      reference_variance: Π-space variance of the reference noise, default 1 (white).
    """
    C = np.asarray(data_variance, np.float64)
    N = np.broadcast_to(np.asarray(noise_variance, np.float64)[(...,) + (None,) * (C.ndim - 2)], C.shape)
    if C.ndim not in (2, 3) or np.any(~np.isfinite(C)) or np.any(C < 0) or not np.any(C > 0):
        raise ValueError("data_variance must be a finite, non-negative, non-zero (H, W) or (H, W, C) array")
    if np.any(~(N > 0)):
        raise ValueError("noise_variance must be > 0 at every mode")
    ratio = float(np.mean(C / np.asarray(reference_variance, np.float64)) / np.mean(C / N))
    return CalibratedSchedule(base=get_schedule(base), snr_ratio=ratio)


SCHEDULES = {
    "cosine": lambda: _cosine_from_log_snr(15.0, -15.0),
    "offset_cosine": lambda: CosineSchedule(alpha_start=0.95, alpha_end=0.02),
    "linear": LinearSchedule,
}


def get_schedule(schedule, **calibration):
    """A schedule object from a name in :data:`SCHEDULES` or ``"calibrated"``, or ``schedule`` itself.

    ``"calibrated"`` needs data: pass ``data_variance=`` and ``noise_variance=`` (and optionally ``base=``,
    ``reference_variance=``); see :func:`calibrated_schedule`.
    """
    if isinstance(schedule, Schedule):  # any object with alpha_sigma and log_snr
        return schedule
    if schedule == "calibrated":
        if "data_variance" not in calibration or "noise_variance" not in calibration:
            raise ValueError('schedule "calibrated" needs data_variance= and noise_variance= (see calibrated_schedule)')
        return calibrated_schedule(**calibration)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {[*SCHEDULES, 'calibrated']} or a schedule object, got {schedule!r}")
    return SCHEDULES[schedule]()


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> np.ndarray:
    """``(steps + 1,)`` float32 times, uniform from ``t_start`` down to ``t_end``: the sampler goes t_i → t_{i+1}.

    Args:
      steps: number of steps, >= 1.
      t_start: first time, in (0, 1] (the Cloud Diffusion author started cloud sampling at 0.95).
      t_end: last time, in [0, t_start).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if not 0.0 <= t_end < t_start:
        raise ValueError(f"t_end must be in [0, t_start), got {t_end}")
    return np.linspace(t_start, t_end, int(steps) + 1, dtype=np.float32)
