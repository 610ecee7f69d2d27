"""Two JAX processes on localhost (CPU, gloo collectives, 2 devices each) vs one process with the same global batch.

The test starts this file as a script twice (``python tests/test_multiprocess.py PROCESS_ID PORT OUT``); each
process calls ``jax.distributed.initialize``, reads only its own shard of every global batch, assembles the global
array with ``jax.make_array_from_process_local_data`` on a 4-device mesh, and writes what it saw to ``OUT``.
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


def _worker(process_id: int, port: int, out: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=NUM_PROCESSES, process_id=process_id)
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from cloudjax.data import BatchIterator

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batches = BatchIterator(_source(), GLOBAL_BATCH, seed=SEED)  # process index and count from jax.distributed
    local, gathered, sums = [], [], []
    for _ in range(STEPS):
        shard = next(batches)
        batch = jax.make_array_from_process_local_data(sharding, shard)
        local.append(shard)
        gathered.append(multihost_utils.process_allgather(batch, tiled=True))
        sums.append(multihost_utils.process_allgather(jax.jit(lambda x: x.sum(axis=(1, 2, 3)))(batch), tiled=True))
    np.savez(
        out,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local=np.stack(local),
        gathered=np.stack(gathered),
        sums=np.stack(sums),
        step=batches.step,
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
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [dict(np.load(o)) for o in outs]


def test_two_processes_read_disjoint_shards_of_the_single_process_global_batch(tmp_path):
    from cloudjax.data import BatchIterator

    results = _run_processes(tmp_path)
    for i, r in enumerate(results):
        assert (r["process_index"], r["process_count"], r["device_count"]) == (i, 2, 4)
        assert r["local"].shape == (STEPS, GLOBAL_BATCH // 2, 8, 8, 1) and r["step"] == STEPS
    single = BatchIterator(_source(), GLOBAL_BATCH, seed=SEED, process_index=0, process_count=1)
    expected = np.stack([next(single) for _ in range(STEPS)])
    np.testing.assert_array_equal(np.concatenate([r["local"] for r in results], axis=1), expected)
    for r in results:  # every process sees the same global array, and a jitted reduction over it
        np.testing.assert_array_equal(r["gathered"], expected)
        np.testing.assert_allclose(r["sums"], expected.sum(axis=(2, 3, 4)), rtol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
