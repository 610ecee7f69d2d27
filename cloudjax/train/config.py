"""The run's configuration: :class:`TrainConfig`, its defaults and validation."""

from __future__ import annotations

import dataclasses
import math
import numbers

from flax import nnx

from cloudjax import registry
from cloudjax.blurring import default_blur_sigma_max
from cloudjax.cold import ColdDiffusion
from cloudjax.models import FlexiUNet, UNet, preset

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
