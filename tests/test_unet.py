"""UNet: shapes, parameter counts of the presets (abstract, no allocation), zero init, time and dropout use."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cloudjax.models import UNet, UNetConfig, init, preset
from cloudjax.models.unet import _upsample2


def _count(cfg: UNetConfig) -> int:
    model = nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name, low, high", [("small", 7.5e6, 9.5e6), ("base", 34e6, 37e6)])
def test_preset_parameter_counts(name, low, high):
    assert low < _count(preset(name)) < high


def test_parameter_count_grows_with_width_and_blocks():
    assert _count(preset("tiny", base_channels=32)) > _count(preset("tiny"))
    assert _count(preset("tiny", num_res_blocks=2)) > _count(preset("tiny"))


def _tiny(**kw):
    """``(params, apply(params, x, t, dropout_key=None))``, jitted: one compile instead of eager op dispatch."""
    graphdef, params = init(preset("tiny", channels=3, **kw), jax.random.key(0))
    return params, jax.jit(lambda p, x, t, k=None: nnx.merge(graphdef, p)(x, t, dropout_key=k))


def test_output_shape_dtype_and_zero_init():
    params, apply = _tiny(dtype="bfloat16")
    x = jax.random.normal(jax.random.key(0), (2, 8, 16, 3))
    y = apply(params, x, jnp.array([0.2, 0.7]))
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(jnp.abs(y).max()) == 0.0  # zero-initialised output convolution
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_output_depends_on_time_and_dropout_key():
    params, apply = _tiny(dropout=0.5)
    perturb = lambda ps: jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), ps)
    params = jax.jit(perturb)(params)  # move off the zero init so every input reaches the output
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([0.1, 0.1])
    base = apply(params, x, t)
    assert float(jnp.abs(apply(params, x, t + 0.5) - base).max()) > 1e-4
    assert float(jnp.abs(apply(params, x, t) - base).max()) == 0.0  # no dropout without a key
    k1, k2 = apply(params, x, t, jax.random.key(1)), apply(params, x, t, jax.random.key(2))
    assert float(jnp.abs(k1 - k2).max()) > 1e-4
    assert float(jnp.abs(k1 - apply(params, x, t, jax.random.key(1))).max()) == 0.0


def test_bad_input_raises_naming_argument():
    model = nnx.eval_shape(lambda: UNet(preset("tiny", channels=3), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.zeros((2, 8, 8, 1)), jnp.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(jnp.zeros((2, 7, 8, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="t must have shape"):
        model(jnp.zeros((2, 8, 8, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match="norm_groups"):
        preset("tiny", base_channels=12)
    with pytest.raises(ValueError, match="model must be one of"):
        preset("huge")


def test_upsampling_is_nearest_neighbour():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    want = jax.image.resize(x, (2, 6, 10, 4), "nearest")
    assert bool(jnp.all(_upsample2(x) == want))
