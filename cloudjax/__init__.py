"""cloudjax: diffusion with scale-invariant ("cloud") noise in JAX/Flax. ``import cloudjax as cj``."""

from cloudjax._xla import set_xla_defaults

set_xla_defaults()  # first: XLA reads $XLA_FLAGS once, when JAX makes its first backend

from cloudjax import registry
from cloudjax.blurring import BlurringDiffusion, blurring_oracle
from cloudjax.cold import ColdDiffusion, MeanPrior
from cloudjax.degradations import Decolorize, Downsample, GaussianBlur, GaussianMask
from cloudjax.diffusion import GaussianDiffusion, gaussian_oracle, gaussian_oracle_loss
from cloudjax.generate import generate
from cloudjax.metrics import frechet_distance, high_frequency_test, sliced_wasserstein, spectral_distance
from cloudjax.models import UNet, UNetConfig
from cloudjax.noise import PowerLawNoise, WhiteNoise, power_law_noise, power_law_spectrum
from cloudjax.process import ForwardProcess, NoiseModel, Schedule
from cloudjax.samplers import sample
from cloudjax.scale_space import ScaleSpaceDiffusion
from cloudjax.schedules import CalibratedSchedule, CosineSchedule, LinearSchedule, calibrated_schedule, get_schedule
from cloudjax.spectral import centered, dct2, idct2, irfft_real, radial_profile, rfft_real, wavenumbers
from cloudjax.stats import (
    DatasetStats,
    PowerLawFit,
    dataset_stats,
    fit_power_law,
    fit_power_law_spectrum,
    mahalanobis_between,
    mahalanobis_distance,
    mahalanobis_table,
    mahalanobis_to_center,
)
from cloudjax.train import TrainConfig, load_run, train

__version__ = "0.1.0"
