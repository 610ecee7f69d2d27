"""Flax NNX networks for diffusion."""

from cloudjax.models.flexi_unet import FlexiUNet
from cloudjax.models.unet import PRESETS, UNet, UNetConfig, init, preset, timestep_embedding

__all__ = ["FlexiUNet", "UNet", "UNetConfig", "PRESETS", "preset", "init", "timestep_embedding"]
