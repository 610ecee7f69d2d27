"""A diffusion UNet in Flax NNX (DDPM layout: residual blocks, GroupNorm, SiLU, self-attention).

``UNet(config, rngs=...)(x, t)`` maps an image batch ``x`` of shape ``(B, H, W, C)`` and times ``t`` of shape
``(B,)`` in [0, 1] to a prediction of ``x``'s shape in float32. Level ℓ works at resolution ``H / 2^ℓ`` with
``base_channels · channel_mults[ℓ]`` channels; ``H`` and ``W`` must be divisible by ``2^(levels − 1)``.
Parameters are float32 (``param_dtype``); activations use ``config.dtype`` (``"bfloat16"`` for mixed precision).
The last convolution and every residual branch's last layer start at zero, so the initial network is the
identity plus zero: training starts from a well-scaled function.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["UNet", "UNetConfig", "PRESETS", "preset", "init", "timestep_embedding"]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """UNet hyper-parameters.

    channels: image channels in and out. base_channels × channel_mults[ℓ]: width at level ℓ.
    num_res_blocks: residual blocks per level (the decoder has one more, for the extra skip).
    attention_levels: levels (0 = full resolution) with self-attention after each residual block.
    num_heads: attention heads. norm_groups: GroupNorm groups (must divide every width).
    time_scale: t ∈ [0, 1] is multiplied by this before the sinusoidal embedding.
    dtype: computation dtype ("float32" or "bfloat16"); parameters stay float32.
    num_classes: 0 for an unconditional network; else a learned class embedding of ``num_classes + 1`` rows (the
    last: "no class", label −1) is added to the time embedding, zero at initialisation.
    """

    channels: int = 1
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    num_heads: int = 1
    dropout: float = 0.1
    norm_groups: int = 32
    time_scale: float = 1000.0
    dtype: str = "float32"
    num_classes: int = 0

    def __post_init__(self):
        widths = [self.base_channels * m for m in self.channel_mults]
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if not widths or min(widths) < 1:
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {self.channel_mults}")
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every level width {widths}")
        if any(not 0 <= level < len(widths) for level in self.attention_levels):
            raise ValueError(f"attention_levels must be in [0, {len(widths)}), got {self.attention_levels}")
        if any(w % self.num_heads for w in widths):
            raise ValueError(f"num_heads={self.num_heads} must divide every level width {widths}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def downsampling(self) -> int:
        """The factor ``2^(levels − 1)`` that H and W must be divisible by."""
        return 2 ** (len(self.channel_mults) - 1)


PRESETS = {
    # ≈ 0.18M parameters: for tests and a laptop demo at 8–32 px.
    "tiny": dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=8),
    # ≈ 8.9M parameters (half the width of DDPM's CIFAR-10 network): 32 px.
    "small": dict(base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,)),
    # ≈ 35.7M parameters: DDPM's CIFAR-10 network (Ho et al. 2020).
    "base": dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,)),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The named preset (``"tiny"``, ``"small"``, ``"base"``) with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {name!r}")
    return UNetConfig(**{**PRESETS[name], **overrides})


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """``(B,) → (B, dim)`` sinusoidal embedding ``[cos(t ω_i), sin(t ω_i)]``, ``ω_i = max_period^(−i / (dim/2))``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _zero_conv(cin: int, cout: int, kernel: int, kw: dict, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), kernel_init=nnx.initializers.zeros_init(), rngs=rngs, **kw)


def _upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2× up-sampling ``(B, H, W, C) → (B, 2H, 2W, C)`` as a broadcast (its gradient a sum);
    ``jax.image.resize(..., "nearest")`` gives the same values through a gather, whose gradient is a scatter."""
    B, H, W, C = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)


class ResBlock(nnx.Module):
    """``h = Conv(Drop(SiLU(GN(Conv(SiLU(GN(x))) + Linear(emb))))); return skip(x) + h``."""

    def __init__(self, cin: int, cout: int, emb_dim: int, cfg: UNetConfig, kw: dict, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(cin, cfg.norm_groups, rngs=rngs, **kw)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs, **kw)
        self.emb = nnx.Linear(emb_dim, cout, rngs=rngs, **kw)
        self.norm2 = nnx.GroupNorm(cout, cfg.norm_groups, rngs=rngs, **kw)
        self.dropout = nnx.Dropout(cfg.dropout)
        self.conv2 = _zero_conv(cout, cout, 3, kw, rngs)
        self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs, **kw) if cin != cout else None

    def __call__(self, x, emb, dropout_key):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None, :]
        h = nnx.silu(self.norm2(h))
        h = self.dropout(h, deterministic=dropout_key is None, rngs=dropout_key)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


def _attention_implementation(dtype, head_dim: int) -> str | None:
    """``"cudnn"`` (fused flash attention) on NVIDIA GPUs for the shapes and dtypes it takes (bf16/fp16, head
    dimension a multiple of 8 up to 128); None (XLA's) elsewhere, which JAX's default ``None`` also means."""
    cuda = jax.default_backend() == "gpu" and "rocm" not in jax.devices()[0].client.platform_version.lower()
    fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if cuda and fits else None


class Attention(nnx.Module):
    """Multi-head self-attention over the ``H·W`` positions, pre-norm, residual, zero-initialised output
    (``jax.nn.dot_product_attention``: cuDNN's flash attention on NVIDIA GPUs in bf16, see below)."""

    def __init__(self, ch: int, cfg: UNetConfig, kw: dict, rngs: nnx.Rngs):
        self.heads = cfg.num_heads
        self.norm = nnx.GroupNorm(ch, cfg.norm_groups, rngs=rngs, **kw)
        self.qkv = nnx.Linear(ch, 3 * ch, rngs=rngs, **kw)
        self.out = nnx.Linear(ch, ch, kernel_init=nnx.initializers.zeros_init(), rngs=rngs, **kw)

    def __call__(self, x):
        B, H, W, C = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, H * W, 3, self.heads, C // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        h = jax.nn.dot_product_attention(q, k, v, implementation=_attention_implementation(q.dtype, C // self.heads))
        return x + self.out(h.reshape(B, H, W, C))


class Level(nnx.Module):
    """Residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, cins: list[int], cout: int, attend: bool, emb_dim: int, cfg, kw, rngs):
        self.blocks = nnx.List([ResBlock(cin, cout, emb_dim, cfg, kw, rngs) for cin in cins])
        self.attns = nnx.List([Attention(cout, cfg, kw, rngs) for _ in cins]) if attend else None

    def block(self, i, h, emb, dropout_key):
        h = self.blocks[i](h, emb, dropout_key)
        return h if self.attns is None else self.attns[i](h)


class UNet(nnx.Module):
    """Diffusion UNet: ``(x (B, H, W, C), t (B,)) → (B, H, W, C)`` float32 (see the module docstring)."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32)
        ch = cfg.base_channels
        emb_dim = 4 * ch
        widths = [ch * m for m in cfg.channel_mults]
        self.time1 = nnx.Linear(ch, emb_dim, rngs=rngs, **kw)
        self.time2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs, **kw)
        if cfg.num_classes:
            zeros = nnx.initializers.zeros_init()
            self.classes = nnx.Embed(cfg.num_classes + 1, emb_dim, embedding_init=zeros, rngs=rngs, **kw)
        self.stem = nnx.Conv(cfg.channels, ch, (3, 3), rngs=rngs, **kw)

        skips, down, downsamplers, prev = [ch], [], [], ch
        for level, width in enumerate(widths):
            cins = [prev] + [width] * (cfg.num_res_blocks - 1)
            down.append(Level(cins, width, level in cfg.attention_levels, emb_dim, cfg, kw, rngs))
            skips += [width] * cfg.num_res_blocks
            prev = width
            if level < len(widths) - 1:
                downsamplers.append(nnx.Conv(width, width, (3, 3), strides=(2, 2), rngs=rngs, **kw))
                skips.append(width)
        self.down, self.downsamplers = nnx.List(down), nnx.List(downsamplers)

        self.mid1 = ResBlock(prev, prev, emb_dim, cfg, kw, rngs)
        self.mid_attn = Attention(prev, cfg, kw, rngs)
        self.mid2 = ResBlock(prev, prev, emb_dim, cfg, kw, rngs)

        up, upsamplers = [], []
        for level in reversed(range(len(widths))):
            width = widths[level]
            cins = []
            for _ in range(cfg.num_res_blocks + 1):
                cins.append(prev + skips.pop())
                prev = width
            up.append(Level(cins, width, level in cfg.attention_levels, emb_dim, cfg, kw, rngs))
            if level > 0:
                upsamplers.append(nnx.Conv(width, width, (3, 3), rngs=rngs, **kw))
        self.up, self.upsamplers = nnx.List(up), nnx.List(upsamplers)

        self.out_norm = nnx.GroupNorm(prev, cfg.norm_groups, rngs=rngs, **kw)
        self.out_conv = _zero_conv(prev, cfg.channels, 3, kw, rngs)

    def embed(self, t: jax.Array, labels: jax.Array | None) -> jax.Array:
        """``(B, 4·base_channels)``: the time embedding of ``t (B,)``, plus the class embedding of ``labels (B,)``
        (int, −1 or None: no class) in a class-conditional network."""
        cfg = self.config
        emb = self.time2(nnx.silu(self.time1(timestep_embedding(t * cfg.time_scale, cfg.base_channels))))
        if not cfg.num_classes:
            if labels is not None:
                raise ValueError("labels need a class-conditional network (num_classes > 0)")
            return emb
        labels = jnp.full(t.shape, -1) if labels is None else jnp.asarray(labels)
        if labels.shape != t.shape:
            raise ValueError(f"labels must have shape {t.shape}, got {labels.shape}")
        return emb + self.classes(jnp.where(labels < 0, cfg.num_classes, labels)).astype(emb.dtype)

    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Predict from ``x (B, H, W, C)`` at times ``t (B,)`` (for ``labels (B,)``, see :meth:`embed`); dropout
        only when ``dropout_key`` is given."""
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.channels:
            raise ValueError(f"x must have shape (B, H, W, {cfg.channels}), got {x.shape}")
        if x.shape[1] % cfg.downsampling or x.shape[2] % cfg.downsampling:
            raise ValueError(f"x's height and width must be divisible by {cfg.downsampling}, got {x.shape[1:3]}")
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {t.shape}")
        counter = itertools.count()
        key = lambda: None if dropout_key is None else jax.random.fold_in(dropout_key, next(counter))

        emb = self.embed(t, labels)
        h = self.stem(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for i in range(cfg.num_res_blocks):
                h = blocks.block(i, h, emb, key())
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb, key())), emb, key())
        for j, blocks in enumerate(self.up):
            for i in range(cfg.num_res_blocks + 1):
                h = blocks.block(i, jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1), emb, key())
            if j < len(self.upsamplers):
                h = self.upsamplers[j](_upsample2(h))
        return self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)


def init(config: UNetConfig, key: jax.Array, out_shardings=None) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of a new UNet, its parameters initialised in one jitted computation.

    Eager NNX construction runs each initialiser op by op (seconds on CPU); this compiles once per
    (config, shardings), without backend optimisation (it runs once; optimising its hundreds of PRNG ops
    costs 10× the compile time). ``nnx.merge(graphdef, state)`` gives the module back. ``out_shardings``
    places the state (e.g. replicated).
    """
    graphdef, compiled = _compiled_init(config, out_shardings)
    return graphdef, compiled(key)


@functools.lru_cache(maxsize=8)
def _compiled_init(config: UNetConfig, out_shardings):
    return compiled_init(lambda k: UNet(config, rngs=nnx.Rngs(k)), jax.eval_shape(jax.random.key, 0), out_shardings)


def compiled_init(build, key, out_shardings=None) -> tuple[nnx.GraphDef, jax.stages.Compiled]:
    """``(graphdef, compiled key → state)`` of the module ``build(key)`` makes, from one trace of its construction
    (the graphdef is read off that trace), compiled without backend optimisation."""
    graphdefs = []

    def state_of(k):
        graphdef, state = nnx.split(build(k))
        graphdefs.append(graphdef)
        return state

    lowered = jax.jit(state_of, out_shardings=out_shardings).lower(key)
    return graphdefs[0], lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
