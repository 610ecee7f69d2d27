"""The run's configuration: :class:`TrainConfig`, its defaults and validation, its JSON and flat forms."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax import nnx

from cloudjax import registry
from cloudjax._config import check_fields, setting
from cloudjax.models import preset
from cloudjax.process import OlderSettings, ProcessSpec

# Fields that may change when a run is resumed (data_dir: where the same data live); any other difference is a
# different run.
_RESUMABLE_FIELDS = ("steps", "checkpoint_every", "keep", "sample_every", "log_every", "data_dir")
# The values older versions stored for settings that did not apply to their run (a Gaussian run's
# degradation "blur", ...): dropped when their flat config is read, so those runs keep loading.
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
_DATA_HELP = (
    "dataset: patches[:NUM] (embedded natural-image patches), fashion_mnist[:train|test|all], folder:PATH (PNG/JPEG "
    "tree), npz:PATH (key 'images'), tfds:NAME[:SPLIT] (prepared tensorflow-datasets)"
)
_DATA_DIR_HELP = (
    "where the dataset's files are: Fashion-MNIST IDX .gz files (default /usr/share/datasets/fashion-mnist) or the "
    "tensorflow-datasets data_dir (default ~/tensorflow_datasets)"
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable; the command line's flags are made from its fields).

    data, data_dir, drop_letterbox, image_size, channels: the dataset (``cloudjax.data.open_source``).
    class_conditional: the network takes the data's labels (``num_classes`` of them, filled in from the data by
    :meth:`with_classes`), each dropped to "no class" with probability ``label_dropout`` in training, so that one
    network gives conditional and unconditional predictions (classifier-free guidance).
    model: UNet preset (``tiny``, ``small``, ``base``); dropout and model_levels (its widths ``channel_mults`` cut to
    that many levels, attention with them, or the last repeated: ``tiny``'s (1, 2) at 3 levels is (1, 2, 2)): None
    keeps the preset's.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    batch_size: global batch per step; grad_accum: micro-batches it is split into (divides batch_size).
    steps: total steps to reach. lr: peak learning rate after ``warmup_steps`` linear warm-up, then
    ``decay`` ("cosine", "linear" or "constant") to ``lr · final_lr_ratio`` at ``decay_steps``, then constant.
    ``decay_steps`` is part of the run: None becomes ``steps`` when the run is created and is stored in
    ``run.json``, so extending a run with a larger ``steps`` continues at the final lr (the lr is a function of
    the step alone) and ``--steps 10`` then ``--steps 20`` equals one run of 20 steps with ``decay_steps=10``.
    weight_decay: AdamW's; clip_norm: global gradient-norm clip; ema_decay: d of the EMA.
    process: the forward process's spec (:class:`cloudjax.process.ProcessSpec`, e.g.
    :class:`cloudjax.diffusion.GaussianSpec`, the default), resolved for the images and network when the config
    is made (its size-dependent defaults filled, so run.json stores them).
    checkpoint_every, keep: checkpoint interval and how many to keep. sample_every: EMA sample grid
    interval (0: never). log_every: metrics interval. normalizer_examples: images measured for the
    normaliser and the process's measurements. seed: parameters, data order, noise.

    :meth:`from_flat` makes one from flat settings (``levels=3``, ``noise="cloud"``: what the flags give).
    """

    data: str = setting("patches", _DATA_HELP)
    data_dir: str | None = setting(None, _DATA_DIR_HELP)
    drop_letterbox: bool = setting(
        False, "skip images with near-constant bars on an edge (the paper's STL-10 filter; one pass over the data)"
    )
    class_conditional: bool = setting(
        False, "train a class-conditional model on the data's labels (sample with --labels and --guidance)"
    )
    label_dropout: float = setting(0.1, "class-conditional: chance that a label is dropped to 'no class' (for CFG)")
    num_classes: int | None = setting(None, "class-conditional: the number of classes (default: the data's)")
    image_size: int = setting(32, "image height and width in pixels")
    channels: int = setting(1, "1 grey, 3 RGB", (1, 3))
    model: str = setting("small", "UNet preset", registry.MODELS)
    dropout: float | None = setting(None, "dropout rate (default: the preset's)")
    model_levels: int | None = setting(None, "UNet resolution levels: the preset's widths cut, or its last repeated")
    dtype: str = setting("float32", "computation dtype", ("float32", "bfloat16"))
    batch_size: int = setting(64, "global batch size")
    grad_accum: int = setting(1, "micro-batches per step (divides --batch-size)")
    steps: int = setting(10_000, "total steps to reach (resumes below it)")
    lr: float = setting(2e-4, "peak learning rate")
    warmup_steps: int = setting(500, "linear warm-up steps")
    decay: str = setting("cosine", "lr decay after warm-up", ("cosine", "linear", "constant"))
    decay_steps: int | None = setting(None, "lr schedule horizon (default --steps)")
    final_lr_ratio: float = setting(0.1, "final lr / peak lr")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    clip_norm: float = setting(1.0, "global gradient-norm clip")
    ema_decay: float = setting(0.999, "EMA decay")
    process: ProcessSpec = dataclasses.field(default_factory=lambda: registry.process_spec("gaussian")())
    checkpoint_every: int = setting(1000, "checkpoint interval in steps")
    keep: int = setting(3, "checkpoints kept")
    sample_every: int = setting(0, "EMA sample grid interval (0: never)")
    log_every: int = setting(50, "metrics interval in steps")
    normalizer_examples: int = setting(1024, "images measured for the normaliser and the process's measurements")
    seed: int = setting(0, "random seed")

    def __post_init__(self):
        check_fields(self)  # run.json may hold anything: each field is checked like its flag
        positive = ("image_size", "channels", "batch_size", "grad_accum", "steps", "checkpoint_every", "keep")
        for name in positive + ("log_every", "normalizer_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size}")
        if not (self.lr > 0 and 0 <= self.final_lr_ratio <= 1 and 0 <= self.ema_decay < 1 and self.clip_norm > 0):
            raise ValueError("lr and clip_norm must be > 0, final_lr_ratio in [0, 1], ema_decay in [0, 1)")
        if self.warmup_steps < 0 or self.sample_every < 0:
            raise ValueError("warmup_steps and sample_every must be >= 0")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.num_classes is not None and not (self.class_conditional and self.num_classes >= 1):
            raise ValueError(f"num_classes needs class_conditional and must be >= 1, got {self.num_classes}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive integer or None, got {self.decay_steps}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed}")
        if self.model_levels is not None and self.model_levels < 1:
            raise ValueError(f"model_levels must be >= 1, got {self.model_levels}")
        unet = self.unet_config()  # validates model, dtype, dropout
        if self.image_size % unet.downsampling:
            raise ValueError(f"image_size must be divisible by {unet.downsampling} for {self.model}")
        if not isinstance(self.process, ProcessSpec):
            raise ValueError(f"process must be a process spec (cloudjax.process.ProcessSpec), got {self.process!r}")
        object.__setattr__(self, "process", self.process.resolve(self.image_size, self.channels, unet))
        if self.sample_every and not self.process.generates:
            raise ValueError("sample_every needs a process that generates (gaussian, or cold with generation)")

    def with_classes(self, num_classes: int | None) -> TrainConfig:
        """This config for data of ``num_classes`` labels (None: unlabelled): a class-conditional config takes the
        data's count; ``ValueError`` in one line for unlabelled data or a count that differs from ``num_classes``."""
        if not self.class_conditional:
            return self
        if num_classes is None:
            raise ValueError(f"--class-conditional needs data with labels; {self.data} has none")
        if self.num_classes not in (None, num_classes):
            raise ValueError(f"num_classes is {self.num_classes}, but the data have {num_classes} classes")
        return dataclasses.replace(self, num_classes=num_classes)

    def unet_config(self):
        overrides = dict(channels=self.channels, dtype=self.dtype, num_classes=self.num_classes or 0)
        if self.dropout is not None:
            overrides["dropout"] = self.dropout
        if self.model_levels is not None:
            n, full = self.model_levels, preset(self.model)
            overrides["channel_mults"] = (full.channel_mults + full.channel_mults[-1:] * n)[:n]
            overrides["attention_levels"] = tuple(level for level in full.attention_levels if level < n)
        return preset(self.model, **overrides)

    def network(self, rngs: nnx.Rngs) -> nnx.Module:
        """The process's network (a UNet, or a Flexi-UNet for scale space) for these images and model settings."""
        return self.process.network(self.unet_config(), self.image_size, rngs)

    @classmethod
    def from_flat(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """The config of flat ``settings``, what the command line's flags give: this class's fields, ``process``
        (a registered name, default "gaussian") and that process's settings (``levels=3``, ``noise="cloud"``);
        None keeps a default. ``ValueError`` naming a setting that no field takes or that does not apply."""
        settings = {k: v for k, v in settings.items() if v is not None}
        spec = registry.process_spec(settings.pop("process", "gaussian"))
        own = {f.name for f in dataclasses.fields(cls)} - {"process"}
        _check_applies(spec, [k for k in settings if k not in own])
        process = spec(**{k: v for k, v in settings.items() if k not in own})
        return cls(**{k: v for k, v in settings.items() if k in own}, process=process)

    def flat(self) -> dict[str, Any]:
        """The flat settings of this config (``TrainConfig.from_flat(config.flat()) == config``)."""
        return {**self._own(), "process": self.process.kind, **dataclasses.asdict(self.process)}

    def to_json(self) -> dict[str, Any]:
        """The JSON form, as run.json holds it: the process as ``{"kind": name, **its fields}``."""
        return {**self._own(), "process": {"kind": self.process.kind, **dataclasses.asdict(self.process)}}

    def _own(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "process"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config of its JSON form, rebuilding the process through the registry; the one flat config of
        run.json files written before process specs is read too (:func:`_upgrade`)."""
        if not isinstance(d.get("process"), Mapping):
            return cls.from_flat(_upgrade(d))
        process = dict(d["process"])
        spec = registry.process_spec(process.pop("kind"))
        return cls(**{**d, "process": spec(**process)})


def _check_applies(spec: type, names: list[str]) -> None:
    """``ValueError`` for the first of ``names`` (settings outside TrainConfig) that ``spec`` has no field for."""
    fields = {f.name for f in dataclasses.fields(spec)}
    for name in names:
        if name not in fields:
            known = name in _process_settings()  # a setting of another process
            message = f"{name} does not apply to process {spec.kind!r}" if known else f"unknown setting {name!r}"
            raise ValueError(message)


def _upgrade(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings of an older flat config: None values and the values in ``_FORMER_DEFAULTS`` dropped (the
    spec fills them back where they apply), the settings the process's spec has no field for dropped (an older
    x0 process stored ``prediction="x0"``), and the spec's own upgrade (:class:`~cloudjax.process.OlderSettings`)."""
    flat = {k: v for k, v in flat.items() if v is not None and _FORMER_DEFAULTS.get(k, ...) != v}
    kind = flat.pop("process", "gaussian")
    spec = registry.process_spec(kind)
    fields = {f.name for f in dataclasses.fields(spec)}
    process = {k: v for k, v in flat.items() if k in fields}
    if issubclass(spec, OlderSettings):
        process = spec.upgrade(process)
    others = {k: v for k, v in flat.items() if k not in fields and k not in _process_settings()}
    return {**others, "process": kind, **process}


def _process_settings() -> set[str]:
    """The names of every registered process's settings."""
    return {f.name for name in registry.PROCESSES for f in dataclasses.fields(registry.process_spec(name))}
