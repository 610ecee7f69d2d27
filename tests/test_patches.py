"""Natural-image patches from scikit-image's bundled photos: determinism, shapes, normalisation, spectrum."""

import numpy as np
import pytest

from cloudjax.data.patches import patches
from cloudjax.stats import fit_power_law


def test_deterministic_per_seed():
    a, b = patches(64, 16, seed=3), patches(64, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, patches(64, 16, seed=4))


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_raw_range(channels):
    x = patches(40, 24, channels=channels, normalize=None)
    assert x.shape == (40, 24, 24, channels) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x.std(axis=(1, 2)).min() > 0  # real crops, not constant fill
    if channels == 3:  # colour photos: channels differ
        assert np.abs(x[..., 0] - x[..., 2]).mean() > 0.01


def test_pixel_normalisation():
    x = patches(300, 16, normalize="pixel")
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-4)


def test_scalar_normalisation_keeps_pixel_structure():
    x = patches(300, 16, normalize="scalar")
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4
    assert x.std(0).std() > 1e-3  # one scale for all pixels, so per-pixel stds still vary


def test_flip_is_a_mirror_of_the_same_crop():
    a = patches(200, 16, normalize=None, flip=False)
    b = patches(200, 16, normalize=None, flip=True)
    same = np.all(a == b, axis=(1, 2, 3))
    mirrored = np.all(a[:, :, ::-1] == b, axis=(1, 2, 3))
    assert np.all(same | mirrored) and 0.3 < mirrored.mean() < 0.7


def test_natural_spectrum_exponent():
    """Natural 32×32 patches follow a power law with Δ ≈ 1.3–1.4 (Cloud Diffusion Part 1: 1.34)."""
    fit = fit_power_law(patches(3000, 32))
    assert 1.1 < fit.delta < 1.7
    assert fit.r_value < -0.9


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num": 0, "image_size": 16}, "num"),
        ({"num": 4, "image_size": 2}, "image_size"),
        ({"num": 4, "image_size": 16, "channels": 2}, "channels"),
        ({"num": 4, "image_size": 16, "normalize": "minmax"}, "normalize"),
        ({"num": 1, "image_size": 16, "normalize": "pixel"}, "normalize"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        patches(**kwargs)


@pytest.mark.parametrize("size", [32, 64])
def test_patches_rarely_repeat(size):
    """Crops come from levels at least twice the patch side, so patches are (almost) all distinct."""
    x = patches(2000, size, normalize=None)
    distinct = np.unique(x.reshape(len(x), -1), axis=0)
    assert len(x) - len(distinct) <= 10
