"""Π∘FFT: orthonormal, exactly invertible, white stays white, |k| layout, radial profiles; the orthonormal DCT-II."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

import cloudjax as cj
from cloudjax.spectral import radial_bins

SHAPES = [(8, 8), (7, 9), (6, 5), (9, 4), (1, 4), (2, 2), (3, 1), (16, 12)]


def _matrix(H, W):
    """The (HW, HW) matrix of rfft_real acting on flattened fields."""
    basis = np.eye(H * W, dtype=np.float32).reshape(H * W, H, W)
    return np.asarray(cj.rfft_real(basis, axes=(-2, -1))).reshape(H * W, H * W).T


@pytest.mark.parametrize("H,W", SHAPES)
def test_orthonormal_and_inverse(H, W):
    M = _matrix(H, W)
    np.testing.assert_allclose(M @ M.T, np.eye(H * W), atol=2e-6)
    x = np.random.default_rng(0).normal(size=(3, H, W, 2)).astype(np.float32)
    X = cj.rfft_real(x)
    assert X.shape == x.shape and X.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(X), np.linalg.norm(x), rtol=1e-5)
    np.testing.assert_allclose(cj.irfft_real(X), x, atol=2e-5)
    np.testing.assert_allclose(cj.rfft_real(cj.irfft_real(x)), x, atol=2e-5)


@pytest.mark.parametrize("H,W", [(8, 8), (7, 9), (6, 5)])
def test_layout_matches_wavenumbers(H, W):
    """Each Π entry's real-space basis function has all its power at the entry's |k|."""
    M = _matrix(H, W)
    basis = M.reshape(H * W, H, W)  # row s of the orthogonal M: the field whose transform is e_s
    power = np.abs(np.fft.fft2(basis)) ** 2
    k = cj.wavenumbers(H, W)
    mean_k = (power * k).sum((1, 2)) / power.sum((1, 2))
    np.testing.assert_allclose(mean_k, k.reshape(-1), atol=1e-6)


def test_white_noise_stays_white_entrywise():
    """Every Π entry of white noise, the self-conjugate ones included, has variance 1 (the paper's Π gives 0.5)."""
    x = jax.random.normal(jax.random.key(0), (20000, 6, 5))
    var = np.asarray((cj.rfft_real(x, axes=(-2, -1)) ** 2).mean(0))
    np.testing.assert_allclose(var, 1.0, atol=0.05)
    for i, j in [(0, 0), (3, 0)]:  # self-conjugate modes of an even-by-odd grid
        assert abs(var[i, j] - 1) < 0.05


def test_linearity_and_axes():
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 5, 6, 3))
    y = jax.random.normal(ky, (2, 5, 6, 3))
    np.testing.assert_allclose(cj.rfft_real(2 * x - 3 * y), 2 * cj.rfft_real(x) - 3 * cj.rfft_real(y), atol=1e-5)
    moved = cj.rfft_real(jnp.moveaxis(x, -1, 1), axes=(-2, -1))
    np.testing.assert_allclose(jnp.moveaxis(moved, 1, -1), cj.rfft_real(x), atol=1e-6)


def test_jit_vmap_grad():
    x = jax.random.normal(jax.random.key(2), (4, 7, 6, 1))
    np.testing.assert_allclose(jax.jit(cj.rfft_real)(x), cj.rfft_real(x), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(cj.rfft_real)(x), cj.rfft_real(x), atol=1e-6)
    # Orthogonal map: the gradient of ½‖Π x‖² is x itself, and that of <w, Π x> is Πᵀ w = Π⁻¹ w.
    np.testing.assert_allclose(jax.grad(lambda v: 0.5 * jnp.sum(cj.rfft_real(v) ** 2))(x), x, atol=1e-5)
    w = jax.random.normal(jax.random.key(3), x.shape)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(w * cj.rfft_real(v)))(x), cj.irfft_real(w), atol=1e-5)


def test_wavenumbers_and_radial_profile():
    k = cj.wavenumbers(6, 8)
    assert k.shape == (6, 8) and k[0, 0] == 0 and np.isclose(k.max(), np.sqrt(0.5))
    bins, R = radial_bins(6, 8)
    assert bins[0, 0] == 0 and R == bins.max() + 1
    centres, profile = cj.radial_profile(jnp.asarray(k))
    assert profile.shape == (R,)
    assert np.all(np.diff(np.asarray(profile)) > 0)  # |k| grows with the bin
    np.testing.assert_allclose(profile, centres, atol=0.6 / 8)
    batched = cj.radial_profile(jnp.stack([k, 2 * k]))[1]
    np.testing.assert_allclose(batched[1], 2 * batched[0], rtol=1e-6)


def test_centered_puts_dc_in_the_middle():
    k = cj.wavenumbers(7, 8)
    c = np.asarray(cj.centered(jnp.asarray(k), axes=(-2, -1)))
    assert c[3, 4] == 0 and np.argmin(c) == 3 * 8 + 4


@pytest.mark.parametrize("H,W", [(8, 8), (7, 9), (1, 4)])
def test_dct2_is_scipys_orthonormal_dct_and_inverts_exactly(H, W):
    x = np.random.default_rng(1).normal(size=(3, H, W, 2))
    X = cj.dct2(x.astype(np.float32))
    assert X.shape == x.shape and X.dtype == jnp.float32
    np.testing.assert_allclose(X, scipy.fft.dctn(x, type=2, axes=(1, 2), norm="ortho"), atol=1e-5)
    np.testing.assert_allclose(cj.idct2(X), x, atol=1e-5)
    np.testing.assert_allclose(cj.dct2(np.moveaxis(x, -1, 0), axes=(-2, -1)), np.moveaxis(X, -1, 0), atol=1e-6)
    w = jax.random.normal(jax.random.key(3), x.shape)  # orthogonal: the gradient of <w, V x> is Vᵀ w = V⁻¹ w
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(w * cj.dct2(v)))(jnp.asarray(x)), cj.idct2(w), atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(cj.dct2))(x), X, atol=1e-5)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="axes"):
        cj.rfft_real(jnp.zeros((4, 4)), axes=(-3, -2))
    with pytest.raises(ValueError, match="axes"):
        cj.rfft_real(jnp.zeros((4, 4)), axes=(0, 0))
    with pytest.raises(ValueError, match="real"):
        cj.rfft_real(jnp.zeros((4, 4), jnp.complex64), axes=(0, 1))
    with pytest.raises(ValueError, match="positive"):
        cj.wavenumbers(0, 3)
    with pytest.raises(ValueError, match="real"):
        cj.dct2(jnp.zeros((4, 4), jnp.complex64), axes=(0, 1))
