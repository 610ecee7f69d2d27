"""A run: what ``run.json`` holds, the measurements that make it, and the check that a workdir holds it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses

from cloudjax.train.config import _RESUMABLE_FIELDS, TrainConfig

_OWN = (
    "config",
    "mean",
    "std",
    "data_fingerprint",
    "class_names",
)  # run.json's keys besides the process's measurements


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``run.json`` holds: the config, the data normaliser (per-channel mean, std), the process's measurements
    on the data (:meth:`cloudjax.process.ProcessSpec.measure`: Δ, the SNR ratio, the mean prior, ...; JSON values by
    name, stored beside the rest), a fingerprint of the data (size, image shape, a hash of the normaliser sample)
    that a resumed run must match, and a class-conditional run's class names (when the data name them)."""

    config: TrainConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    measurements: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    data_fingerprint: str | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):  # JSON values (lists, not tuples), so a run equals itself read back
        object.__setattr__(self, "measurements", json.loads(json.dumps(dict(self.measurements))))

    @property
    def diffusion(self):
        """The run's forward process, built by its spec from the measurements."""
        c = self.config
        return c.process.build(self.measurements, (c.image_size, c.image_size, c.channels))

    def normalize(self, x):
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def denormalize(self, x):
        return x * jnp.asarray(self.std, jnp.float32) + jnp.asarray(self.mean, jnp.float32)

    def to_json(self) -> str:
        own = dict(config=self.config.to_json(), mean=self.mean, std=self.std)
        if self.class_names is not None:
            own["class_names"] = self.class_names
        return json.dumps({**own, **self.measurements, "data_fingerprint": self.data_fingerprint}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Run:
        """The run of a run.json text (of this version or an older one: :meth:`TrainConfig.from_json`), every value
        checked (:meth:`check`); ``ValueError`` or ``TypeError`` if one is wrong. Older versions stored every
        measurement, null where it did not apply: nulls are dropped."""
        d = json.loads(text)
        measurements = {k: v for k, v in d.items() if k not in _OWN and v is not None}
        config = TrainConfig.from_json(d["config"])
        names = d.get("class_names")
        names = None if names is None else tuple(names)
        return cls(config, tuple(d["mean"]), tuple(d["std"]), measurements, d.get("data_fingerprint"), names).check()

    def check(self) -> Run:
        """This run if what it holds is what a run measures (a hand-edited run.json is refused like a bad flag):
        ``ValueError`` naming the value otherwise."""
        C = self.config.channels
        finite = lambda *v: all(isinstance(x, numbers.Real) and math.isfinite(x) for x in v)
        if not (len(self.mean) == len(self.std) == C and finite(*self.mean, *self.std) and min(self.std) > 0):
            raise ValueError(f"mean and std must be {C} finite numbers each, std > 0, got {self.mean} and {self.std}")
        if self.data_fingerprint is not None and not isinstance(self.data_fingerprint, str):
            raise ValueError(f"data_fingerprint must be a string, got {self.data_fingerprint!r}")
        names, classes = self.class_names, self.config.num_classes
        if names is not None and not (len(names) == classes and all(isinstance(n, str) for n in names)):
            raise ValueError(f"class_names must be {classes} strings, got {names!r}")
        _ = self.diffusion  # the spec checks the measurements as it builds the process
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
    """The normaliser and the process's measurements (:meth:`cloudjax.process.ProcessSpec.measure`) on
    :func:`_normalizer_sample`. ``decay_steps=None`` is resolved to ``steps`` here: the run's lr horizon."""
    x, fingerprint = _normalizer_sample(config, source)
    config = dataclasses.replace(config, decay_steps=config.decay_steps or config.steps)
    mean, std = x.mean(axis=(0, 1, 2)), np.maximum(x.std(axis=(0, 1, 2)), 1e-6)
    names = getattr(source, "class_names", None) if config.class_conditional else None
    names = None if names is None else tuple(names)
    run = Run(config, tuple(map(float, mean)), tuple(map(float, std)), data_fingerprint=fingerprint, class_names=names)
    measurements = config.process.measure(run.normalize(x).astype(np.float32), std, config.seed)
    return dataclasses.replace(run, measurements=measurements)


def check_workdir(config: TrainConfig, workdir: str | Path) -> Run | None:
    """The run in ``workdir`` with ``config`` applied (None if there is none yet); ``ValueError`` if the
    workdir holds a different run (only ``steps``, the logging/checkpoint intervals and ``data_dir``, where the same
    data live, may change; ``train`` checks the data's fingerprint), if its run.json is damaged, or if ``workdir``
    cannot be a folder. ``decay_steps=None`` keeps the run's horizon,
    ``num_classes=None`` its classes."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {workdir} is a file, not a folder")
    run = Run.read(workdir)
    if run is None:
        return None
    horizon = run.config.decay_steps or run.config.steps  # run.json of older versions: the last leg's horizon
    config = dataclasses.replace(config, decay_steps=config.decay_steps or horizon)
    if config.class_conditional and config.num_classes is None and run.config.class_conditional:
        config = dataclasses.replace(config, num_classes=run.config.num_classes)  # None: the run's classes
    old, new = dataclasses.replace(run.config, decay_steps=horizon).flat(), config.flat()
    names = [k for k in dict.fromkeys([*old, *new]) if k not in _RESUMABLE_FIELDS and old.get(k) != new.get(k)]
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in names]
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
