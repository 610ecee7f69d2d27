"""Training: a sharded, jitted train step, EMA, mixed precision, Orbax checkpoints, exact resume, preemption.

The step is a pure function ``(state, batch, key) → (state, metrics)`` compiled once with ``jax.jit``: the
batch is sharded over a ``"data"`` mesh axis spanning every device of every process, the :class:`TrainState`
is replicated, and XLA inserts the gradient all-reduce (what ``pmap`` did, in today's form). The noise is
drawn inside the step by ``diffusion.loss`` on the device. Gradients may be accumulated over micro-batches
(``lax.scan``); the update is AdamW (warm-up + cosine/linear decay) after global-norm clipping, then the EMA
``ema ← ema + (1 − d)(params − ema)``.

Data are normalised once per run by a per-channel scalar mean and std measured on a fixed, seeded sample
(the same on every process), so the model sees unit-variance images; for ``noise="cloud"`` with ``delta=None``
Δ is fitted on that sample (:func:`cloudjax.stats.fit_power_law`). Both are stored in ``workdir/run.json``.

A run lives in ``workdir``: ``run.json`` (config, normaliser, Δ), ``checkpoints/<step>`` (Orbax: params,
optimizer state, EMA, step, RNG, data position), ``metrics.jsonl``, ``samples/<step>.png`` and TensorBoard
events when tensorboardX is installed. :func:`train` resumes from the newest complete checkpoint by itself;
a resumed run gives the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses
from flax import nnx, struct
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax import registry
from cloudjax._files import atomic_write, workdir_lock
from cloudjax.blurring import BlurringDiffusion, default_blur_sigma_max
from cloudjax.cold import ColdDiffusion, MeanPrior
from cloudjax.compile_cache import enable_compile_cache
from cloudjax.diffusion import GaussianDiffusion
from cloudjax.models import FlexiUNet, UNet, flexi_unet, init, preset
from cloudjax.noise import PowerLawNoise, WhiteNoise
from cloudjax.process import loss_branch
from cloudjax.samplers import sample
from cloudjax.scale_space import ScaleSpaceDiffusion
from cloudjax.schedules import CalibratedSchedule, calibrated_schedule, get_schedule

__all__ = [
    "TrainConfig",
    "TrainState",
    "Run",
    "TrainingDiverged",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "init_state",
    "abstract_state",
    "train",
    "check_workdir",
    "load_run",
    "generate",
    "restore",
    "RESTORATIONS",
    "initialize_distributed",
]

# Fields that may change when a run is resumed; any other difference is a different run.
_RESUMABLE_FIELDS = ("steps", "checkpoint_every", "keep", "sample_every", "log_every")
# The blur of blurring runs whose run.json predates these fields (periodic, σ_B = 20 sin(πt/2) px).
_OLDER_BLURRING = dict(blur_sigma_max=20.0, blur_basis="fourier", blur_schedule="sin")
# The largest cold T: a degradation works on (batch, T, H, W) arrays (the mask) or T + 1 transfer tables (the
# blur), so T = 1,000 keeps a batch of 64 at 32 px under 300 MB; the Cold Diffusion paper's largest T is 300.
MAX_DEGRADATION_STEPS = 1000
# The values older versions stored for settings that did not apply to their run (a Gaussian run's
# degradation "blur", ...): dropped when their run.json is read, so those runs keep loading (see ``Run.from_json``).
_FORMER_DEFAULTS = dict(
    noise="white",
    schedule="cosine",
    prediction="eps",
    degradation="blur",
    blur_routine="constant",
    blur_padding="circular",
    mask_initial=11.0,
    generation=False,
    gmm_components=1,
)
_TYPES = {"int": numbers.Integral, "float": numbers.Real, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable; the CLI maps flags onto it).

    data, data_dir, drop_letterbox, image_size, channels: the dataset (``cloudjax.data.open_source``).
    model: UNet preset (``tiny``, ``small``, ``base``); dropout: None keeps the preset's.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    batch_size: global batch per step; grad_accum: micro-batches it is split into (divides batch_size).
    steps: total steps to reach. lr: peak learning rate after ``warmup_steps`` linear warm-up, then
    ``decay`` ("cosine", "linear" or "constant") to ``lr · final_lr_ratio`` at ``decay_steps``, then constant.
    ``decay_steps`` is part of the run: None becomes ``steps`` when the run is created and is stored in
    ``run.json``, so extending a run with a larger ``steps`` continues at the final lr (the lr is a function of
    the step alone) and ``--steps 10`` then ``--steps 20`` equals one run of 20 steps with ``decay_steps=10``.
    weight_decay: AdamW's; clip_norm: global gradient-norm clip; ema_decay: d of the EMA.
    noise: "white" (default) or "cloud"; delta: cloud Δ (None: fitted on the data). schedule: "cosine" (default),
    "offset_cosine", "linear" or "calibrated" (cosine with the SNR ratio measured on the data, see
    :func:`cloudjax.calibrated_schedule`); prediction, loss_weighting: see :class:`cloudjax.GaussianDiffusion`
    (None: "eps" and "pixel"; processes other than "gaussian" predict "x0"; cold's loss is "l1" or "l2").
    process: "gaussian" (noise, schedule, …) or "cold" (:class:`cloudjax.ColdDiffusion` over ``degradation``:
    "blur" (default), "mask", "downsample" or "decolor", with T = ``degradation_steps`` <= 1,000). Cold settings
    left None take the
    the reference code's MNIST/CIFAR values scaled to ``image_size`` (:func:`_cold_defaults`): blur T = 20 steps of a
    constant σ = 7·S/28 px Gaussian, kernel ≈ 11·S/28 (odd), ``blur_routine`` "constant", ``blur_padding``
    "circular"; mask T = 50, σ_i = mask_std·(i + mask_initial) with mask_std = 0.1·S/32, mask_initial 11;
    downsample T = log2(S/4); decolor T = 20. generation: blur only (default False); the last step goes to the
    per-channel mean and a ``gmm_components`` (default 1) Gaussian mixture of the data's means is stored for
    sampling new images.
    process: "gaussian", "scale_space" (:class:`cloudjax.ScaleSpaceDiffusion` with ``levels`` levels, default 4,
    on a :class:`~cloudjax.models.FlexiUNet`) or "blurring" (:class:`cloudjax.BlurringDiffusion`); both predict
    x0 and take loss_weighting "pixel" as the reference code's "min_snr".
    blur_sigma_max, blur_basis, blur_schedule: "blurring" only (see :class:`cloudjax.BlurringDiffusion`); None:
    20·S/32 px (the paper's 20 at 32 px), "dct" for white noise and "fourier" for cloud, "sin2".
    Settings left None that apply to the run are filled with their defaults when the config is made (and so
    stored in run.json); a setting given where it does not apply (``blur_std`` on a mask or Gaussian run,
    ``delta`` with white noise, ``levels`` outside scale space, ...) is refused.
    checkpoint_every, keep: checkpoint interval and how many to keep. sample_every: EMA sample grid
    interval (0: never). log_every: metrics interval. normalizer_examples: images measured for the
    normaliser and the Δ fit. seed: parameters, data order, noise.
    """

    data: str = "patches"
    data_dir: str | None = None
    drop_letterbox: bool = False
    image_size: int = 32
    channels: int = 1
    model: str = "small"
    dropout: float | None = None
    dtype: str = "float32"
    batch_size: int = 64
    grad_accum: int = 1
    steps: int = 10_000
    lr: float = 2e-4
    warmup_steps: int = 500
    decay: str = "cosine"
    decay_steps: int | None = None
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    noise: str | None = None
    delta: float | None = None
    schedule: str | None = None
    prediction: str | None = None
    loss_weighting: str | None = None
    process: str = "gaussian"
    degradation: str | None = None
    degradation_steps: int | None = None
    blur_routine: str | None = None
    blur_std: float | None = None
    blur_kernel: int | None = None
    blur_padding: str | None = None
    mask_std: float | None = None
    mask_initial: float | None = None
    generation: bool | None = None
    gmm_components: int | None = None
    levels: int | None = None
    blur_sigma_max: float | None = None
    blur_basis: str | None = None
    blur_schedule: str | None = None
    checkpoint_every: int = 1000
    keep: int = 3
    sample_every: int = 0
    log_every: int = 50
    normalizer_examples: int = 1024
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):  # run.json may hold anything: each field is checked like its flag
            value, (kind, _, optional) = getattr(self, f.name), f.type.partition(" | ")
            if value is None and optional:
                continue
            if not isinstance(value, _TYPES[kind]) or (isinstance(value, bool) and kind != "bool"):
                raise ValueError(f"{f.name} must be of type {f.type}, got {value!r}")
        positive = ("image_size", "channels", "batch_size", "grad_accum", "steps", "checkpoint_every", "keep")
        for name in positive + ("log_every", "normalizer_examples"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size}")
        if self.decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got {self.decay!r}")
        if not (self.lr > 0 and 0 <= self.final_lr_ratio <= 1 and 0 <= self.ema_decay < 1 and self.clip_norm > 0):
            raise ValueError("lr and clip_norm must be > 0, final_lr_ratio in [0, 1], ema_decay in [0, 1)")
        if self.warmup_steps < 0 or self.sample_every < 0:
            raise ValueError("warmup_steps and sample_every must be >= 0")
        for f in dataclasses.fields(self):  # NaN and inf pass every comparison above
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.decay_steps is not None and (int(self.decay_steps) != self.decay_steps or self.decay_steps < 1):
            raise ValueError(f"decay_steps must be a positive integer or None, got {self.decay_steps}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed}")
        self.unet_config()  # validates model, dtype, dropout and the image size
        if self.image_size % self.unet_config().downsampling:
            raise ValueError(f"image_size must be divisible by {self.unet_config().downsampling} for {self.model}")
        self._check_process()

    def network(self, rngs: nnx.Rngs) -> nnx.Module:
        """The network: a UNet, or a Flexi-UNet for scale space."""
        if self.process == "scale_space":
            return FlexiUNet(self.unet_config(), self.image_size, rngs=rngs)
        return UNet(self.unet_config(), rngs=rngs)

    def _check_process(self) -> None:
        """Check the process's settings: fill those left None that apply to this run with their defaults (so
        run.json stores them) and refuse those given that do not apply."""
        registry.check("process", self.process, registry.PROCESSES)
        cold, gaussian, scale_space = (self.process == p for p in ("cold", "gaussian", "scale_space"))
        if scale_space and self.levels is None and len(self.unet_config().channel_mults) < 4:
            depth = len(self.unet_config().channel_mults)
            raise ValueError(f"the default levels=4 does not fit the {self.model} network; pass --levels 1 … {depth}")
        self._fill(
            prediction="eps" if gaussian else "x0",
            loss_weighting="l1" if cold else "pixel",
            **(dict(degradation="blur") if cold else dict(noise="white", schedule="cosine")),
            **(dict(levels=4) if scale_space else {}),
        )
        if self.process == "blurring":
            white = self.noise == "white"
            sigma_max = default_blur_sigma_max(self.image_size, self.image_size)
            self._fill(blur_sigma_max=sigma_max, blur_basis="dct" if white else "fourier", blur_schedule="sin2")
        if cold:
            registry.check("degradation", self.degradation, registry.DEGRADATIONS)
            self._fill(**_cold_defaults(self.degradation, self.image_size))
            if self.degradation == "blur":
                self._fill(blur_routine="constant", blur_padding="circular", generation=False)
            if self.degradation == "mask":
                self._fill(mask_initial=11.0)
            if self.generation:
                self._fill(gmm_components=1)
        if not cold:  # names first: the applicability of other settings depends on them
            registry.check("noise", self.noise, registry.NOISES)
            registry.check("schedule", self.schedule, registry.SCHEDULES)
        for name, applies in self._applicable().items():
            if not applies and getattr(self, name) is not None:
                raise ValueError(f"{name} does not apply to {self._kind()}")
        registry.check("prediction", self.prediction, registry.PREDICTIONS if gaussian else ("x0",))
        registry.check("loss_weighting", self.loss_weighting, registry.LOSSES[self.process])
        if not cold:
            if self.delta is not None and not self.delta >= 0:
                raise ValueError(f"delta must be a finite number >= 0 or None, got {self.delta}")
        if scale_space:
            depth = len(self.unet_config().channel_mults)
            if not 1 <= self.levels <= depth:
                raise ValueError(
                    f"levels must be in 1 … {depth} (the {self.model} network's levels), got {self.levels}"
                )
            if self.image_size % 2 ** (self.levels - 1):
                raise ValueError(f"levels={self.levels} needs an image size divisible by {2 ** (self.levels - 1)}")
        if cold:
            self._check_cold()
        if self.process == "blurring":
            self._check_blurring()

    def _check_cold(self) -> None:
        """The cold settings, each named (before anything of size T is made)."""
        T = self.degradation_steps
        if not 1 <= T <= MAX_DEGRADATION_STEPS:
            raise ValueError(f"degradation_steps must be in 1 … {MAX_DEGRADATION_STEPS}, got {T}")
        positive = dict(blur_std=self.blur_std, blur_kernel=self.blur_kernel, mask_std=self.mask_std)
        positive.update(mask_initial=self.mask_initial, gmm_components=self.gmm_components)
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.degradation == "blur":
            registry.check("blur_routine", self.blur_routine, registry.BLUR_ROUTINES)
        if self.degradation == "decolor" and self.channels == 1:
            raise ValueError("degradation 'decolor' needs channels=3 (grey images have no colour to fade)")
        if self.sample_every and not self.generation:
            raise ValueError("sample_every needs a process that generates (gaussian, or cold with generation)")
        self.cold_diffusion()  # validates the degradation's settings against the image size

    def _fill(self, **defaults) -> None:
        """Set the fields among ``defaults`` that are None."""
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def _check_blurring(self) -> None:
        """The blurring settings (filled with their defaults by :meth:`_check_process`)."""
        registry.check("blur_basis", self.blur_basis, registry.BLUR_BASES)
        registry.check("blur_schedule", self.blur_schedule, registry.BLUR_SCHEDULES)
        if self.blur_basis == "dct" and self.noise != "white":
            raise ValueError("blur_basis 'dct' needs white noise; cloud noise is diagonal in the Fourier basis only")
        if not self.blur_sigma_max >= 0:
            raise ValueError(f"blur_sigma_max must be >= 0, got {self.blur_sigma_max}")

    def _applicable(self) -> dict[str, bool]:
        """Each setting that applies to some runs only → whether it applies to this one."""
        cold = self.process == "cold"
        blur, mask = cold and self.degradation == "blur", cold and self.degradation == "mask"
        return dict(
            noise=not cold,
            schedule=not cold,
            delta=self.noise == "cloud",
            levels=self.process == "scale_space",
            blur_sigma_max=self.process == "blurring",
            blur_basis=self.process == "blurring",
            blur_schedule=self.process == "blurring",
            degradation=cold,
            degradation_steps=cold,
            blur_routine=blur,
            blur_std=blur,
            blur_kernel=blur,
            blur_padding=blur,
            generation=blur,
            gmm_components=blur and bool(self.generation),
            mask_std=mask,
            mask_initial=mask,
        )

    def _kind(self) -> str:
        """The run's kind in words, for errors."""
        if self.process != "cold":
            return f"process {self.process!r} with noise {self.noise!r}"
        without = " without generation" if self.degradation == "blur" and not self.generation else ""
        return f"process 'cold' with degradation {self.degradation!r}{without}"

    def cold_diffusion(self, mean_prior=None):
        """The :class:`~cloudjax.ColdDiffusion` of a cold config (``mean_prior`` for generation)."""
        from cloudjax import degradations

        T, size = self.degradation_steps, self.image_size
        if self.degradation == "blur":
            D = degradations.GaussianBlur.from_routine(
                self.blur_routine, T, self.blur_std, self.blur_kernel, self.blur_padding, final_mean=self.generation
            )
            if self.blur_kernel > size:
                raise ValueError(f"blur_kernel {self.blur_kernel} is larger than the image ({size} px)")
        elif self.degradation == "mask":
            D = degradations.GaussianMask.linear(T, self.mask_std, self.mask_initial)
        elif self.degradation == "downsample":
            D = degradations.Downsample(T)
            if size % 2**T:
                raise ValueError(f"degradation_steps {T} halves {size} px below one pixel or unevenly")
        else:
            D = degradations.Decolorize(T)
        return ColdDiffusion(D, T, self.loss_weighting, mean_prior)

    def unet_config(self):
        overrides = dict(channels=self.channels, dtype=self.dtype)
        if self.dropout is not None:
            overrides["dropout"] = self.dropout
        return preset(self.model, **overrides)


def _cold_defaults(degradation: str, size: int) -> dict:
    """The reference code's MNIST/CIFAR settings (28–32 px) scaled to ``size`` px images."""
    if degradation == "blur":
        kernel = max(3, int(11 * size / 28) - (int(11 * size / 28) + 1) % 2)  # odd, ≈ 11 at 28 px
        return dict(
            degradation_steps=20, blur_std=round(7 * size / 28, 3), blur_kernel=min(kernel, size - 1 + size % 2)
        )
    if degradation == "mask":
        return dict(degradation_steps=50, mask_std=round(0.1 * size / 32, 4))
    if degradation == "downsample":
        return dict(degradation_steps=max(1, int(math.log2(size / 4))))
    return dict(degradation_steps=20)


@struct.dataclass
class TrainState:
    """Replicated training state, a pytree. ``rng`` is raw key data (uint32) so it checkpoints as an array."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array
    rng: jax.Array


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over every device of every process (GSPMD-style automatic sharding)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None, process_id=None):
    """``jax.distributed.initialize`` when several processes are configured: by arguments, or by the
    ``CLOUDJAX_DISTRIBUTED=1`` environment variable (then JAX detects the cluster: TPU pods, SLURM, ...)."""
    if coordinator is not None or num_processes not in (None, 1):
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif os.environ.get("CLOUDJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warm-up and cosine / linear / no decay."""
    horizon = max(config.decay_steps or config.steps, config.warmup_steps + 1)
    end = config.lr * config.final_lr_ratio
    warmup = optax.linear_schedule(0.0, config.lr, max(config.warmup_steps, 1))
    if config.decay == "cosine":
        after = optax.cosine_decay_schedule(config.lr, horizon - config.warmup_steps, alpha=config.final_lr_ratio)
    elif config.decay == "linear":
        after = optax.linear_schedule(config.lr, end, horizon - config.warmup_steps)
    else:
        after = optax.constant_schedule(config.lr)
    lr = optax.join_schedules([warmup, after], [config.warmup_steps]) if config.warmup_steps else after
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(lr, weight_decay=config.weight_decay),
    )


def _graphdef(config: TrainConfig) -> nnx.GraphDef:
    return nnx.graphdef(nnx.eval_shape(lambda: config.network(nnx.Rngs(0))))


def _new_state(config: TrainConfig, params, rng: jax.Array) -> TrainState:
    return TrainState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        ema=jax.tree.map(jnp.copy, params),
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )


def init_state(config: TrainConfig, sharding: NamedSharding | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """``(graphdef, state)`` of a fresh run: UNet parameters from ``seed``, optimizer state, EMA = params."""
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    if config.process == "scale_space":
        graphdef, params = flexi_unet.init(config.unet_config(), config.image_size, init_key, out_shardings=sharding)
    else:
        graphdef, params = init(config.unet_config(), init_key, out_shardings=sharding)
    return graphdef, _new_state_jit(sharding)(config, params, jax.random.key_data(rng))


@functools.lru_cache(maxsize=4)
def _new_state_jit(sharding: NamedSharding | None) -> Callable:
    return jax.jit(_new_state, static_argnums=0, out_shardings=sharding)


def abstract_state(config: TrainConfig, sharding: NamedSharding | None = None) -> TrainState:
    """The state's shapes and dtypes (no allocation), with ``sharding`` on every leaf: a restore target."""
    params = nnx.state(nnx.eval_shape(lambda: config.network(nnx.Rngs(0))))
    rng = jax.random.key_data(jax.random.key(0))
    shapes = jax.eval_shape(lambda p: _new_state(config, p, rng), params)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def make_train_step(
    graphdef: nnx.GraphDef,
    diffusion,
    config: TrainConfig,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """The step ``(state, batch (B, H, W, C), key) → (state, metrics)``; ``state`` is donated.

    ``diffusion`` is any forward process (:class:`cloudjax.process.ForwardProcess`); the step calls its ``loss``.
    A process with loss branches (scale space) gets one jitted program per branch, the branch drawn on the host
    from ``key`` (:func:`cloudjax.process.loss_branch`, so resumes stay exact); any other process one program.

    The batch (already normalised) is split into ``grad_accum`` micro-batches ``batch[i::grad_accum]`` (so each
    stays spread over every device), gradients are averaged over them with a fully unrolled ``lax.scan`` (one
    compiled step; a rolled loop around the convolutions costs XLA:CPU 6–17×); with ``grad_accum = 1`` the batch
    takes one pass. With ``mesh`` the batch is sharded on ``"data"`` and the state replicated.
    """
    optimizer = make_optimizer(config)
    accum = config.grad_accum

    def loss_fn(params, micro, key, branch):
        loss_key, dropout_key = jax.random.split(key)
        model = nnx.merge(graphdef, params)
        apply_fn = lambda x_t, t, **kw: model(x_t, t, dropout_key=dropout_key, **kw)
        return diffusion.loss(apply_fn, loss_key, micro, **({} if branch is None else {"branch": branch}))

    grad_fn = jax.value_and_grad(loss_fn)

    def gradients(params, batch, key, branch):
        """Mean loss and gradient over the batch: one pass when ``accum == 1``, else over the micro-batches."""
        if accum == 1:
            return grad_fn(params, batch, jax.random.fold_in(key, 0), branch)
        micro = batch.reshape(batch.shape[0] // accum, accum, *batch.shape[1:]).swapaxes(0, 1)

        def accumulate(carry, inputs):
            loss_sum, grad_sum = carry
            i, x = inputs
            loss, grads = grad_fn(params, x, jax.random.fold_in(key, i), branch)
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        # unrolled: inside a while loop XLA:CPU leaves the backward convolutions in non-canonical dimension
        # orders that miss its fast (Eigen) kernels, ~6× slower; unrolled, every convolution is canonical.
        carry = (jnp.zeros(()), zeros)
        (loss, grads), _ = jax.lax.scan(accumulate, carry, (jnp.arange(accum), micro), unroll=True)
        return loss / accum, jax.tree.map(lambda g: g / accum, grads)

    def step(state: TrainState, batch: jax.Array, key: jax.Array, branch: int | None = None):
        loss, grads = gradients(state.params, batch, key, branch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = config.ema_decay
        ema = jax.tree.map(lambda e, p: e + (1 - d) * (p - e), state.ema, params)
        new = state.replace(params=params, opt_state=opt_state, ema=ema, step=state.step + 1)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    shardings = {}
    if mesh is not None:
        replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        shardings = dict(in_shardings=(replicated, data, replicated), out_shardings=replicated)
    jitted = jax.jit(step, static_argnums=3, donate_argnums=0, **shardings)  # one program per branch
    weights = getattr(diffusion, "loss_branches", None)
    if weights is None:
        return jitted
    return lambda state, batch, key: jitted(state, batch, key, loss_branch(weights, key))


# ----------------------------------------------------------------------------------------------------------
# Runs: run.json, the diffusion it defines, checkpoints


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``run.json`` holds: the config, the data normaliser (per-channel mean, std), Δ, the channel
    covariance of colour cloud noise, the SNR ratio of the calibrated schedule, and a fingerprint of the data
    (size, image shape, a hash of the normaliser sample) that a resumed run must match."""

    config: TrainConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    delta: float | None = None
    channel_cov: tuple[tuple[float, ...], ...] | None = None
    snr_ratio: float | None = None
    mean_prior: MeanPrior | None = None  # cold generation: the mixture of the data's per-channel means
    data_fingerprint: str | None = None

    @property
    def noise(self):
        return PowerLawNoise(self.delta, channel_cov=self.channel_cov) if self.config.noise == "cloud" else WhiteNoise()

    @property
    def diffusion(self):
        """The run's forward process: GaussianDiffusion, ColdDiffusion, ScaleSpaceDiffusion or BlurringDiffusion."""
        c = self.config
        if c.process == "cold":
            return c.cold_diffusion(self.mean_prior)
        schedule = (
            CalibratedSchedule(get_schedule("cosine"), self.snr_ratio) if c.schedule == "calibrated" else c.schedule
        )
        loss = "min_snr" if c.loss_weighting == "pixel" else c.loss_weighting  # x0 processes: the reference code's loss
        if c.process == "scale_space":
            return ScaleSpaceDiffusion(c.image_size, c.levels, self.noise, schedule, loss_weighting=loss)
        if c.process == "blurring":
            blur = dict(basis=c.blur_basis, blur_schedule=c.blur_schedule, loss_weighting=loss)
            return BlurringDiffusion(self.noise, schedule, c.blur_sigma_max, **blur)
        return GaussianDiffusion(self.noise, schedule, c.prediction, c.loss_weighting)

    def normalize(self, x):
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def denormalize(self, x):
        return x * jnp.asarray(self.std, jnp.float32) + jnp.asarray(self.mean, jnp.float32)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Run:
        """The run of a run.json text, every value checked (:meth:`check`); ``ValueError`` or ``TypeError`` if
        one is wrong. Settings that older versions stored where they did not apply are dropped
        (``_FORMER_DEFAULTS``)."""
        d = json.loads(text)
        if d["config"].get("process") == "blurring":
            d["config"] = {**_OLDER_BLURRING, **d["config"]}
        d["config"] = TrainConfig(**{k: v for k, v in d["config"].items() if _FORMER_DEFAULTS.get(k, ...) != v})
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        if d.get("channel_cov") is not None:
            d["channel_cov"] = tuple(tuple(row) for row in d["channel_cov"])
        if d.get("mean_prior") is not None:
            tuples = lambda v: tuple(map(tuples, v)) if isinstance(v, list) else v
            d["mean_prior"] = MeanPrior(**{k: tuples(v) for k, v in d["mean_prior"].items()})
        return cls(**d).check()

    def check(self) -> Run:
        """This run if what it holds is what a run measures (a hand-edited run.json is refused like a bad flag):
        ``ValueError`` naming the value otherwise."""
        c, C = self.config, self.config.channels
        finite = lambda *v: all(isinstance(x, numbers.Real) and math.isfinite(x) for x in v)
        if not (len(self.mean) == len(self.std) == C and finite(*self.mean, *self.std) and min(self.std) > 0):
            raise ValueError(f"mean and std must be {C} finite numbers each, std > 0, got {self.mean} and {self.std}")
        cloud, calibrated = c.noise == "cloud", c.schedule == "calibrated"
        if (self.delta is not None) != cloud or cloud and not (finite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0 for cloud noise (else null), got {self.delta}")
        cov = np.asarray(self.channel_cov if self.channel_cov is not None else np.eye(C), np.float64)
        if (self.channel_cov is not None) != (cloud and C > 1) or cov.shape != (C, C) or not np.isfinite(cov).all():
            raise ValueError(
                f"channel_cov must be a finite {C}×{C} matrix for colour cloud noise, got {self.channel_cov}"
            )
        if (
            (self.snr_ratio is not None) != calibrated
            or calibrated
            and not (finite(self.snr_ratio) and self.snr_ratio > 0)
        ):
            raise ValueError(f"snr_ratio must be a finite number > 0 for the calibrated schedule, got {self.snr_ratio}")
        if (self.mean_prior is not None) != bool(c.generation):
            raise ValueError("mean_prior must be given for cold generation (and only then)")
        if self.mean_prior is not None:
            p = self.mean_prior
            w, m, L = (np.asarray(a, np.float64) for a in (p.weights, p.means, p.chol))
            K = len(w)
            shapes = (w.shape, m.shape, L.shape) == ((K,), (K, C), (K, C, C))
            if not (shapes and finite(*w, *m.ravel(), *L.ravel(), p.noise) and w.min() >= 0 and p.noise >= 0):
                raise ValueError(
                    "mean_prior must hold finite weights (K,) >= 0, means (K, C), chol (K, C, C) and noise"
                )
            if abs(w.sum() - 1) > 1e-4:
                raise ValueError(f"mean_prior's weights must sum to 1, got {w.sum()}")
        if self.data_fingerprint is not None and not isinstance(self.data_fingerprint, str):
            raise ValueError(f"data_fingerprint must be a string, got {self.data_fingerprint!r}")
        _ = self.diffusion  # building the noise and the process checks the rest
        return self

    @classmethod
    def read(cls, workdir: str | Path) -> Run | None:
        """The run in ``workdir`` (None if it has no run.json); ``ValueError`` naming the file if it is damaged."""
        path = Path(workdir) / "run.json"
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            return cls.from_json(text)
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # cut short, hand-edited, wrong types
            what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ValueError(f"{path} is damaged ({what}); repair it or use a new --workdir") from None


def _cached_train_step(graphdef: nnx.GraphDef, run: Run, mesh: jax.sharding.Mesh) -> Callable:
    """One jitted step per (network, run, mesh) in this process: a resumed run does not compile again, whatever
    its ``steps`` and logging/checkpoint intervals (the step depends on them only through the lr horizon)."""
    config = run.config
    intervals = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _RESUMABLE_FIELDS}
    config = dataclasses.replace(config, **intervals, decay_steps=config.decay_steps or config.steps)
    return _train_step_for(graphdef, dataclasses.replace(run, config=config, data_fingerprint=None), mesh)


@functools.lru_cache(maxsize=4)
def _train_step_for(graphdef: nnx.GraphDef, run: Run, mesh: jax.sharding.Mesh) -> Callable:
    return make_train_step(graphdef, run.diffusion, run.config, mesh)


def _normalizer_sample(config: TrainConfig, source) -> tuple[np.ndarray, str]:
    """The seeded sample of the data that every process reads whole (so all agree), float64 ``(n, H, W, C)``,
    and the data's fingerprint: its size, image shape and a hash of that sample (at 1/255 resolution)."""
    n = min(config.normalizer_examples, source.num_examples)
    idx = np.sort(np.random.default_rng(config.seed).permutation(source.num_examples)[:n])
    x = np.asarray(source.get(idx), np.float64)
    digest = hashlib.sha256(np.round(x * 255).astype(np.uint8).tobytes()).hexdigest()[:16]
    shape = "×".join(map(str, x.shape[1:]))
    return x, f"{source.num_examples} images of {shape}, sample sha256 {digest}"


def _measure(config: TrainConfig, source) -> Run:
    """The normaliser, Δ and channel covariance (cloud noise) and the SNR ratio (calibrated schedule), measured
    on :func:`_normalizer_sample`. ``decay_steps=None`` is resolved to ``steps`` here: the run's lr horizon."""
    x, fingerprint = _normalizer_sample(config, source)
    config = dataclasses.replace(config, decay_steps=config.decay_steps or config.steps)
    mean, std = x.mean(axis=(0, 1, 2)), np.maximum(x.std(axis=(0, 1, 2)), 1e-6)
    run = Run(config, tuple(map(float, mean)), tuple(map(float, std)), data_fingerprint=fingerprint)
    z = run.normalize(x).astype(np.float32)
    if config.noise == "cloud":
        delta = config.delta
        if delta is None:
            from cloudjax.stats import fit_power_law

            try:
                delta = float(fit_power_law(z).delta)
            except ValueError as e:
                raise ValueError(f"cannot fit Δ on the data ({e}); pass --delta") from None
            if not (math.isfinite(delta) and delta >= 0):
                raise ValueError(f"the data's fitted Δ is {delta:.3g}, cloud noise needs Δ >= 0; pass --delta")
        cov = None
        if config.channels > 1:
            cov = tuple(tuple(map(float, row)) for row in np.cov(z.reshape(-1, config.channels), rowvar=False))
        run = dataclasses.replace(run, delta=delta, channel_cov=cov)
    if config.schedule == "calibrated":
        from cloudjax.stats import dataset_stats

        data_variance = dataset_stats([z], window=None).fourier_variance
        noise_variance = run.noise.fourier_variance(config.image_size, config.image_size)
        run = dataclasses.replace(run, snr_ratio=calibrated_schedule(data_variance, noise_variance).snr_ratio)
    if config.process == "cold" and config.generation:
        # the reference code's 0.002 "broken symmetry" noise on [−1, 1] images, in normalised units (data are in [0, 1])
        noise = 0.001 / float(np.mean(std))
        prior = MeanPrior.fit(z, config.gmm_components, noise=noise, seed=config.seed)
        run = dataclasses.replace(run, mean_prior=prior)
    return run


def _manager(workdir: Path, config: TrainConfig, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's checkpoints; the writer (which holds the workdir lock) first removes what killed saves left."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, save_interval_steps=config.checkpoint_every)
        if jax.process_index() == 0 and (workdir / "checkpoints").exists():
            for stale in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"):
                stale.rmtree()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # a read-only manager warns that it is read-only
    try:
        return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)
    finally:
        absl.setLevel(level)


def _replica(leaf):
    """This process's copy of a replicated leaf (a device array's first addressable shard; host data as it is)."""
    return leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf


def _host_copy(state: TrainState) -> TrainState:
    """This process's replica of the (replicated) state as NumPy copies: what a checkpoint writes. Saving host
    arrays writes each leaf once from the primary process; Orbax would otherwise cut every replicated device
    array into one slice per replica (one dispatch each: ~20× slower with 8 CPU devices)."""
    return jax.tree.map(lambda x: np.array(_replica(x)), state)


def _digest(state: TrainState) -> tuple[str, bool]:
    """(sha256 of every leaf's shape, dtype and bytes in tree order, whether every leaf is finite), computed on
    this process's replica: written with each checkpoint and checked on restore."""
    h, finite = hashlib.sha256(), True
    for leaf in jax.tree.leaves(state):
        x = np.asarray(_replica(leaf))
        h.update(f"{x.shape}{x.dtype}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
        finite = finite and bool(np.isfinite(x).all() if np.issubdtype(x.dtype, np.inexact) else True)
    return h.hexdigest(), finite


def _restore(manager, step: int, config: TrainConfig, sharding: NamedSharding) -> tuple[TrainState, dict]:
    """Checkpoint ``step`` restored onto ``sharding`` (any device count: the target carries the shardings)."""
    target = abstract_state(config, sharding)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    restored = manager.restore(step, args=args)
    return restored.state, restored.meta


def _problem(state: TrainState, meta, step: int) -> str | None:
    """Why a restored checkpoint is not the one that was saved (None if it verifies)."""
    digest, finite = _digest(state)
    if not isinstance(meta, dict) or meta.get("step") != step or int(state.step) != step:
        return "its metadata does not match the step"
    if not finite:
        return "it holds non-finite values"
    if "sha256" in meta and meta["sha256"] != digest:  # checkpoints written before hashes verify by finiteness
        return "its content hash does not match (damaged files)"
    return None


def _restore_verified(
    manager, config: TrainConfig, sharding: NamedSharding, step: int | None = None, stream=sys.stderr
) -> tuple[int | None, TrainState | None, dict | None, list[int]]:
    """``(step, state, meta, skipped)``: the newest checkpoint that restores and verifies (or ``step``'s).

    A checkpoint that fails is skipped with one line on ``stream`` naming it and why. One that vanishes while
    it is read (a training run deleted it after a newer save) starts the search over, without a line.
    ``(None, None, None, [])`` if there are none; ``ValueError`` if none verifies.
    """
    lead = jax.process_index() == 0
    for _ in range(10):
        manager.reload()
        steps = sorted(manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise ValueError(f"no checkpoint {step} in {manager.directory} (there are {sorted(steps)})")
            steps = [step]
        skipped, vanished = [], False
        for s in steps:
            try:
                state, meta = _restore(manager, s, config, sharding)
                problem = _problem(state, meta, s)
            except Exception as e:  # Orbax raises many kinds of errors for damaged or missing files
                if not (Path(manager.directory) / str(s)).exists():
                    vanished = True
                    break
                problem = f"it does not restore ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if problem is None:
                return s, state, meta, skipped
            if step is not None:
                raise ValueError(f"checkpoint {s} in {manager.directory} is damaged: {problem}")
            skipped.append(s)
            if lead:
                print(f"checkpoint {s} in {manager.directory} skipped: {problem}", file=stream, flush=True)
        if not vanished:
            break
    if not steps:
        return None, None, None, []
    raise ValueError(f"no checkpoint in {manager.directory} verifies (skipped steps {skipped})")


def load_run(workdir: str | Path, step: int | None = None, stream=sys.stderr) -> tuple[Run, nnx.GraphDef, TrainState]:
    """``(run, graphdef, state)`` of the newest checkpoint in ``workdir`` that verifies (or ``step``'s), on this
    process's devices. Safe while a run trains there: it only reads, and a checkpoint deleted while it is
    read sends it to the next newest."""
    workdir = Path(workdir)
    run = Run.read(workdir)
    if run is None:
        raise ValueError(f"workdir {workdir} holds no run (no run.json)")
    if not (workdir / "checkpoints").exists():
        raise ValueError(f"workdir {workdir} holds no checkpoint yet")
    manager = _manager(workdir, run.config, read_only=True)
    try:
        found, state, _, _ = _restore_verified(manager, run.config, NamedSharding(make_mesh(), P()), step, stream)
    finally:
        manager.close()
    if found is None:
        raise ValueError(f"workdir {workdir} holds no checkpoint yet")
    return run, _graphdef(run.config), state


@functools.lru_cache
def _denoiser(graphdef: nnx.GraphDef) -> Callable:
    """One function object per network, so the sampler compiles once per (network, process, shape, method)."""
    return lambda params, x, t, **kw: nnx.merge(graphdef, params)(x, t, **kw)


def generate(run: Run, graphdef, params, key: jax.Array, num: int, steps=None, method=None, init_noise=None, **kw):
    """``num`` samples in data units (de-normalised), float32 ``(num, H, W, C)``, from ``params`` (e.g. the EMA).

    ``steps`` None: 50 for Gaussian runs, T for cold ones; ``method`` None: "ddim" or "cold". ``init_noise``:
    see :func:`cloudjax.sample` (cold restoration: the degraded images, normalised).
    """
    c = run.config
    process = run.diffusion
    if steps is None:
        steps = process.steps if c.process == "cold" else 50
    method = method or registry.samplers_for(process.kind)[0]
    kw["init_noise"] = init_noise
    shape = (num, c.image_size, c.image_size, c.channels)
    x = sample(
        jax.tree_util.Partial(_denoiser(graphdef), params), process, key, shape, steps=steps, method=method, **kw
    )
    return np.asarray(run.denormalize(x))


RESTORATIONS = ("degraded", "direct", "cold_naive", "cold", "original")


def restore(run: Run, graphdef, params, images, steps=None) -> dict[str, np.ndarray]:
    """A cold run's restorations of ``images`` ``(N, H, W, C)`` (data units): ``{name: (N, H, W, C)}`` for the
    names in :data:`RESTORATIONS`: D(x, T), the direct reconstruction, Algorithm 1, Algorithm 2 (``steps``
    each, None: T), the originals. Deterministic: no key is used."""
    if run.config.process != "cold":
        raise ValueError(f"restore needs a cold run, this one is {run.config.process!r}")
    x = np.asarray(images, np.float32)
    z = jnp.asarray(run.normalize(x), jnp.float32)
    process = run.diffusion
    degraded = process.degrade(z, jnp.full(z.shape[:1], process.steps))
    out = {"degraded": np.asarray(run.denormalize(degraded))}
    for method in ("direct", "cold_naive", "cold"):
        out[method] = generate(run, graphdef, params, jax.random.key(0), len(x), steps, method, init_noise=degraded)
    return {**out, "original": x}


# ----------------------------------------------------------------------------------------------------------
# The loop


class _Logger:
    """metrics.jsonl (process 0), TensorBoard events if tensorboardX is installed, a line on stderr.

    Records after ``start`` (written by a run that was killed before its next checkpoint) are dropped. The
    TensorBoard writer is made at the first record (importing tensorboardX takes seconds: not before step 1).
    """

    def __init__(self, workdir: Path, enabled: bool, stream, start: int):
        self.enabled, self.stream, self.workdir = enabled, stream, workdir
        path = workdir / "metrics.jsonl"
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if _record_step(line) <= start]
            atomic_write(path, "".join(line + "\n" for line in kept))
        self.file = path.open("a") if enabled else None
        self.tb = None

    def write(self, record: dict, line: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is None:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:
                self.tb = False
        if self.tb:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb:
            self.tb.close()


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut short by a kill


class _StopFlag:
    """Set by SIGTERM (preemption) while training; agreed on by all processes before acting."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __bool__(self) -> bool:
        if jax.process_count() == 1:
            return self.set
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.int32(self.set)).max())


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def check_workdir(config: TrainConfig, workdir: str | Path) -> Run | None:
    """The run in ``workdir`` with ``config`` applied (None if there is none yet); ``ValueError`` if the
    workdir holds a different run (only ``steps`` and the logging/checkpoint intervals may change), if its
    run.json is damaged, or if ``workdir`` cannot be a folder. ``decay_steps=None`` keeps the run's horizon."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {workdir} is a file, not a folder")
    run = Run.read(workdir)
    if run is None:
        return None
    horizon = run.config.decay_steps or run.config.steps  # run.json of older versions: the last leg's horizon
    config = dataclasses.replace(config, decay_steps=config.decay_steps or horizon)
    old, new = dataclasses.asdict(dataclasses.replace(run.config, decay_steps=horizon)), dataclasses.asdict(config)
    changed = [f"{k}: {old[k]!r} → {new[k]!r}" for k in old if k not in _RESUMABLE_FIELDS and old[k] != new[k]]
    if changed:
        raise ValueError(f"workdir {workdir} holds a different run ({'; '.join(changed)}); use a new --workdir")
    return dataclasses.replace(run, config=config)


def _make_workdir(workdir: Path) -> None:
    """Create ``workdir``; ``ValueError`` in one line if it is a file, inside a file, or not writable."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"workdir {workdir} is a file, not a folder") from None
    except NotADirectoryError:
        raise ValueError(f"workdir {workdir} is inside a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"cannot create workdir {workdir}: {e.strerror or e}") from None
    local = not str(workdir).startswith(("gs://", "s3://"))
    if local and not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"workdir {workdir} is not writable")


def train(
    config: TrainConfig,
    workdir: str | Path,
    source=None,
    stream=sys.stderr,
    time_limit: float | None = None,
) -> dict:
    """Train (or resume) the run in ``workdir`` up to ``config.steps``; returns a summary dict.

    ``source`` overrides the dataset named by the config (anything with ``num_examples``, ``image_shape``,
    ``get``). Saves a checkpoint every ``checkpoint_every`` steps, at the end, and on SIGTERM (then
    ``summary["preempted"]`` is True) or after ``time_limit`` seconds of training (``summary["timed_out"]``,
    resumable like a preemption). Every checkpoint is checked finite before it is written and carries a
    content hash; a resume starts from the newest one that verifies. Raises :class:`TrainingDiverged` on a
    NaN/Inf loss or state (nothing of the bad step is saved), :class:`~cloudjax._files.WorkdirBusy` if another
    process trains in ``workdir``, and ``ValueError`` for a workdir holding a different run or other data,
    a damaged run.json, or ``steps`` below the run's step. Turns JAX's persistent compilation cache on
    (:mod:`cloudjax.compile_cache`), so a second run with the same shapes starts in seconds.
    """
    from cloudjax.data import open_source

    enable_compile_cache()
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    if lead:
        _make_workdir(workdir)
    if source is None:
        c = config
        source = open_source(c.data, c.image_size, c.channels, c.data_dir, c.seed, drop_letterbox=c.drop_letterbox)
    if tuple(source.image_shape) != (config.image_size, config.image_size, config.channels):
        raise ValueError(
            f"data images are {source.image_shape}, config expects {config.image_size}² × {config.channels}"
        )
    if config.batch_size > source.num_examples:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({source.num_examples} images)")
    with workdir_lock(workdir) if lead else contextlib.nullcontext():
        return _train(config, workdir, source, stream, time_limit, lead)


def _train(config: TrainConfig, workdir: Path, source, stream, time_limit: float | None, lead: bool) -> dict:
    from cloudjax.data import BatchIterator

    run = check_workdir(config, workdir)
    if run is None:
        run = _measure(config, source)
        if lead:
            atomic_write(workdir / "run.json", run.to_json())
    elif run.data_fingerprint is not None:
        _, fingerprint = _normalizer_sample(run.config, source)
        if fingerprint != run.data_fingerprint:
            raise ValueError(
                f"the data differ from the run's in {workdir} (run.json: {run.data_fingerprint}; now: {fingerprint}); "
                "use the same data or a new --workdir"
            )
    config = run.config  # with the run's lr horizon

    mesh = make_mesh()
    replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    manager = _manager(workdir, config)
    start, state, meta, skipped = _restore_verified(manager, config, replicated, stream=stream)
    if skipped:  # set damaged checkpoints aside so that this run can save those steps again
        if lead:
            for s in skipped:
                (workdir / "damaged").mkdir(exist_ok=True)
                (workdir / "checkpoints" / str(s)).rename(workdir / "damaged" / f"{s}-{time.time_ns()}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("cloudjax: damaged checkpoints set aside")
        manager.reload()
    if start is not None and config.steps < start:
        manager.close()
        raise ValueError(
            f"--steps {config.steps} is below the run's step {start} in {workdir}: a run never goes back "
            "(sample an older checkpoint with --checkpoint, or train a new --workdir)"
        )
    if start is None:
        graphdef, state = init_state(config, replicated)
        data_step = 0
    else:
        graphdef = _graphdef(config)
        data_step = meta["data_step"]
    step_fn = _cached_train_step(graphdef, run, mesh)
    batches = BatchIterator(source, config.batch_size, config.seed, step=data_step)
    base_key = jax.random.wrap_key_data(jnp.copy(state.rng))  # a buffer of its own: the state is donated
    logger = _Logger(workdir, lead, stream, start or 0)
    step, last_saved, preempted = int(state.step), start, False
    first = step  # one batch a step: batch data_step + (step - first) is the next one to train on
    host_batch = lambda: run.normalize(next(batches)).astype(np.float32)

    def where() -> str:
        return f"step {last_saved} in {workdir / 'checkpoints'}" if last_saved is not None else "none yet"

    def save(force: bool) -> None:
        nonlocal last_saved
        host = _host_copy(state)
        digest, finite = _digest(host)
        if not finite:  # checked before anything is written: a checkpoint is never non-finite
            manager.wait_until_finished()
            raise TrainingDiverged(
                f"the parameters are not finite after step {step}; training stopped; last good checkpoint: {where()}"
            )
        meta = {"step": step, "data_step": data_step + step - first, "sha256": digest}
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        if manager.save(step, args=args, force=force):
            last_saved = step

    def check(loss: float, at: int) -> None:
        if not math.isfinite(loss):
            manager.wait_until_finished()
            raise TrainingDiverged(f"loss is {loss} at step {at}; training stopped; last good checkpoint: {where()}")

    pending, losses, tick, tick_step = None, [], time.perf_counter(), step
    deadline = math.inf if time_limit is None else tick + time_limit
    preempted = timed_out = False
    last_loss = math.nan
    try:
        with _StopFlag() as stop:
            ahead = host_batch() if step < config.steps else None
            while step < config.steps:
                batch = jax.make_array_from_process_local_data(data_sharding, ahead)
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
                step += 1
                if step < config.steps:  # the next batch is read while this step (and the one before) run
                    ahead = host_batch()
                if pending is not None:  # read the previous step's loss while this one runs
                    losses.append(float(pending[1]["loss"]))
                    check(losses[-1], pending[0])
                pending = (step, metrics)
                timed_out = time.perf_counter() > deadline
                stop.set |= timed_out
                halt = bool(stop)  # agreed by every process
                final = step == config.steps or halt
                if final or manager.should_save(step):
                    losses.append(float(metrics["loss"]))
                    check(losses[-1], step)
                    pending = None
                    save(force=final)
                if step % config.log_every == 0 or final:
                    now = time.perf_counter()
                    rate = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
                    last_loss = float(np.mean(losses)) if losses else float(metrics["loss"])
                    grad_norm = float(metrics["grad_norm"])
                    record = {"step": step, "loss": last_loss, "grad_norm": grad_norm, "images_per_s": rate}
                    eta = _clock((config.steps - step) * config.batch_size / max(rate, 1e-9))
                    line = f"step {step}/{config.steps}  loss {last_loss:.4f}  {rate:.1f} img/s  ETA {eta}"
                    logger.write(record, line)
                    losses, tick, tick_step = [], now, step
                if config.sample_every and step % config.sample_every == 0:
                    _sample_grid(run, graphdef, state.ema, workdir / "samples" / f"{step:08d}.png", lead)
                if halt:
                    preempted = not timed_out
                    break
            if pending is not None:
                check(float(pending[1]["loss"]), pending[0])
    finally:
        manager.wait_until_finished()
        manager.close()
        logger.close()
    if preempted and lead:
        print(f"SIGTERM: saved checkpoint at step {step}, exiting", file=stream, flush=True)
    summary = {"step": step, "preempted": preempted, "timed_out": timed_out, "last_checkpoint": last_saved}
    return {**summary, "loss": last_loss, "delta": run.delta}


def _sample_grid(run: Run, graphdef, params, path: Path, write: bool, num: int = 16, steps=None) -> None:
    """EMA samples (every process computes; ``write`` on one) as a PNG grid: the run's progress at a glance."""
    from cloudjax.plots import save_image_grid

    images = generate(run, graphdef, params, jax.random.key(run.config.seed), num, steps=steps)
    if write:
        save_image_grid(images, path)
