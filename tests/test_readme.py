"""The README's API example runs as written, and what it computes is right."""

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import cloudjax as cj

README = Path(__file__).resolve().parents[1] / "README.md"


def test_api_example_runs_and_its_results_hold():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "my_denoiser" in b)
    # The reader's network: here a zero ε prediction, whose loss in every weighting is 1 per pixel on average.
    scope = {"my_network": lambda params, x_t, t: jnp.zeros_like(x_t), "params": None}
    exec(example, scope)
    x0, fit, samples = scope["x0"], scope["fit"], scope["samples"]
    assert 1.1 < fit.delta < 1.7
    assert abs(float(scope["loss"]) - 1.0) < 0.15
    assert scope["d"].shape == (8,) and np.all(np.asarray(scope["d"]) > 0)
    # The last samples come from the exact Gaussian denoiser: their spectrum is the data's, not white noise's.
    white = np.asarray(cj.WhiteNoise().sample(scope["jax"].random.key(9), samples.shape))
    assert samples.shape == (16, 32, 32, 1)
    assert cj.spectral_distance(x0[:256], samples) < 0.5 * cj.spectral_distance(x0[:256], white)


def test_conditioning_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scope = {}
    exec(next(b for b in blocks if "guidance=" in b), scope)
    assert scope["guided"].shape == (10, 16, 16, 1) and np.isfinite(float(scope["loss"]))
