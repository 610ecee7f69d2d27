"""Scale Space Diffusion: noise *and* down-sampling (Mukhopadhyay et al. 2026), exact where the reference approximates.

Levels and resize operators: ``L`` levels work at resolutions ``N / 2^ℓ``; step i runs at level ℓ(i) of a
resolution schedule, and a *change step* halves the resolution with a resize operator M (``"mean"``, the 2×2
block mean with ``M Mᵀ = I / 4``, or ``"bilinear"``, the reference code's): both in :mod:`cloudjax.resolution`.

Forward process. ``x_i = c_i M_i x_{i−1} + η_i`` with ``M_i`` one halving at a change step and the identity
otherwise; the marginal is ``q(x_t | x0) = N(α_t M_{1:t} x0, σ_t² Σ_ℓ(t))`` at resolution r(t), where Σ_ℓ is
the noise model's covariance at level ℓ's resolution (white: I; cloud: the same Δ at every level, since a power
law has no scale). The step noise ``η_i ~ N(0, σ_t² Σ_t − c² σ_s² M Σ_s Mᵀ)`` is what keeps the marginal so.

Posterior at a step t → s (x̂0 at r(s), μ_s = α_s x̂0, c = α_t / α_s, ρ = σ_s² / σ_t²). With
``B = Σ_t^{−1/2} M Σ_s^{1/2}`` (the resize in whitened coordinates),

    mean = μ_s + ρ c Σ_s Mᵀ Σ_t⁻¹ (x_t − c M μ_s),
    cov  = σ_s² Σ_s^{1/2} (I − ρ c² BᵀB) Σ_s^{1/2},

and a draw is ``σ_s Σ_s^{1/2} (ξ + Bᵀ g(BBᵀ) B ξ)``, ξ white, ``g(λ) = (√(1 − ρc²λ) − 1) / λ``, because
``(I − ρc² BᵀB)^{1/2} = I + Bᵀ g(BBᵀ) B``. Only g of the *small* matrix BBᵀ is needed:

* ``"mean"`` with Π-diagonal Σ (white, or cloud in its Π-diagonal form): ``M Σ_s Mᵀ`` commutes with one-pixel
  shifts of the coarse grid, so BBᵀ is Π-diagonal too and g(BBᵀ) is applied **exactly** per mode. For white
  noise BBᵀ = I/4: the covariance has two eigenvalues, σ_s²(1 − ρc²/4) on the range of Mᵀ (block-constant
  images) and σ_s² on its complement. For cloud noise BBᵀ has one value per coarse mode (its ratio to 1/4 is
  the downsampled field's power over the coarse noise model's), still exact.
* ``"bilinear"``: BBᵀ is not diagonal (edge handling); g(BBᵀ)v is computed by Lanczos (40 iterations, as the
  reference code) with full re-orthogonalisation — see :func:`cloudjax.resolution.lanczos_apply`.

Where ``ρc²λ > 1`` for some mode (the down-sampled noise has more power there than the coarse noise model) the
forward kernel would need negative variance; the square root is clipped at 0 there, as the reference code clamps ρ.

Cloud noise with ``pad > 1`` (the aperiodic crop) is drawn exactly from the noise model in the forward process
and within a level; at a resolution change the posterior uses its Π-diagonal covariance (``fourier_variance``),
the approximation :func:`cloudjax.gaussian_oracle` makes too. With ``pad = 1`` everything is exact.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cloudjax._config import setting
from cloudjax.diffusion import GaussianDiffusion
from cloudjax.models import FlexiUNet
from cloudjax.noise import WhiteNoise
from cloudjax.noise_settings import NoiseSettings, loss_setting
from cloudjax.process import (
    LossBranches,
    NetworkUpsampling,
    OwnGaussianStep,
    check_noise,
    check_output,
    check_times,
    per_example,
    with_labels,
)
from cloudjax.resolution import (
    RESIZES,
    change_steps,
    cov_power,
    degrade,
    downsample,
    gram_apply,
    level_schedule,
    whitened_down,
    whitened_up,
)
from cloudjax.schedules import time_grid

__all__ = ["ScaleSpaceDiffusion"]


def _g_sqrt(rho_c2):
    """g(λ) = (√(1 − ρc²λ) − 1) / λ, written without the division (and clipped where ρc²λ > 1)."""
    return lambda lam: -rho_c2 / (1.0 + jnp.sqrt(jnp.maximum(1.0 - rho_c2 * lam, 0.0)))


@struct.dataclass
class ScaleSpaceDiffusion(LossBranches, OwnGaussianStep, NetworkUpsampling):
    """Scale Space Diffusion over any noise model and α/σ schedule; a frozen pytree (``noise`` is its only node).

    A :class:`~cloudjax.process.ForwardProcess` of kind ``"scale_space"`` (samplers ``"ddpm"``, the reference code's
    ancestral one, and ``"ddim"``; one stage per level). The network predicts x0 at the resolution of the step's
    output, r(s): ``denoise_fn(x_t, t)`` within a level, ``denoise_fn(x_t, t, upsample=True)`` at a change step
    (input at r(t), output at twice that size).
    The loss is the x0 MSE with ``loss_weighting`` (default min(SNR, 5), the reference code's).

    Attributes:
      image_size: the data's ``H`` (square) or ``(H, W)``, each divisible by 2^(levels − 1).
      levels: L >= 1; L = 1 is :class:`~cloudjax.GaussianDiffusion` with x0 prediction.
      noise: noise model (``WhiteNoise``, ``PowerLawNoise``) sampled at each level's resolution.
      schedule: α/σ schedule (name or object, as for ``GaussianDiffusion``); step i sits at t = (i + 1) / T.
      num_steps: T, the number of discrete steps the resolution schedule is defined on.
      resolution_schedule: ``"convex_decay"`` or ``"equal"``; gamma: γ of convex_decay.
      resize: ``"mean"`` (block mean; exact posterior) or ``"bilinear"`` (antialiased; Lanczos posterior).
      loss_weighting, min_snr_gamma: as for ``GaussianDiffusion`` (prediction is always x0).
      lanczos_iterations: Lanczos steps for the bilinear posterior (the reference code uses 40).
    """

    kind: ClassVar[str] = "scale_space"

    image_size: Any = struct.field(pytree_node=False, default=64)
    levels: int = struct.field(pytree_node=False, default=4)
    noise: Any = struct.field(default_factory=WhiteNoise)
    schedule: Any = struct.field(pytree_node=False, default="linear")
    num_steps: int = struct.field(pytree_node=False, default=1000)
    resolution_schedule: str = struct.field(pytree_node=False, default="convex_decay")
    gamma: float = struct.field(pytree_node=False, default=0.5)
    resize: str = struct.field(pytree_node=False, default="mean")
    loss_weighting: str = struct.field(pytree_node=False, default="min_snr")
    min_snr_gamma: float = struct.field(pytree_node=False, default=5.0)
    lanczos_iterations: int = struct.field(pytree_node=False, default=40)

    def __post_init__(self):
        size = self.image_size
        size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        object.__setattr__(self, "image_size", size)
        level_schedule(self.num_steps, self.levels, self.resolution_schedule, self.gamma)  # checks its arguments
        factor = 2 ** (self.levels - 1)
        if len(size) != 2 or min(size) < 1 or size[0] % factor or size[1] % factor:
            raise ValueError(
                f"levels={self.levels} needs an image size divisible by 2^(levels - 1) = {factor}, got {size}"
            )
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if getattr(self.noise, "channel_cov", None) is not None:
            raise ValueError("ScaleSpaceDiffusion supports noise without channel_cov only")
        if int(self.lanczos_iterations) != self.lanczos_iterations or self.lanczos_iterations < 1:
            raise ValueError(f"lanczos_iterations must be an integer >= 1, got {self.lanczos_iterations}")
        object.__setattr__(self, "schedule", self.gaussian.schedule)  # a name → its schedule object

    # -- the resolution schedule -------------------------------------------------------------------------

    @property
    def gaussian(self) -> GaussianDiffusion:
        """The Gaussian process of one level (x0 prediction): α/σ, loss weights and norms."""
        return GaussianDiffusion(self.noise, self.schedule, "x0", self.loss_weighting, self.min_snr_gamma)

    @property
    def step_levels(self) -> np.ndarray:
        """``(T,)`` level of each discrete step."""
        return level_schedule(self.num_steps, self.levels, self.resolution_schedule, self.gamma)

    @property
    def change_times(self) -> np.ndarray:
        """Continuous times ``(c + 1) / T`` of the change steps c, increasing, float32."""
        return ((change_steps(self.step_levels) + 1) / self.num_steps).astype(np.float32)

    def step_index(self, t) -> np.ndarray:
        """The discrete step i of continuous times t (``t ∈ ((i)/T, (i + 1)/T]``; t = 0 → step 0), host-side."""
        i = np.ceil(np.asarray(t, np.float64) * self.num_steps - 1e-3).astype(np.int64) - 1
        return np.clip(i, 0, self.num_steps - 1)

    def level(self, t) -> np.ndarray:
        """The level ℓ(t) of the state x_t (host-side, t of any shape)."""
        return self.step_levels[self.step_index(t)]

    def size_at(self, level: int) -> tuple[int, int]:
        """``(H, W)`` at a level."""
        return self.image_size[0] >> int(level), self.image_size[1] >> int(level)

    def resolution(self, t) -> tuple[int, int]:
        """``(H, W)`` of x_t for a scalar time t in [0, 1]."""
        return self.size_at(int(self.level(float(t))))

    def is_change(self, t) -> np.ndarray:
        """Whether t is the time of a change step (the network's output is one level finer than its input)."""
        return np.isin(self.step_index(t), change_steps(self.step_levels)) & (np.asarray(t) > 0)

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α_t, σ_t) for t in [0, 1]."""
        return self.schedule.alpha_sigma(t)

    def time_grid(self, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> np.ndarray:
        """``(steps + 1,)`` decreasing times: uniform, with the nearest interior time moved onto each change time
        in (t_end, t_start) so every resolution change is a step of its own (step skipping keeps them); the same
        NFE as the uniform grid. ``ValueError`` if ``steps`` is too small to hold them all."""
        ts = time_grid(steps, t_start, t_end).astype(np.float64)
        changes = [c for c in self.change_times if t_end < c < t_start]
        if len(changes) > steps - 1:
            raise ValueError(f"steps must be >= {len(changes) + 1} to keep the {len(changes)} resolution changes")
        free = list(range(1, steps))
        for c in changes:
            j = min(free, key=lambda i: abs(ts[i] - c))
            free.remove(j)
            ts[j] = c
        ts[1:-1] = np.sort(ts[1:-1])[::-1]
        return ts.astype(np.float32)

    # -- the forward process -----------------------------------------------------------------------------

    def q_sample(self, key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, noise=None, level: int | None = None):
        """``x_t = α_t M_{1:ℓ} x0 + σ_t ε`` at level ℓ = ``level`` (default ℓ(t); t must be concrete then and
        of one level); ε from the noise model at that resolution (or ``noise``)."""
        mean = self.mean(x0, t, level)
        if noise is None:
            noise = self.noise.sample(key, mean.shape)
        check_noise(noise, mean)
        return mean + self.alpha_sigma(per_example(t, mean))[1] * noise

    def mean(self, x0: jnp.ndarray, t: jnp.ndarray, level: int | None = None) -> jnp.ndarray:
        """``E[x_t | x0] = α_t M_{1:ℓ} x0`` at resolution r(t), level ℓ = ``level`` (default ℓ(t); t must be
        concrete then and of one level), for x0 ``(B, H, W, C)`` and t ``(B,)`` (or a scalar) in [0, 1]."""
        check_times(t)
        x0 = jnp.asarray(x0, jnp.float32)
        if level is None:
            levels = np.unique(self.level(np.asarray(t)))
            if len(levels) != 1:
                raise ValueError(f"t spans levels {levels.tolist()}; a batch must have one resolution")
            level = int(levels[0])
        return self.alpha_sigma(per_example(t, x0))[0] * degrade(x0, level, self.resize)

    def _branches(self) -> tuple[list[tuple[float, float, int, bool]], np.ndarray]:
        """The loss's branches ``(lo, hi, level, upsample)`` — each level's non-change steps (t ∈ (lo, hi]), then
        each change step — and the ``(T,)`` branch of every discrete step."""
        T, levels, changes = self.num_steps, self.step_levels, change_steps(self.step_levels)
        branches, branch_of_step = [], np.empty(T, np.int64)
        for level in range(self.levels):
            steps = np.flatnonzero((levels == level) & ~np.isin(np.arange(T), changes))
            branch_of_step[steps] = len(branches)
            branches.append((steps[0] / T, (steps[-1] + 1) / T, level, False))
        for c in changes:
            branch_of_step[c] = len(branches)
            branches.append((c / T, (c + 1) / T, int(levels[c]), True))
        return branches, branch_of_step

    @property
    def loss_branches(self) -> np.ndarray:
        """Host-side probability of each loss branch (its share of the T steps), for ``process.loss_branch``."""
        _, branch_of_step = self._branches()
        return np.bincount(branch_of_step) / self.num_steps

    def _level_error(self, apply_fn, x0, v, eps_key, lo: float, hi: float, level: int, upsample: bool):
        """Weighted x0 error of one batch in one branch, from v ~ U[0, 1): t = lo + (hi − lo) v at a change step,
        else stratified over (lo, hi], ``t_b = lo + (hi − lo)((v + b/B) mod 1)``."""
        B = x0.shape[0]
        if upsample:
            t = jnp.full((B,), lo + (hi - lo) * v, jnp.float32)
        else:
            t = lo + (hi - lo) * jnp.mod(v + jnp.arange(B, dtype=jnp.float32) / B, 1.0)
        clean = degrade(x0, level, self.resize)
        eps = self.noise.sample(eps_key, clean.shape)
        x_t = self.q_sample(None, x0, t, noise=eps, level=level)
        target = degrade(x0, level - 1, self.resize) if upsample else clean
        out = check_output(apply_fn(x_t, t, upsample=True) if upsample else apply_fn(x_t, t), target.shape, "apply_fn")
        g = self.gaussian
        return jnp.mean(g.time_weight(t) * g.squared_error(out - target))

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jnp.ndarray, labels=None, branch=None) -> jnp.ndarray:
        """Scalar loss for x0 ``(B, H, W, C)``, one resolution per batch (the reference code's batches).

        One u ~ U(0, 1) picks the step; at a change step the whole batch uses t = u, otherwise t is stratified
        over the non-change steps of u's level. Each t is U(0, 1) marginally. Without ``branch`` one program holds
        every branch (``lax.switch``, only the drawn one runs); with ``branch`` (an index into
        :attr:`loss_branches`, drawn on the host by the train step) u is drawn inside that branch's steps — the same
        distribution, one program per branch. With L = 1 this is ``GaussianDiffusion(prediction="x0").loss`` exactly.
        """
        x0 = jnp.asarray(x0, jnp.float32)
        if x0.ndim != 4 or x0.shape[1:3] != self.image_size:
            raise ValueError(f"x0 must be (batch, {self.image_size[0]}, {self.image_size[1]}, C), got {x0.shape}")
        key_t, key_eps = jax.random.split(key)
        apply_fn = with_labels(apply_fn, labels, x0.shape[0])
        u = jax.random.uniform(key_t, (), jnp.float32)
        branches, branch_of_step = self._branches()
        if branch is not None:
            return self._level_error(apply_fn, x0, u, key_eps, *branches[branch])
        fns = [
            lambda u, b=b: self._level_error(apply_fn, x0, (u - b[0]) / (b[1] - b[0]), key_eps, *b) for b in branches
        ]
        if len(fns) == 1:
            return fns[0](u)
        step = jnp.clip(jnp.ceil(u * self.num_steps).astype(jnp.int32) - 1, 0, self.num_steps - 1)
        return jax.lax.switch(jnp.asarray(branch_of_step, jnp.int32)[step], fns, u)

    # -- the sampler's interface (cloudjax.process.ForwardProcess) ---------------------------------------------

    def stages(self, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> tuple[np.ndarray, ...]:
        """:meth:`time_grid` cut into one stage per level, coarsest first; t_start must lie in the last level."""
        if self.level(t_start) != self.levels - 1:
            raise ValueError(f"t_start must be above the last resolution change {self.change_times[-1]:.4f}")
        ts = self.time_grid(steps, t_start, t_end)
        return tuple(np.split(ts, np.flatnonzero(np.diff(self.level(ts))) + 1))

    def state_shape(self, shape: tuple[int, ...], stage: int) -> tuple[int, ...]:
        """``(B, h, w, C)`` of stage ``stage`` (level L − 1 − stage)."""
        return (shape[0], *self.size_at(self.levels - 1 - stage), shape[-1])

    def coefficients(self, ts: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(α, σ) at each time."""
        return self.alpha_sigma(ts)

    def prior(self, key: jax.Array, shape, at_start, init: jnp.ndarray | None = None) -> jnp.ndarray:
        """``σ_start ε`` at the coarsest resolution, ε = ``init`` or a noise-model draw (the data part α M x0 has
        mean 0 for normalised data and is dropped, as for GaussianDiffusion)."""
        if tuple(shape[1:3]) != self.image_size:
            raise ValueError(f"shape {tuple(shape)} does not match the process's image size {self.image_size}")
        coarse = self.state_shape(shape, 0)
        if init is None:
            return at_start[1] * self.noise.sample(key, coarse)
        if jnp.shape(init) != coarse:
            raise ValueError(f"init_noise must have the coarsest level's shape {coarse}, got {jnp.shape(init)}")
        return at_start[1] * init

    def predict(self, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(x̂0, ε̂): the output is x̂0 (at r(s)); ``ε̂ = (x_t − α_t M x̂0) / σ_t`` at r(t)."""
        alpha, sigma = (v[:, None, None, None] for v in self.alpha_sigma(t))
        seen = downsample(out, self.resize) if out.shape != x_t.shape else out
        return out, (x_t - alpha * seen) / sigma

    def output(self, x: jnp.ndarray, x0: jnp.ndarray, at_end) -> jnp.ndarray:
        """x̂0 at the last time, or the state itself where σ = 0 there."""
        return jnp.where(at_end[1] > 0, x0, x)

    def gaussian_step(self, step, key, eta, stochasticity):
        """The ``"ddpm"``/``"ddim"`` update at a resolution change (the state's shape changes), else None (the
        Gaussian rule applies within a level). η = 1 (ddpm): a draw from the posterior; otherwise the DDIM-type
        step (:meth:`change_ddim`); the author's stochasticity does not apply here."""
        if step.shape == step.x.shape:
            return None
        xi = jax.random.normal(key, step.shape, jnp.float32)
        args = (step.x, step.x0, step.at_t, step.at_s, xi)
        return jax.lax.cond(eta >= 1.0, lambda a: self.change_posterior(*a), lambda a: self.change_ddim(*a), args)

    # -- the reverse process at a resolution change --------------------------------------------------------

    def _whitened(self) -> tuple[Callable, ...]:
        """``(Σ^p ·, B, Bᵀ, (w, fn) ↦ fn(BBᵀ) w)`` of this noise and resize (:mod:`cloudjax.resolution`)."""
        down, up = (functools.partial(f, self.noise, self.resize) for f in (whitened_down, whitened_up))
        gram = functools.partial(gram_apply, self.noise, self.resize, self.lanczos_iterations)
        return functools.partial(cov_power, self.noise), down, up, gram

    def change_posterior(self, x_t, x0, at_t, at_s, xi) -> jnp.ndarray:
        """A draw from q(x_s | x_t, x0) across one halving: x_t ``(B, h, w, C)`` at r(t), x0 and the white ξ
        ``(B, 2h, 2w, C)`` at r(s); ξ = 0 gives the mean. at_t, at_s: (α, σ) at t and s (module docstring)."""
        (a_t, s_t), (a_s, s_s) = at_t, at_s
        c, rho = a_t / a_s, s_s**2 / s_t**2
        mu = a_s * x0
        resid = x_t - c * downsample(mu, self.resize)
        S, B, Bt, gram = self._whitened()
        mean = mu + rho * c * S(Bt(S(resid, -0.5)), 0.5)
        return mean + s_s * S(xi + Bt(gram(B(xi), _g_sqrt(rho * c**2))), 0.5)

    def change_ddim(self, x_t, x0, at_t, at_s, xi) -> jnp.ndarray:
        """The deterministic (DDIM-type) step across one halving: ``x_s = α_s x̂0 + σ_s ε_s`` with
        ``ε_s = Σ_s^{1/2}(Bᵀ(BBᵀ)^{−1/2} ξ_t + (I − Bᵀ(BBᵀ)⁻¹B) ξ)``, ξ_t = Σ_t^{−1/2} ε̂_t the whitened predicted
        noise. The part of ε_s that x_t determines is carried deterministically; the complement (the new
        detail) is fresh noise ξ — a deterministic map cannot create those degrees of freedom. If ε̂_t is
        N(0, Σ_t), ε_s is exactly N(0, Σ_s)."""
        (a_t, s_t), (a_s, s_s) = at_t, at_s
        eps_t = (x_t - a_t * downsample(x0, self.resize)) / s_t
        S, B, Bt, gram = self._whitened()
        carried = Bt(gram(S(eps_t, -0.5), jax.lax.rsqrt))
        fresh = xi - Bt(gram(B(xi), lambda lam: 1.0 / lam))
        return a_s * x0 + s_s * S(carried + fresh, 0.5)


@dataclasses.dataclass(frozen=True)
class ScaleSpaceSpec(NoiseSettings):
    """The spec of :class:`ScaleSpaceDiffusion`: the noise settings and ``levels`` (None: 4, filled by ``resolve``);
    a Flexi-UNet predicting x0 with the reference code's min-SNR loss; DDIM with 50 steps."""

    kind = "scale_space"

    loss_weighting: str = loss_setting("min_snr")
    levels: int | None = setting(None, "resolution levels (default 4)")
    num_steps: int = setting(1000, "discrete steps T the resolution schedule is defined on")
    resize: str = setting("mean", "down-sampling: block mean (exact posterior) or bilinear (Lanczos)", RESIZES)

    def resolve(self, image_size: int, channels: int, unet) -> ScaleSpaceSpec:
        depth = len(unet.channel_mults)
        if self.levels is None and depth < 4:
            fits = f"pass --levels 1 … {depth}"
            raise ValueError(f"the default levels=4 does not fit a network of {depth} levels; {fits}")
        levels = 4 if self.levels is None else self.levels
        if not 1 <= levels <= depth:
            raise ValueError(f"levels must be in 1 … {depth} (the network's levels), got {levels}")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"levels={levels} needs an image size divisible by {2 ** (levels - 1)}")
        level_schedule(self.num_steps, levels)  # checks num_steps
        self._check_grey_cloud(channels)
        return dataclasses.replace(self, levels=levels)

    def network(self, unet, image_size: int, rngs):
        return FlexiUNet(unet, image_size, rngs=rngs)

    def build(self, measurements: Mapping, image_shape: tuple[int, int, int]) -> ScaleSpaceDiffusion:
        noise = self.noise_model(measurements, image_shape[-1])
        schedule = self.schedule_model(measurements)
        settings = dict(num_steps=self.num_steps, resize=self.resize, loss_weighting=self.loss_weighting)
        return ScaleSpaceDiffusion(image_shape[:2], self.levels, noise, schedule, **settings)
