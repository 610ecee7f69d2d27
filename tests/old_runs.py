"""The runs made before process specs (``data/old_runs``: one flat config in run.json) and their references.

Each run was made by cloudjax 0.1.0 before specs with ``cloudjax train`` + ``TRAIN`` + its ``OLD_RUNS`` flags for 2
steps. Its references are what that code gives under the suite's XLA flags (``conftest.py``): the samples
``generate(run, graphdef, ema, key(0), 4)`` (``<name>_samples.npy``) and the content hash of the state after resuming
to step 3 (``resumed_sha256.json``, one set per CPU instruction set: the gradient's float32 rounding differs between
AVX2 and AVX-512 kernels, the samples' does not). Float32 results depend on how XLA compiles, so a change of those
flags, or a machine of another instruction set, means recomputing the references with that code, from this
repository's root:

    git worktree add /tmp/cloudjax-0.1.0 668030b && PYTHONPATH=/tmp/cloudjax-0.1.0 python tests/old_runs.py
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).parent / "data" / "old_runs"
TRAIN = ["train", "--data", "patches:64", "--image-size", "8", "--batch-size", "8", "--model", "tiny", "--lr", "1e-3"]
TRAIN += ["--warmup-steps", "0", "--checkpoint-every", "2", "--keep", "1", "--log-every", "1"]


def isa() -> str:
    """The widest vector instruction set of this CPU that XLA's kernels use: ``avx512``, ``avx2`` or the machine."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    flags = next((line.split() for line in lines if line.startswith("flags")), [])
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()


OLD_RUNS = {
    "gaussian_cloud": ["--noise", "cloud", "--schedule", "calibrated", "--prediction", "v"],
    "cold_blur": ["--process", "cold", "--generation"],
    "scale_space": ["--process", "scale_space", "--levels", "2"],
}


def recompute() -> None:
    """Write the references of every run in ``DATA`` with the cloudjax on ``sys.path`` and the suite's flags."""
    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # the suite's XLA flags, set before JAX starts
    import jax
    import numpy as np

    from cloudjax.cli import main
    from cloudjax.generate import generate
    from cloudjax.train import load_run
    from cloudjax.train.checkpoints import _digest

    hashes = {}
    for name, flags in OLD_RUNS.items():
        workdir = Path(tempfile.mkdtemp()) / name
        shutil.copytree(DATA / name, workdir)
        run, graphdef, state = load_run(workdir)
        np.save(DATA / f"{name}_samples.npy", generate(run, graphdef, state.ema, jax.random.key(0), 4))
        assert main([*TRAIN, *flags, "--steps", "3", "--workdir", str(workdir)]) == 0
        hashes[name] = _digest(load_run(workdir)[2])[0]
    path = DATA / "resumed_sha256.json"
    references = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(references | {isa(): hashes}, indent=1) + "\n")
    shutil.rmtree(conftest._CACHE, ignore_errors=True)


if __name__ == "__main__":
    recompute()
