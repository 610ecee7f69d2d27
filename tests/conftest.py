"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere; one compilation cache per test run.

The suite runs on two xdist workers (setup.cfg), one test file per worker at a time. Both workers and every
subprocess a test starts share a JAX compilation cache in a fresh folder for this run (never the user's): a
program compiled by one test (the same train step, sampler or UNet at the same shapes) is loaded by the next.
"""

import os
import shutil
import tempfile

from cloudjax import _xla  # reads jaxlib's version without importing JAX

# The tests check results, not speed, and compiling takes most of their time: XLA compiles without backend
# optimisation (a tiny train step in 8 s instead of 18 s) and, on jaxlib 0.10 (the last that has the flag), with its
# older elemental emitters instead of the MLIR fusion emitters (a tiny UNet's gradient compiles in 2 s instead of
# 6 s). Benchmarks and users keep the defaults. Subprocesses that set their own devices take COMPILE_FLAGS.
COMPILE_FLAGS = "--xla_backend_optimization_level=0"
if _xla._jaxlib_version() == (0, 10):
    COMPILE_FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8 {COMPILE_FLAGS}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CLOUDJAX_COMPILE_CACHE", "off")  # cloudjax's own default (the user's cache) stays unused
# made by the controlling process, before it starts the workers (they inherit the environment); removed at the end
_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cloudjax-tests-")
# compiled as above, most programs take less than JAX's 1 s threshold for caching; cached from 0.1 s, the command-line
# tests' subprocesses load what an earlier one compiled (test_reliability: 166 → 137 s on one core)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

# Files ranked by their time in the suite (seconds on one core of a 2-core AMD EPYC CPU, longest first: 74 ... 17),
# handed to the workers in this order so that the last files to start are short and both workers end together
# (longest processing time first); the rest follow in file order.
SLOW_FIRST = (
    "test_reliability",
    "test_gpu_suite",
    "test_conditioning_train",
    "test_process_spec",
    "test_samplers",
    "test_white_vs_cloud",
    "test_processes",
    "test_train",
    "test_fid",
    "test_noise",
    "test_scale_space_train",
    "test_cli_train",
    "test_conditioning",
    "test_blurring",
    "test_cold_train",
    "test_readme",
    "test_multiprocess",
    "test_spectral",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(SLOW_FIRST)))  # stable: file order kept otherwise


def pytest_unconfigure(config):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)
