"""Two JAX processes on localhost (CPU, gloo collectives, 2 devices each) vs one process with the same global batch.

The test starts this file as a script twice (``python tests/test_multiprocess.py PROCESS_ID PORT OUT``). Each
process calls ``jax.distributed.initialize``, reads only its own shard of every global batch (``BatchIterator``),
assembles the global array with ``jax.make_array_from_process_local_data`` on a 4-device mesh spanning both
processes, runs the trainer's sharded step (``cloudjax.train.make_train_step``, gradients all-reduced across
processes) and writes what it saw and the trained parameters to ``OUT``. A few-parameter network keeps compilation
to seconds; the step, optimizer, noise and sharding are the trainer's own.
"""

import os
import socket
import subprocess
import sys

import numpy as np

NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
GLOBAL_BATCH, STEPS, SEED = 8, 3, 4


def _source():
    from cloudjax.data.sources import ArraySource

    images = np.random.default_rng(0).integers(0, 256, (21, 8, 8), dtype=np.uint8)
    return ArraySource(images, 8, None)


def _train(batches) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``STEPS`` trainer steps on the global mesh → (local shards, global batches, trained parameters) on host."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from cloudjax import GaussianDiffusion, PowerLawNoise
    from cloudjax.train import TrainConfig, TrainState, make_mesh, make_optimizer, make_train_step

    class TinyNet(nnx.Module):
        """ε̂ = conv(silu(conv(x) + W t)): 85 parameters."""

        def __init__(self, rngs):
            self.inp, self.time = nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.Linear(1, 4, rngs=rngs)
            self.out = nnx.Conv(4, 1, (3, 3), rngs=rngs)

        def __call__(self, x, t, dropout_key=None):
            return self.out(nnx.silu(self.inp(x) + self.time(t[:, None])[:, None, None, :]))

    config = TrainConfig(image_size=8, model="tiny", batch_size=GLOBAL_BATCH, steps=STEPS, warmup_steps=0, lr=1e-2)

    def init():
        params = nnx.state(TinyNet(nnx.Rngs(SEED)))
        ema = jax.tree.map(jnp.copy, params)
        rng = jax.random.key_data(jax.random.key(SEED))
        return TrainState(params, make_optimizer(config).init(params), ema, jnp.zeros((), jnp.int32), rng)

    mesh = make_mesh()
    replicated, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    state = jax.jit(init, out_shardings=replicated)()
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: TinyNet(nnx.Rngs(SEED))))
    step = make_train_step(
        graphdef, GaussianDiffusion(PowerLawNoise(1.0)), make_optimizer(config), ema_decay=config.ema_decay, mesh=mesh
    )
    local, gathered = [], []
    for i in range(STEPS):
        shard = next(batches)
        batch = jax.make_array_from_process_local_data(data, shard)
        local.append(shard)
        gathered.append(multihost_utils.process_allgather(batch, tiled=True))
        state, _ = step(state, batch, jax.random.fold_in(jax.random.key(SEED), i))
    return local, gathered, [np.asarray(p.addressable_data(0)) for p in jax.tree.leaves(state.params)]


def _worker(process_id: int, port: int, out: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=NUM_PROCESSES, process_id=process_id)
    from cloudjax.data import BatchIterator

    batches = BatchIterator(_source(), GLOBAL_BATCH, seed=SEED)  # process index and count from jax.distributed
    local, gathered, params = _train(batches)
    np.savez(
        out,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        step=batches.step,
        local=np.stack(local),
        gathered=np.stack(gathered),
        **{f"param{i}": p for i, p in enumerate(params)},
    )
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(tmp_path) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}  # not the 8 simulated devices of conftest
    port = _free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(NUM_PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port), str(outs[i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [dict(np.load(o)) for o in outs]


def test_two_processes_read_disjoint_shards_and_train_like_one_process(tmp_path):
    import jax

    from cloudjax.data import BatchIterator

    results = _run_processes(tmp_path)
    single = BatchIterator(_source(), GLOBAL_BATCH, seed=SEED, process_index=0, process_count=1)
    _, expected, single_params = _train(single)  # this process: jax.device_count() simulated devices
    expected = np.stack(expected)
    assert jax.process_count() == 1 and single.step == STEPS
    np.testing.assert_array_equal(np.concatenate([r["local"] for r in results], axis=1), expected)
    for i, r in enumerate(results):
        assert (r["process_index"], r["process_count"], r["device_count"], r["step"]) == (i, 2, 4, STEPS)
        assert r["local"].shape == (STEPS, GLOBAL_BATCH // 2, 8, 8, 1)
        np.testing.assert_array_equal(r["gathered"], expected)  # every process holds the same global batch
        params = [r[f"param{j}"] for j in range(len(single_params))]
        for p, q in zip(params, single_params, strict=True):  # only the order of the gradient sums differs
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
