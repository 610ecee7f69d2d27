"""Flexi-UNet: shapes per entry level, untouched finer levels (exactly zero gradients), fewer FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cloudjax.models import UNetConfig
from cloudjax.models.flexi_unet import FlexiUNet, flops_per_level, parameter_count

CFG = UNetConfig(
    channels=1, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4
)


@pytest.fixture(scope="module")
def model():
    """A Flexi-UNet at 16 px with every parameter perturbed (the zero-initialised convolutions would hide
    which parameters a pass reaches)."""
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: FlexiUNet(CFG, image_size=16, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), shapes)
    return nnx.merge(graphdef, state)


def grads_at(model, size, upsample):
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(2), (2, size, size, 1))
    t = jnp.array([0.3, 0.8])

    def loss(s):
        out = nnx.merge(graphdef, s)(x, t, upsample=upsample)
        return jnp.sum(out**2), out.shape

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(state)
    (_, shape), grads = grad_fn.compile(compiler_options={"xla_backend_optimization_level": 0})(state)
    assert shape == (2, size * (2 if upsample else 1), size * (2 if upsample else 1), 1)
    return grads


def touched(grads, prefix):
    """Whether any gradient under the path prefix (a tuple of keys) is non-zero."""
    flat = nnx.to_flat_state(grads)
    hits = [
        np.any(np.asarray(v.get_value() if hasattr(v, "get_value") else v.value) != 0)
        for k, v in flat
        if tuple(k[: len(prefix)]) == prefix
    ]
    assert hits, f"no parameters under {prefix}"
    return any(hits)


@pytest.mark.parametrize("size, upsample", [(8, False), (4, True)])
def test_finer_levels_get_exactly_zero_gradient(model, size, upsample):
    """Entry level e = log2(16 / size), exit o = e − upsample: levels < o never run, levels >= o all do."""
    entry = int(np.log2(16 // size))
    exit_ = entry - int(upsample)
    grads = grads_at(model, size, upsample)
    depth = len(CFG.channel_mults)
    for level in range(depth):
        up = ("up", depth - 1 - level)
        assert touched(grads, ("down", level)) == (level >= entry), ("down", level)
        assert touched(grads, up) == (level >= exit_), up
        assert touched(grads, ("adapt_in", level)) == (level == entry)
        assert touched(grads, ("adapt_out", level)) == (level == exit_)
    for shared in [("stem",), ("mid1",), ("out_conv",), ("time1",)]:
        assert touched(grads, shared)


def test_lower_levels_cost_fewer_flops(model):
    flops = flops_per_level(model)
    assert flops["0"] > flops["1"] > flops["2"] > 0
    assert flops["1"] < flops["1↑"] < flops["0"] and flops["2"] < flops["2↑"] < flops["1"]
    assert flops["2"] < 0.25 * flops["0"]
    assert parameter_count(model) > sum(p.size for p in jax.tree.leaves(nnx.state(model.adapt_in)))


def test_bad_inputs_raise(model):
    t = jnp.zeros((1,))
    with pytest.raises(ValueError, match="height"):
        jax.eval_shape(model, jnp.zeros((1, 12, 12, 1)), t)
    with pytest.raises(ValueError, match="upsample"):
        jax.eval_shape(lambda x, t: model(x, t, upsample=True), jnp.zeros((1, 16, 16, 1)), t)
    with pytest.raises(ValueError, match="image_size"):
        nnx.eval_shape(lambda: FlexiUNet(CFG, image_size=18, rngs=nnx.Rngs(0)))
