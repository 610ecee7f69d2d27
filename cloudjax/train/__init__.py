"""Training: a sharded, jitted train step, EMA, mixed precision, Orbax checkpoints, exact resume, preemption.

The step is a pure function ``(state, batch, key) → (state, metrics)`` compiled once with ``jax.jit``: the
batch is sharded over a ``"data"`` mesh axis spanning every device of every process, the :class:`TrainState`
is replicated, and XLA inserts the gradient all-reduce (what ``pmap`` did, in today's form). The noise is
drawn inside the step by ``diffusion.loss`` on the device. Gradients may be accumulated over micro-batches
(``lax.scan``); the update is AdamW (warm-up + cosine/linear decay) after global-norm clipping, then the EMA
``ema ← ema + (1 − d)(params − ema)``.

Data are normalised once per run by a per-channel scalar mean and std measured on a fixed, seeded sample
(the same on every process), so the model sees unit-variance images; the process's spec measures what it needs on
that sample (Δ for cloud noise, the SNR ratio of the calibrated schedule, the mean prior of cold generation). Both
are stored in ``workdir/run.json``, with the config (the process as ``{"kind": ..., fields}``).

A run lives in ``workdir``: ``run.json`` (config, normaliser, Δ), ``checkpoints/<step>`` (Orbax: params,
optimizer state, EMA, step, RNG, data position), ``metrics.jsonl``, ``samples/<step>.png`` and TensorBoard
events when tensorboardX is installed. :func:`train` resumes from the newest complete checkpoint by itself;
a resumed run gives the same parameters as an uninterrupted one.
"""

import sys
import types

from cloudjax.train.checkpoints import load_run
from cloudjax.train.config import TrainConfig
from cloudjax.train.loop import TrainingDiverged, train
from cloudjax.train.run import Run, check_workdir
from cloudjax.train.state import (
    TrainState,
    abstract_state,
    init_state,
    initialize_distributed,
    make_mesh,
    make_optimizer,
)
from cloudjax.train.step import make_train_step

__all__ = [
    "TrainConfig",
    "TrainState",
    "Run",
    "TrainingDiverged",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "init_state",
    "abstract_state",
    "train",
    "check_workdir",
    "load_run",
    "initialize_distributed",
]


class _CallablePackage(types.ModuleType):
    """``cloudjax.train`` names both this package and its :func:`train` (``cj.train(config, workdir)``): whichever
    the import system left bound, calling it trains."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
