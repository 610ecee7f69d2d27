"""Flexi-UNet (Mukhopadhyay et al. 2026): a UNet that runs only the levels an input needs.

The network is :class:`~cloudjax.models.unet.UNet` (same blocks, same parameters) plus a 1×1 adapter into and out
of each level. For an input at resolution ``N / 2^e``:

    stem (shared) → adapter in[e] → encoder levels e … D−1 → middle → decoder levels D−1 … o → adapter out[o]
    → head (shared),

with ``o = e`` (resolution-preserving) or ``o = e − 1`` (resolution-increasing, ``upsample=True``: the decoder
goes one level further, and that level, which has no encoder counterpart, gets zero skips). Levels finer than
the ones used are never run, so their parameters get exactly zero gradient and the FLOPs fall with the input
size; each (input resolution, upsample) pair is one static shape, one compile.

``adapter in[e]`` maps the stem's width to the width the UNet's encoder level e takes in (the stem's for e = 0,
the previous level's otherwise); ``adapter out[o]`` maps level o's width to the head's (level 0's).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cloudjax.models.unet import UNet, UNetConfig, _upsample2, compiled_init

__all__ = ["FlexiUNet", "init", "flops_per_level", "parameter_count"]


class FlexiUNet(UNet):
    """``(x (B, N/2^e, N/2^e, C), t (B,)) → x0 at N/2^e`` (or ``N/2^(e−1)`` with ``upsample=True``), float32.

    Args:
      config: the UNet's hyper-parameters; its ``D = len(channel_mults)`` levels bound the entry level e < D.
      image_size: N, the full resolution (level 0).
    """

    def __init__(self, config: UNetConfig, image_size: int, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        if image_size % config.downsampling:
            raise ValueError(f"image_size must be divisible by {config.downsampling}, got {image_size}")
        self.image_size = int(image_size)
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32)
        ch, widths = config.base_channels, [config.base_channels * m for m in config.channel_mults]
        entry = [ch] + widths[:-1]  # what encoder level ℓ takes in (the stem's or the downsampler's width)
        self.adapt_in = nnx.List([nnx.Conv(ch, w, (1, 1), rngs=rngs, **kw) for w in entry])
        self.adapt_out = nnx.List([nnx.Conv(w, widths[0], (1, 1), rngs=rngs, **kw) for w in widths])
        self.entry_widths = tuple(entry)

    def level_of(self, size: int) -> int:
        """The encoder level e of an input of height ``size``."""
        e = round(math.log2(self.image_size / size)) if size > 0 else -1
        if not 0 <= e < len(self.config.channel_mults) or self.image_size != size << e:
            raise ValueError(
                f"x's height must be {self.image_size} / 2^e for e < {len(self.config.channel_mults)}, got {size}"
            )
        return e

    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, *, upsample: bool = False, dropout_key=None
    ) -> jax.Array:
        """Predict at the input's resolution, or twice it with ``upsample`` (``labels``: see :meth:`UNet.embed`);
        dropout only with ``dropout_key``."""
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.channels or x.shape[1] != x.shape[2]:
            raise ValueError(f"x must have shape (B, H, H, {cfg.channels}), got {x.shape}")
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {t.shape}")
        entry = self.level_of(x.shape[1])
        exit_ = entry - int(bool(upsample))
        if exit_ < 0:
            raise ValueError("upsample=True needs an input below the full resolution")
        counter = itertools.count()
        key = lambda: None if dropout_key is None else jax.random.fold_in(dropout_key, next(counter))

        emb = self.embed(t, labels)
        h = self.adapt_in[entry](self.stem(x))
        skips = [h]
        for level in range(entry, len(self.down)):
            for i in range(cfg.num_res_blocks):
                h = self.down[level].block(i, h, emb, key())
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb, key())), emb, key())
        depth = len(self.up)
        for level in reversed(range(exit_, depth)):
            j = depth - 1 - level
            width = cfg.base_channels * cfg.channel_mults[level]
            zero_skips = [self.entry_widths[level]] + [width] * cfg.num_res_blocks
            for i in range(cfg.num_res_blocks + 1):
                skip = skips.pop() if level >= entry else jnp.zeros((*h.shape[:3], zero_skips.pop()), h.dtype)
                h = self.up[j].block(i, jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), emb, key())
            if level > exit_:
                h = self.upsamplers[j](_upsample2(h))
        h = self.adapt_out[exit_](h)
        return self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)


def init(config: UNetConfig, image_size: int, key: jax.Array, out_shardings=None) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of a new Flexi-UNet, initialised in one jitted computation (eager NNX
    construction runs each initialiser op by op); ``out_shardings`` places the state."""
    build = lambda k: FlexiUNet(config, image_size, rngs=nnx.Rngs(k))
    graphdef, compiled = compiled_init(build, jax.eval_shape(lambda: key), out_shardings)
    return graphdef, compiled(key)


def parameter_count(model: nnx.Module) -> int:
    """The number of parameters."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def flops_per_level(model: FlexiUNet, batch: int = 1, levels: int | None = None) -> dict[str, float]:
    """XLA's FLOP estimate of one forward pass per (entry level, upsample): ``{"0": …, "1": …, "1↑": …}``.

    Args:
      model: the network; batch: the batch size; levels: how many levels to report (default all).
    """
    graphdef, state = nnx.split(model)
    levels = len(model.config.channel_mults) if levels is None else levels
    out = {}
    for level, upsample in itertools.product(range(levels), (False, True)):
        if upsample and level == 0:
            continue
        size = model.image_size >> level
        x = jax.ShapeDtypeStruct((batch, size, size, model.config.channels), jnp.float32)
        t = jax.ShapeDtypeStruct((batch,), jnp.float32)
        fn = jax.jit(lambda s, x, t, u=upsample: nnx.merge(graphdef, s)(x, t, upsample=u))
        cost = fn.lower(state, x, t).cost_analysis()  # of the HLO before compilation: no compile needed
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        out[f"{level}↑" if upsample else str(level)] = float(cost["flops"])
    return out
