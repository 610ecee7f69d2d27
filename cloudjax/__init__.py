"""cloudjax: diffusion with scale-invariant ("cloud") noise in JAX/Flax. ``import cloudjax as cj``.

The public names below, and the submodules (``cj.metrics``, ``cj.spectral`` ...), are imported on first use
(PEP 562), so ``import cloudjax`` and the ``cloudjax`` command's ``--help`` do not import JAX.
"""

import importlib

from cloudjax._xla import set_xla_defaults

set_xla_defaults()  # first: XLA reads $XLA_FLAGS once, when JAX makes its first backend

__version__ = "0.1.0"

_EXPORTS = {  # module → the public names it gives ``cloudjax``
    "cloudjax.blurring": ("BlurringDiffusion", "blurring_oracle"),
    "cloudjax.cold": ("ColdDiffusion", "MeanPrior"),
    "cloudjax.degradations": ("Decolorize", "Downsample", "GaussianBlur", "GaussianMask"),
    "cloudjax.diffusion": ("GaussianDiffusion", "gaussian_oracle", "gaussian_oracle_loss"),
    "cloudjax.generate": ("generate",),
    "cloudjax.metrics": ("frechet_distance", "high_frequency_test", "sliced_wasserstein", "spectral_distance"),
    "cloudjax.models": ("UNet", "UNetConfig"),
    "cloudjax.noise": ("PowerLawNoise", "WhiteNoise", "power_law_noise", "power_law_spectrum"),
    "cloudjax.process": ("ForwardProcess", "NoiseModel", "Schedule"),
    "cloudjax.samplers": ("sample",),
    "cloudjax.scale_space": ("ScaleSpaceDiffusion",),
    "cloudjax.schedules": (
        "CalibratedSchedule",
        "CosineSchedule",
        "LinearSchedule",
        "calibrated_schedule",
        "get_schedule",
    ),
    "cloudjax.spectral": ("centered", "dct2", "idct2", "irfft_real", "radial_profile", "rfft_real", "wavenumbers"),
    "cloudjax.stats": (
        "DatasetStats",
        "PowerLawFit",
        "dataset_stats",
        "fit_power_law",
        "fit_power_law_spectrum",
        "mahalanobis_between",
        "mahalanobis_distance",
        "mahalanobis_table",
        "mahalanobis_to_center",
    ),
    "cloudjax.train": ("TrainConfig", "load_run", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["registry", *_MODULE_OF]


def __getattr__(name: str):
    """A public name or a submodule, imported on first use and kept."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
