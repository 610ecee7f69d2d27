"""The jitted, sharded train step ``(state, batch, key) → (state, metrics)``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.process import LossBranches, loss_branch
from cloudjax.train.config import _RESUMABLE_FIELDS, TrainConfig
from cloudjax.train.run import Run
from cloudjax.train.state import TrainState, make_optimizer


def make_train_step(
    graphdef: nnx.GraphDef,
    diffusion,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float,
    grad_accum: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    label_dropout: float = 0.0,
) -> Callable:
    """The step ``(state, batch (B, H, W, C), key) → (state, metrics)``; ``state`` is donated.

    A class-conditional batch is ``(images, labels (B,))``: each label becomes −1 ("no class") with probability
    ``label_dropout`` (what classifier-free guidance needs) and the loss passes them to the network.

    ``diffusion`` is any forward process (:class:`cloudjax.process.ForwardProcess`); the step calls its ``loss``.
    A process with loss branches (scale space) gets one jitted program per branch, the branch drawn on the host
    from ``key`` (:func:`cloudjax.process.loss_branch`, so resumes stay exact); any other process one program.

    The batch (already normalised) is split into ``grad_accum`` micro-batches ``batch[i::grad_accum]`` (so each
    stays spread over every device), gradients are averaged over them with a fully unrolled ``lax.scan`` (one
    compiled step; a rolled loop around the convolutions costs XLA:CPU 6–17×); with ``grad_accum = 1`` the batch
    takes one pass. With ``mesh`` the batch is sharded on ``"data"`` and the state replicated.
    ``optimizer`` then updates the parameters and the EMA follows: ``ema ← ema + (1 − ema_decay)(params − ema)``.
    """
    accum = grad_accum

    def loss_fn(params, micro, key, branch):
        images, labels = micro if isinstance(micro, tuple) else (micro, None)
        loss_key, dropout_key = jax.random.split(key)
        model = nnx.merge(graphdef, params)
        apply_fn = lambda x_t, t, **kw: model(x_t, t, dropout_key=dropout_key, **kw)
        kw = {} if branch is None else {"branch": branch}
        if labels is not None:
            dropped = jax.random.bernoulli(jax.random.fold_in(key, 1), label_dropout, labels.shape)
            kw["labels"] = jnp.where(dropped, -1, labels)
        return diffusion.loss(apply_fn, loss_key, images, **kw)

    grad_fn = jax.value_and_grad(loss_fn)

    def gradients(params, batch, key, branch):
        """Mean loss and gradient over the batch: one pass when ``accum == 1``, else over the micro-batches."""
        if accum == 1:
            return grad_fn(params, batch, jax.random.fold_in(key, 0), branch)
        micro = jax.tree.map(lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:]).swapaxes(0, 1), batch)

        def accumulate(carry, inputs):
            loss_sum, grad_sum = carry
            i, x = inputs
            loss, grads = grad_fn(params, x, jax.random.fold_in(key, i), branch)
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        # unrolled: inside a while loop XLA:CPU leaves the backward convolutions in non-canonical dimension
        # orders that miss its fast (Eigen) kernels, ~6× slower; unrolled, every convolution is canonical.
        carry = (jnp.zeros(()), zeros)
        (loss, grads), _ = jax.lax.scan(accumulate, carry, (jnp.arange(accum), micro), unroll=True)
        return loss / accum, jax.tree.map(lambda g: g / accum, grads)

    def step(state: TrainState, batch, key: jax.Array, branch: int | None = None):
        loss, grads = gradients(state.params, batch, key, branch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: e + (1 - ema_decay) * (p - e), state.ema, params)
        new = state.replace(params=params, opt_state=opt_state, ema=ema, step=state.step + 1)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    shardings = {}
    if mesh is not None:
        replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        shardings = dict(in_shardings=(replicated, data, replicated), out_shardings=replicated)
    jitted = jax.jit(step, static_argnums=3, donate_argnums=0, **shardings)  # one program per branch
    if not isinstance(diffusion, LossBranches):
        return jitted
    weights = diffusion.loss_branches
    return lambda state, batch, key: jitted(state, batch, key, loss_branch(weights, key))


def _cached_train_step(graphdef: nnx.GraphDef, run: Run, mesh: jax.sharding.Mesh) -> Callable:
    """One jitted step per (network, run, mesh) in this process: a resumed run does not compile again, whatever
    its ``steps`` and logging/checkpoint intervals (the step depends on them only through the lr horizon)."""
    config = run.config
    intervals = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _RESUMABLE_FIELDS}
    config = dataclasses.replace(config, **intervals, decay_steps=config.decay_steps or config.steps)
    return _train_step_for(graphdef, dataclasses.replace(run, config=config, data_fingerprint=None), mesh)


@functools.lru_cache(maxsize=4)
def _train_step_for(graphdef: nnx.GraphDef, run: Run, mesh: jax.sharding.Mesh) -> Callable:
    c = run.config
    return make_train_step(
        graphdef,
        run.diffusion,
        make_optimizer(c),
        ema_decay=c.ema_decay,
        grad_accum=c.grad_accum,
        mesh=mesh,
        label_dropout=c.label_dropout if c.class_conditional else 0.0,
    )
