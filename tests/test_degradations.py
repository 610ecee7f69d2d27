"""Degradations: identity at t = 0, linearity, shapes/dtypes under jit and vmap, blur = t explicit convolutions,
masks compose as products, down-sampling and decolouring do what they say, clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cloudjax as cj
from cloudjax import degradations

DEGRADATIONS = {
    "blur_circular": lambda: cj.GaussianBlur((0.8, 1.5, 2.5), kernel_size=5),
    "blur_reflect_mean": lambda: cj.GaussianBlur((0.8, 1.5, 2.5), kernel_size=5, padding="reflect", final_mean=True),
    "mask": lambda: cj.GaussianMask.linear(steps=4, std=0.5, initial=2),
    "mask_random": lambda: cj.GaussianMask.linear(4, 0.5, 2).at_random(jax.random.key(3), (4, 8, 8, 3)),
    "downsample_area": lambda: cj.Downsample(steps=3),
    "downsample_bicubic": lambda: cj.Downsample(steps=2, method="bicubic"),
    "decolorize": lambda: cj.Decolorize(steps=4),
}


def _images(shape=(4, 8, 8, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@jax.jit
def _call(D, x, t):
    """D(x, t) jitted as a function of (D, x, t): the degradation is a pytree argument like any other."""
    return D(x, t)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_identity_at_zero_and_degraded_at_T(name):
    D = DEGRADATIONS[name]()
    x = _images()
    np.testing.assert_array_equal(_call(D, x, 0), x)
    np.testing.assert_array_equal(_call(D, x, np.zeros(4, np.int32)), x)
    change = np.linalg.norm(_call(D, x, D.steps) - x) / np.linalg.norm(x)
    assert change > 0.3, change
    # Every step degrades further: the distance to x grows with t.
    gaps = [float(np.linalg.norm(_call(D, x, t) - x)) for t in range(D.steps + 1)]
    assert np.all(np.diff(gaps) > 0), gaps


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_linear_in_x(name):
    D = DEGRADATIONS[name]()
    x, y = _images(seed=1), _images(seed=2)
    t = np.array([0, 1, 2, D.steps])
    np.testing.assert_allclose(_call(D, 2.0 * x - 3.0 * y, t), 2.0 * _call(D, x, t) - 3.0 * _call(D, y, t), atol=2e-5)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_shape_dtype_jit_and_vmap(name):
    D = DEGRADATIONS[name]()
    x = _images()
    t = np.array([D.steps, 1, 0, 2])
    y = _call(D, x, t)
    assert y.shape == x.shape and y.dtype == x.dtype
    # vmap over images: one image (H, W, C) and a scalar t per call; the random centres travel with their image.
    axes = None if getattr(D, "centers", None) is None else jax.tree.map(lambda _: 0, D)
    np.testing.assert_allclose(jax.vmap(_call, in_axes=(axes, 0, 0))(D, x, t), y, atol=1e-6)
    # A scalar t applies to every image; it is the same as the t broadcast over the batch.
    np.testing.assert_allclose(_call(D, x, 1), _call(D, x, np.ones(4, np.int32)), atol=1e-6)
    half = _call(D, x.astype(jnp.bfloat16), t)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), y, atol=0.1)
    # A traced t outside 0..T cannot raise; it is clipped to T.
    np.testing.assert_allclose(_call(D, x, np.full(4, D.steps + 5)), _call(D, x, D.steps), atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Blur


@functools.partial(jax.jit, static_argnames=("kernel_size", "padding"))
def _conv_compositions(x, stds, kernel_size, padding):
    """The reference way, all t at once: ``(T + 1, *x.shape)``, entry t made by t depthwise ``lax.conv`` calls, each on
    the explicitly padded image (SAME alignment) with the 2-D Gaussian normalised in 2-D."""
    k, C = kernel_size, x.shape[-1]
    lo, hi = (k - 1) // 2, k // 2
    a = jnp.arange(k) - (k - 1) / 2

    def step(y, std):
        g = jnp.exp(-(a[:, None] ** 2 + a[None, :] ** 2) / (2 * std**2))
        kernel = jnp.broadcast_to((g / g.sum())[:, :, None, None], (k, k, 1, C))
        padded = jnp.pad(y, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="wrap" if padding == "circular" else "reflect")
        y = jax.lax.conv_general_dilated(
            padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C,
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
        return y, y

    return jnp.concatenate([x[None], jax.lax.scan(step, x, jnp.asarray(stds, jnp.float32))[1]])


@pytest.mark.parametrize(
    "padding,kernel_size,H,W",
    [
        ("circular", 5, 9, 12),
        ("circular", 4, 8, 7),
        ("circular", 9, 9, 10),
        ("reflect", 5, 9, 12),
        ("reflect", 3, 8, 7),
    ],
)
def test_blur_equals_t_explicit_convolutions(padding, kernel_size, H, W):
    stds = (0.6, 1.4, 3.0, 1.0, 2.2)
    x = _images((6, H, W, 2), seed=4)
    t = np.arange(6)  # every t at once, one per image
    expected = _conv_compositions(x, stds, kernel_size, padding)[t, t]
    np.testing.assert_allclose(_call(cj.GaussianBlur(stds, kernel_size, padding), x, t), expected, atol=3e-6)


def test_blur_at_the_reference_codes_generation_scale():
    """300 steps, 27×27 kernels, σ = e^{0.01 i} (1 → 19.7), circular, then the per-channel mean (``--discrete``)."""
    D = cj.GaussianBlur.from_routine("exponential", steps=300, std=0.01, kernel_size=27, final_mean=True)
    np.testing.assert_allclose(D.stds, np.exp(0.01 * np.arange(299)), rtol=1e-12)
    x = _images((1, 28, 28, 2), seed=5)
    t = np.array([1, 40, 150, 299, 300])
    y = _call(D, np.repeat(x, 5, axis=0), t)
    np.testing.assert_allclose(y[:4], _conv_compositions(x, D.stds, 27, "circular")[t[:4], 0], atol=3e-6)
    np.testing.assert_allclose(y[4], np.broadcast_to(x[0].mean(axis=(0, 1)), x[0].shape), atol=1e-6)
    assert float(jnp.std(y[3], axis=(0, 1)).min()) > 0  # the last blur is not yet flat


def test_blur_routines():
    kw = dict(steps=4, std=0.5, kernel_size=3)
    assert cj.GaussianBlur.from_routine("constant", **kw).stds == (0.5,) * 4
    assert cj.GaussianBlur.from_routine("incremental", **kw).stds == (0.5, 1.0, 1.5, 2.0)
    np.testing.assert_allclose(cj.GaussianBlur.from_routine("exponential", **kw).stds, np.exp(0.5 * np.arange(4)))
    with_mean = cj.GaussianBlur.from_routine("incremental", final_mean=True, **kw)
    assert with_mean.steps == 4 and with_mean.stds == (0.5, 1.0, 1.5)
    assert set(degradations.BLUR_ROUTINES) == {"constant", "incremental", "exponential"}


def test_circular_blur_keeps_the_mean_and_the_final_step_is_it():
    D = cj.GaussianBlur((1.0, 2.0), kernel_size=5, final_mean=True)
    x = _images((2, 8, 8, 3), seed=6)
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(_call(D, x, 2).mean(axis=(1, 2), keepdims=True), mean, atol=1e-6)
    np.testing.assert_allclose(_call(D, x, 3), np.broadcast_to(mean, x.shape), atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Mask, down-sampling, decolouring


@pytest.mark.parametrize("random", [False, True])
def test_masks_compose_as_products(random):
    D = cj.GaussianMask.linear(steps=5, std=0.6, initial=1.5)
    x = _images((3, 9, 8, 2), seed=7)
    if random:
        D = D.at_random(jax.random.key(1), x.shape)
    y = x
    for t, std in enumerate(D.stds, start=1):  # apply the single-step masks one after another
        y = _call(D.replace(stds=(std,)), y, 1)
        np.testing.assert_allclose(_call(D, x, t), y, rtol=1e-6, atol=1e-7)
    mask = _call(D, np.ones_like(x), D.steps)
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    np.testing.assert_array_equal(mask[..., 0], mask[..., 1])  # one mask for every channel


def test_random_mask_centres_are_per_image_and_fixed_across_steps():
    D = cj.GaussianMask.linear(steps=6, std=0.5, initial=1).at_random(jax.random.key(2), (4, 16, 16, 1))
    ones = np.ones((4, 16, 16, 1), np.float32)
    where = []
    for t in (1, 6):
        m = np.asarray(_call(D, ones, t))[..., 0].reshape(4, -1)
        where.append(np.stack(np.unravel_index(m.argmin(1), (16, 16)), -1))
    np.testing.assert_array_equal(where[0], where[1])
    np.testing.assert_array_equal(where[0], np.rint(np.asarray(D.centers)))
    assert len({tuple(p) for p in where[0]}) > 1
    centred = _call(cj.GaussianMask(D.stds), ones[:, :15, :15], 1)  # odd size: the centre pixel is masked out exactly
    assert float(centred[0, 7, 7, 0]) == 0.0 and float(centred[0, 0, 0, 0]) > 0.99


def test_downsample_area_is_the_block_mean_at_full_size():
    D = cj.Downsample(steps=3)
    x = _images((2, 16, 8, 3), seed=8)
    for t in range(4):
        b = 2**t
        blocks = x.reshape(2, 16 // b, b, 8 // b, b, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(_call(D, x, t), np.repeat(np.repeat(blocks, b, 1), b, 2), atol=1e-6)
    bicubic = _call(cj.Downsample(steps=3, method="bicubic"), x, 2)
    np.testing.assert_array_equal(bicubic[:, 1::4], bicubic[:, ::4])  # nearest up: constant 4×4 blocks
    assert float(np.abs(bicubic - _call(D, x, 2)).max()) > 1e-3  # a different filter from the block mean


def test_decolorize_fades_linearly_to_grey():
    D = cj.Decolorize(steps=4)
    x = _images(seed=9)
    grey = np.broadcast_to(x.mean(-1, keepdims=True), x.shape)
    np.testing.assert_allclose(_call(D, x, 4), grey, atol=1e-6)
    np.testing.assert_allclose(_call(D, x, 1), 0.75 * x + 0.25 * grey, atol=1e-6)
    np.testing.assert_allclose(_call(D, x, 3).mean(-1), x.mean(-1), atol=1e-6)


def test_a_plain_nonlinear_function_is_a_degradation():
    """The module docstring's example: D(x0, t) clips to a range shrinking to 0; not linear, still jit/vmap-able."""
    example = degradations.__doc__.split("::")[1]
    scope = {"jnp": jnp}
    exec("\n".join(line[4:] for line in example.splitlines()), scope)
    D = scope["fade_range"]
    x = np.tanh(_images(seed=10))  # images in [-1, 1]
    t = np.array([0, 3, 5, 10])
    y = jax.jit(D)(x, t)
    np.testing.assert_array_equal(y[0], x[0])
    np.testing.assert_allclose(jax.vmap(D)(x, t), y)
    assert float(np.abs(y[3]).max()) == 0 and float(np.abs(y[1]).max()) <= 0.7
    assert float(np.abs(jax.jit(D)(2 * x, t) - 2 * y).max()) > 0.1  # not linear


def test_bad_settings_and_bad_calls_raise_value_error():
    x = _images((2, 8, 8, 3))
    for make, match in [
        (lambda: cj.GaussianBlur(()), "stds"),
        (lambda: cj.GaussianBlur((1.0, -1.0)), "stds"),
        (lambda: cj.GaussianBlur((1.0,), padding="zeros"), "padding"),
        (lambda: cj.GaussianBlur((1.0,), kernel_size=4, padding="reflect"), "kernel_size"),
        (lambda: cj.GaussianBlur.from_routine("linear", 4, 1.0), "routine"),
        (lambda: cj.GaussianBlur.from_routine("constant", 0, 1.0), "steps"),
        (lambda: cj.GaussianBlur.from_routine("constant", 1, 1.0, final_mean=True), "steps"),
        (lambda: cj.GaussianMask.linear(steps=0), "steps"),
        (lambda: cj.Downsample(steps=0), "steps"),
        (lambda: cj.Downsample(factor=1), "factor"),
        (lambda: cj.Downsample(method="lanczos"), "method"),
        (lambda: cj.Decolorize(steps=0), "steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()
    D = cj.Decolorize(steps=4)
    for t, match in [
        (-1, "0..4"),
        (5, "0..4"),
        (np.array([0, 7]), "0..4"),
        (1.5, "integer"),
        (np.ones(3, int), "shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            D(x, t)
    with pytest.raises(ValueError, match="kernel_size 9 is larger than the 8x8 image"):
        _call(cj.GaussianBlur((1.0,), kernel_size=9), x, 1)
    with pytest.raises(ValueError, match="divisible by 16"):
        cj.Downsample(steps=4)(x, 1)
    with pytest.raises(ValueError, match="x0"):
        D(x[0, 0], 1)
