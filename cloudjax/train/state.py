"""The replicated train state, the device mesh and the optimiser."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import AxisType, NamedSharding

from cloudjax.models.unet import compiled_init
from cloudjax.train.config import TrainConfig


@struct.dataclass
class TrainState:
    """Replicated training state, a pytree. ``rng`` is raw key data (uint32) so it checkpoints as an array."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array
    rng: jax.Array


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over every device of every process (GSPMD-style automatic sharding)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None, process_id=None):
    """``jax.distributed.initialize`` when several processes are configured: by arguments, or by the
    ``CLOUDJAX_DISTRIBUTED=1`` environment variable (then JAX detects the cluster: TPU pods, SLURM, ...)."""
    if coordinator is not None or num_processes not in (None, 1):
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif os.environ.get("CLOUDJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warm-up and cosine / linear / no decay."""
    horizon = max(config.decay_steps or config.steps, config.warmup_steps + 1)
    end = config.lr * config.final_lr_ratio
    if config.decay == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup_steps, horizon, end_value=end)
    else:  # optax has no warm-up + linear decay, and its warm-up + constant is not constant at warmup_steps = 0
        warmup = optax.linear_schedule(0.0, config.lr, max(config.warmup_steps, 1))
        if config.decay == "linear":
            after = optax.linear_schedule(config.lr, end, horizon - config.warmup_steps)
        else:
            after = optax.constant_schedule(config.lr)
        lr = optax.join_schedules([warmup, after], [config.warmup_steps]) if config.warmup_steps else after
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(lr, weight_decay=config.weight_decay),
    )


def network_shapes(config: TrainConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, abstract parameters)`` of the run's network, traced once per network in this process (a trace
    takes seconds; a run cut in stages or reloaded asks again with only ``steps`` changed)."""
    return _network_shapes(dataclasses.replace(config, steps=1, decay_steps=config.decay_steps or config.steps))


@functools.lru_cache(maxsize=16)
def _network_shapes(config: TrainConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: config.network(nnx.Rngs(0))))


def _graphdef(config: TrainConfig) -> nnx.GraphDef:
    return network_shapes(config)[0]


def _new_state(config: TrainConfig, params, rng: jax.Array) -> TrainState:
    return TrainState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        ema=jax.tree.map(jnp.copy, params),
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )


def init_state(config: TrainConfig, sharding: NamedSharding | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """``(graphdef, state)`` of a fresh run: the network's parameters from ``seed``, optimizer state, EMA = params."""
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    graphdef, init = _network_init(config.process, config.unet_config(), config.image_size, sharding)
    return graphdef, _new_state_jit(sharding)(config, init(init_key), jax.random.key_data(rng))


@functools.lru_cache(maxsize=8)
def _network_init(process, unet, image_size: int, sharding: NamedSharding | None):
    """``(graphdef, compiled key → parameters)`` of the process's network, initialised in one jitted computation
    (:func:`cloudjax.models.unet.compiled_init`)."""
    build = lambda key: process.network(unet, image_size, nnx.Rngs(key))
    return compiled_init(build, jax.eval_shape(jax.random.key, 0), out_shardings=sharding)


@functools.lru_cache(maxsize=4)
def _new_state_jit(sharding: NamedSharding | None) -> Callable:
    return jax.jit(_new_state, static_argnums=0, out_shardings=sharding)


def abstract_state(config: TrainConfig) -> TrainState:
    """The state's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves, no allocation): what a checkpoint holds."""
    params = network_shapes(config)[1]
    rng = jax.random.key_data(jax.random.key(0))
    return jax.eval_shape(lambda p: _new_state(config, p, rng), params)
