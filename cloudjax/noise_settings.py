"""What the specs of the Gaussian-family processes share (Gaussian, scale-space and blurring diffusion): the noise
(white, or cloud of exponent Δ), the α/σ schedule and the loss as settings; Δ, the channel covariance of colour cloud
noise and the SNR ratio of the calibrated schedule as measurements on the data; the noise and schedule they build."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from cloudjax import registry
from cloudjax._config import check_fields, refuse, setting
from cloudjax.models import UNet
from cloudjax.noise import PowerLawNoise, WhiteNoise
from cloudjax.process import OlderSettings
from cloudjax.schedules import CalibratedSchedule, calibrated_schedule, get_schedule

__all__ = ["NoiseSettings", "loss_setting"]


def loss_setting(default: str):
    """The ``loss_weighting`` field of a Gaussian-family spec, with the process's ``default``."""
    help = "loss: a norm (l2 = pixel, mahalanobis), +min_snr for a time weight; cold: l1 or l2"
    return setting(default, help, registry.LOSSES["gaussian"])


@dataclasses.dataclass(frozen=True)
class NoiseSettings(OlderSettings):
    """The settings every Gaussian-family spec has (subclasses add theirs).

    noise: "white" or "cloud"; delta: cloud Δ (None: fitted on the data). schedule: "cosine", "offset_cosine",
    "linear" or "calibrated" (cosine with the SNR ratio of cloud to white noise measured on the data, see
    :func:`cloudjax.calibrated_schedule`). loss_weighting: see :class:`cloudjax.GaussianDiffusion`.
    """

    kind = "gaussian"

    noise: str = setting("white", "noise model", registry.NOISES)
    delta: float | None = setting(None, "cloud noise exponent Δ (default: fitted on the data)")
    schedule: str = setting(
        "cosine", "noise schedule (calibrated: cosine, SNR matched to white noise on the data)", registry.SCHEDULES
    )
    loss_weighting: str = loss_setting("pixel")

    def __post_init__(self):
        check_fields(self)
        refuse(self, f"process {self.kind!r} with noise {self.noise!r}", delta=self.noise == "cloud")
        if self.delta is not None and not self.delta >= 0:
            raise ValueError(f"delta must be a finite number >= 0 or None, got {self.delta}")

    generates = True
    sampler = "ddim"
    sampler_steps = 50

    @classmethod
    def upgrade(cls, settings: dict) -> dict:
        """Older runs stored "pixel" where a process used its own default loss (x0 processes: min-SNR)."""
        if settings.get("loss_weighting") == "pixel":
            settings = {**settings, "loss_weighting": cls.__dataclass_fields__["loss_weighting"].default}
        return settings

    def resolve(self, image_size: int, channels: int, unet) -> NoiseSettings:
        return self

    def network(self, unet, image_size: int, rngs):
        return UNet(unet, rngs=rngs)

    def measure(self, images: np.ndarray, std: np.ndarray, seed: int) -> dict:
        """Δ (fitted unless given) and the channel covariance for cloud noise, the SNR ratio for "calibrated"."""
        n, H, W, C = images.shape
        measured = {}
        if self.noise == "cloud":
            delta = self.delta
            if delta is None:
                from cloudjax.stats import fit_power_law

                try:
                    delta = float(fit_power_law(images).delta)
                except ValueError as e:
                    raise ValueError(f"cannot fit Δ on the data ({e}); pass --delta") from None
                if not (math.isfinite(delta) and delta >= 0):
                    raise ValueError(f"the data's fitted Δ is {delta:.3g}, cloud noise needs Δ >= 0; pass --delta")
            measured["delta"] = delta
            if C > 1:
                cov = np.cov(images.reshape(-1, C), rowvar=False)
                measured["channel_cov"] = tuple(tuple(map(float, row)) for row in cov)
        if self.schedule == "calibrated":
            from cloudjax.stats import dataset_stats

            data_variance = dataset_stats([images], window=None).fourier_variance
            noise_variance = self.noise_model(measured, C).fourier_variance(H, W)
            measured["snr_ratio"] = calibrated_schedule(data_variance, noise_variance).snr_ratio
        return measured

    def noise_model(self, measurements: Mapping, channels: int):
        """The noise model (``WhiteNoise`` or ``PowerLawNoise``) of these settings and ``measurements``, checked."""
        cloud = self.noise == "cloud"
        expected = {name for name, needed in dict(delta=cloud, channel_cov=cloud and channels > 1).items() if needed}
        for name in (set(measurements) - {"snr_ratio"}) ^ expected:
            raise ValueError(f"{name} must be measured for {self._settings()} (and only then)")
        if not cloud:
            return WhiteNoise()
        delta = measurements["delta"]
        if not (_finite(delta) and delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0 for cloud noise, got {delta}")
        cov = measurements.get("channel_cov")
        if cov is not None:
            if np.shape(cov) != (channels, channels) or not all(_finite(v) for row in cov for v in row):
                raise ValueError(f"channel_cov must be a finite {channels}×{channels} matrix, got {cov}")
            cov = tuple(map(tuple, cov))
        return PowerLawNoise(delta, channel_cov=cov)

    def schedule_model(self, measurements: Mapping):
        """The schedule: its name, or the calibrated cosine schedule of the measured SNR ratio."""
        if ("snr_ratio" in measurements) != (self.schedule == "calibrated"):
            raise ValueError("snr_ratio must be measured for the calibrated schedule (and only then)")
        if self.schedule != "calibrated":
            return self.schedule
        ratio = measurements["snr_ratio"]
        if not (_finite(ratio) and ratio > 0):
            raise ValueError(f"snr_ratio must be a finite number > 0 for the calibrated schedule, got {ratio}")
        return CalibratedSchedule(get_schedule("cosine"), ratio)

    def _check_grey_cloud(self, channels: int) -> None:
        """``ValueError`` for colour cloud noise, which a process without a channel covariance cannot take."""
        if self.noise == "cloud" and channels > 1:
            raise ValueError(f"noise 'cloud' needs channels=1 for process {self.kind!r} (no colour cloud noise)")

    def _settings(self) -> str:
        return f"process {self.kind!r} with noise {self.noise!r} and schedule {self.schedule!r}"


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
