"""Orbax checkpoints: saved with a content hash, restored verified, loaded for sampling."""

from __future__ import annotations

import hashlib
import logging
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.train.config import TrainConfig
from cloudjax.train.run import Run
from cloudjax.train.state import TrainState, _graphdef, abstract_state, make_mesh


def _manager(workdir: Path, config: TrainConfig, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's checkpoints; the writer (which holds the workdir lock) first removes what killed saves left."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, save_interval_steps=config.checkpoint_every)
        if jax.process_index() == 0 and (workdir / "checkpoints").exists():
            for stale in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"):
                stale.rmtree()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # a read-only manager warns that it is read-only
    try:
        return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)
    finally:
        absl.setLevel(level)


def _replica(leaf):
    """This process's copy of a replicated leaf (a device array's first addressable shard; host data as it is)."""
    return leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf


def _host_copy(state: TrainState) -> TrainState:
    """This process's replica of the (replicated) state as NumPy copies: what a checkpoint writes. Saving host
    arrays writes each leaf once from the primary process; Orbax would otherwise cut every replicated device
    array into one slice per replica (one dispatch each: ~20× slower with 8 CPU devices)."""
    return jax.tree.map(lambda x: np.array(_replica(x)), state)


def _digest(state: TrainState) -> tuple[str, bool]:
    """(sha256 of every leaf's shape, dtype and bytes in tree order, whether every leaf is finite), computed on
    this process's replica: written with each checkpoint and checked on restore."""
    h, finite = hashlib.sha256(), True
    for leaf in jax.tree.leaves(state):
        x = np.asarray(_replica(leaf))
        h.update(f"{x.shape}{x.dtype}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
        finite = finite and bool(np.isfinite(x).all() if np.issubdtype(x.dtype, np.inexact) else True)
    return h.hexdigest(), finite


def _restore(manager, step: int, config: TrainConfig, sharding: NamedSharding) -> tuple[TrainState, dict]:
    """Checkpoint ``step`` restored onto the replicated ``sharding`` (any device count). Read as host arrays, each
    leaf then placed on all of this process's devices at once: Orbax would place it on one device at a time
    (twice as slow with 8 CPU devices)."""
    target = jax.tree.map(lambda x: np.empty(x.shape, x.dtype), abstract_state(config))
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    restored = manager.restore(step, args=args)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), restored.state), restored.meta


def _problem(state: TrainState, meta, step: int) -> str | None:
    """Why a restored checkpoint is not the one that was saved (None if it verifies)."""
    digest, finite = _digest(state)
    if not isinstance(meta, dict) or meta.get("step") != step or int(state.step) != step:
        return "its metadata does not match the step"
    if not finite:
        return "it holds non-finite values"
    if "sha256" in meta and meta["sha256"] != digest:  # checkpoints written before hashes verify by finiteness
        return "its content hash does not match (damaged files)"
    return None


def _restore_verified(
    manager, config: TrainConfig, sharding: NamedSharding, step: int | None = None, stream=sys.stderr
) -> tuple[int | None, TrainState | None, dict | None, list[int]]:
    """``(step, state, meta, skipped)``: the newest checkpoint that restores and verifies (or ``step``'s).

    A checkpoint that fails is skipped with one line on ``stream`` naming it and why. One that vanishes while
    it is read (a training run deleted it after a newer save) starts the search over, without a line.
    ``(None, None, None, [])`` if there are none; ``ValueError`` if none verifies.
    """
    lead = jax.process_index() == 0
    for _ in range(10):
        manager.reload()
        steps = sorted(manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise ValueError(f"no checkpoint {step} in {manager.directory} (there are {sorted(steps)})")
            steps = [step]
        skipped, vanished = [], False
        for s in steps:
            try:
                state, meta = _restore(manager, s, config, sharding)
                problem = _problem(state, meta, s)
            except Exception as e:  # Orbax raises many kinds of errors for damaged or missing files
                if not (Path(manager.directory) / str(s)).exists():
                    vanished = True
                    break
                problem = f"it does not restore ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if problem is None:
                return s, state, meta, skipped
            if step is not None:
                raise ValueError(f"checkpoint {s} in {manager.directory} is damaged: {problem}")
            skipped.append(s)
            if lead:
                print(f"checkpoint {s} in {manager.directory} skipped: {problem}", file=stream, flush=True)
        if not vanished:
            break
    if not steps:
        return None, None, None, []
    raise ValueError(f"no checkpoint in {manager.directory} verifies (skipped steps {skipped})")


def load_run(workdir: str | Path, step: int | None = None, stream=sys.stderr) -> tuple[Run, nnx.GraphDef, TrainState]:
    """``(run, graphdef, state)`` of the newest checkpoint in ``workdir`` that verifies (or ``step``'s), on this
    process's devices. Safe while a run trains there: it only reads, and a checkpoint deleted while it is
    read sends it to the next newest."""
    workdir = Path(workdir)
    run = Run.read(workdir)
    if run is None:
        raise ValueError(f"workdir {workdir} holds no run (no run.json)")
    if not (workdir / "checkpoints").exists():
        raise ValueError(f"workdir {workdir} holds no checkpoint yet")
    manager = _manager(workdir, run.config, read_only=True)
    try:
        found, state, _, _ = _restore_verified(manager, run.config, NamedSharding(make_mesh(), P()), step, stream)
    finally:
        manager.close()
    if found is None:
        raise ValueError(f"workdir {workdir} holds no checkpoint yet")
    return run, _graphdef(run.config), state
