"""The training loop: :func:`train` resumes the run in a workdir and trains it to ``config.steps``."""

from __future__ import annotations

import contextlib
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax._files import atomic_write, workdir_lock
from cloudjax.compile_cache import enable_compile_cache
from cloudjax.generate import class_labels, generate
from cloudjax.train.checkpoints import _digest, _host_copy, _manager, _restore_verified
from cloudjax.train.config import TrainConfig
from cloudjax.train.log import _clock, _Logger, _StopFlag
from cloudjax.train.run import Run, _make_workdir, _measure, _normalizer_sample, check_workdir
from cloudjax.train.state import _graphdef, init_state, make_mesh
from cloudjax.train.step import _cached_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


def train(
    config: TrainConfig,
    workdir: str | Path,
    source=None,
    stream=sys.stderr,
    time_limit: float | None = None,
) -> dict:
    """Train (or resume) the run in ``workdir`` up to ``config.steps``; returns a summary dict.

    ``source`` overrides the dataset named by the config (anything with ``num_examples``, ``image_shape``,
    ``get``). Saves a checkpoint every ``checkpoint_every`` steps, at the end, and on SIGTERM (then
    ``summary["preempted"]`` is True) or after ``time_limit`` seconds of training (``summary["timed_out"]``,
    resumable like a preemption). Every checkpoint is checked finite before it is written and carries a
    content hash; a resume starts from the newest one that verifies. Raises :class:`TrainingDiverged` on a
    NaN/Inf loss or state (nothing of the bad step is saved), :class:`~cloudjax._files.WorkdirBusy` if another
    process trains in ``workdir``, and ``ValueError`` for a workdir holding a different run or other data,
    a damaged run.json, or ``steps`` below the run's step. Turns JAX's persistent compilation cache on
    (:mod:`cloudjax.compile_cache`), so a second run with the same shapes starts in seconds.
    """
    from cloudjax.data import open_source

    enable_compile_cache()
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    if lead:
        _make_workdir(workdir)
    if source is None:
        c = config
        source = open_source(c.data, c.image_size, c.channels, c.data_dir, c.seed, drop_letterbox=c.drop_letterbox)
    if tuple(source.image_shape) != (config.image_size, config.image_size, config.channels):
        raise ValueError(
            f"data images are {source.image_shape}, config expects {config.image_size}² × {config.channels}"
        )
    config = config.with_classes(getattr(source, "num_classes", None))
    if config.batch_size > source.num_examples:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({source.num_examples} images)")
    with workdir_lock(workdir) if lead else contextlib.nullcontext():
        return _train(config, workdir, source, stream, time_limit, lead)


def _train(config: TrainConfig, workdir: Path, source, stream, time_limit: float | None, lead: bool) -> dict:
    from cloudjax.data import BatchIterator

    run = check_workdir(config, workdir)
    if run is None:
        run = _measure(config, source)
        if lead:
            atomic_write(workdir / "run.json", run.to_json())
    elif run.data_fingerprint is not None:
        _, fingerprint = _normalizer_sample(run.config, source)
        if fingerprint != run.data_fingerprint:
            raise ValueError(
                f"the data differ from the run's in {workdir} (run.json: {run.data_fingerprint}; now: {fingerprint}); "
                "use the same data or a new --workdir"
            )
    config = run.config  # with the run's lr horizon

    mesh = make_mesh()
    replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    manager = _manager(workdir, config)
    start, state, meta, skipped = _restore_verified(manager, config, replicated, stream=stream)
    if skipped:  # set damaged checkpoints aside so that this run can save those steps again
        if lead:
            for s in skipped:
                (workdir / "damaged").mkdir(exist_ok=True)
                (workdir / "checkpoints" / str(s)).rename(workdir / "damaged" / f"{s}-{time.time_ns()}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("cloudjax: damaged checkpoints set aside")
        manager.reload()
    if start is not None and config.steps < start:
        manager.close()
        raise ValueError(
            f"--steps {config.steps} is below the run's step {start} in {workdir}: a run never goes back "
            "(sample an older checkpoint with --checkpoint, or train a new --workdir)"
        )
    if start is None:
        graphdef, state = init_state(config, replicated)
        data_step = 0
    else:
        graphdef = _graphdef(config)
        data_step = meta["data_step"]
    step_fn = _cached_train_step(graphdef, run, mesh)
    batches = BatchIterator(source, config.batch_size, config.seed, step=data_step, labels=config.class_conditional)
    base_key = jax.random.wrap_key_data(jnp.copy(state.rng))  # a buffer of its own: the state is donated
    logger = _Logger(workdir, lead, stream, start or 0)
    step, last_saved, preempted = int(state.step), start, False
    first = step  # one batch a step: batch data_step + (step - first) is the next one to train on

    def host_batch():
        """The next batch, normalised: ``(B, H, W, C)``, or ``(images, labels (B,))`` if class-conditional."""
        batch = next(batches)
        if not config.class_conditional:
            return run.normalize(batch).astype(np.float32)
        return run.normalize(batch[0]).astype(np.float32), np.asarray(batch[1], np.int32)

    def where() -> str:
        return f"step {last_saved} in {workdir / 'checkpoints'}" if last_saved is not None else "none yet"

    def save(force: bool) -> None:
        nonlocal last_saved
        host = _host_copy(state)
        digest, finite = _digest(host)
        if not finite:  # checked before anything is written: a checkpoint is never non-finite
            manager.wait_until_finished()
            raise TrainingDiverged(
                f"the parameters are not finite after step {step}; training stopped; last good checkpoint: {where()}"
            )
        meta = {"step": step, "data_step": data_step + step - first, "sha256": digest}
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        if manager.save(step, args=args, force=force):
            last_saved = step

    def check(loss: float, at: int) -> None:
        if not math.isfinite(loss):
            manager.wait_until_finished()
            raise TrainingDiverged(f"loss is {loss} at step {at}; training stopped; last good checkpoint: {where()}")

    pending, losses, tick, tick_step = None, [], time.perf_counter(), step
    deadline = math.inf if time_limit is None else tick + time_limit
    preempted = timed_out = False
    last_loss = math.nan
    try:
        with _StopFlag() as stop:
            ahead = host_batch() if step < config.steps else None
            while step < config.steps:
                batch = jax.tree.map(lambda a: jax.make_array_from_process_local_data(data_sharding, a), ahead)
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
                step += 1
                if step < config.steps:  # the next batch is read while this step (and the one before) run
                    ahead = host_batch()
                if pending is not None:  # read the previous step's loss while this one runs
                    losses.append(float(pending[1]["loss"]))
                    check(losses[-1], pending[0])
                pending = (step, metrics)
                timed_out = time.perf_counter() > deadline
                stop.set |= timed_out
                halt = stop.agreed(step)
                final = step == config.steps or halt
                if final or manager.should_save(step):
                    losses.append(float(metrics["loss"]))
                    check(losses[-1], step)
                    pending = None
                    save(force=final)
                if step % config.log_every == 0 or final:
                    now = time.perf_counter()
                    rate = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
                    last_loss = float(np.mean(losses)) if losses else float(metrics["loss"])
                    grad_norm = float(metrics["grad_norm"])
                    record = {"step": step, "loss": last_loss, "grad_norm": grad_norm, "images_per_s": rate}
                    eta = _clock((config.steps - step) * config.batch_size / max(rate, 1e-9))
                    line = f"step {step}/{config.steps}  loss {last_loss:.4f}  {rate:.1f} img/s  ETA {eta}"
                    logger.write(record, line)
                    losses, tick, tick_step = [], now, step
                if config.sample_every and step % config.sample_every == 0:
                    _sample_grid(run, graphdef, state.ema, workdir / "samples" / f"{step:08d}.png", lead)
                if halt:
                    preempted = not timed_out
                    break
            if pending is not None:
                check(float(pending[1]["loss"]), pending[0])
    finally:
        manager.wait_until_finished()
        manager.close()
        logger.close()
    if preempted and lead:
        print(f"SIGTERM: saved checkpoint at step {step}, exiting", file=stream, flush=True)
    summary = {"step": step, "preempted": preempted, "timed_out": timed_out, "last_checkpoint": last_saved}
    return {**summary, "loss": last_loss, "measurements": run.measurements}


def _sample_grid(run: Run, graphdef, params, path: Path, write: bool, num: int = 16, steps=None) -> None:
    """EMA samples (every process computes; ``write`` on one) as a PNG grid: the run's progress at a glance
    (a class-conditional run's: every class in turn)."""
    from cloudjax.plots import save_image_grid

    key = jax.random.key(run.config.seed)
    images = generate(run, graphdef, params, key, num, steps=steps, labels=class_labels(run, num))
    if write:
        save_image_grid(images, path)
