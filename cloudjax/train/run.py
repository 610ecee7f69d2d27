"""A run: what ``run.json`` holds, the measurements that make it, and the check that a workdir holds it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os

import jax.numpy as jnp
import numpy as np
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses

from cloudjax.blurring import BlurringDiffusion
from cloudjax.cold import MeanPrior
from cloudjax.diffusion import GaussianDiffusion
from cloudjax.noise import PowerLawNoise, WhiteNoise
from cloudjax.scale_space import ScaleSpaceDiffusion
from cloudjax.schedules import CalibratedSchedule, calibrated_schedule, get_schedule
from cloudjax.train.config import _FORMER_DEFAULTS, _OLDER_BLURRING, _RESUMABLE_FIELDS, TrainConfig


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
