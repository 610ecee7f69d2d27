"""``import cloudjax`` and ``cloudjax --help`` stay light (no JAX); public names and submodules load on first use."""

import subprocess
import sys

PROBE = """
import contextlib, io, sys
import cloudjax as cj
from cloudjax.cli import main
help = io.StringIO()
with contextlib.redirect_stdout(help), contextlib.suppress(SystemExit):
    main(["--help"])
print("jax" in sys.modules, all(c in help.getvalue() for c in ("train", "sample", "stats", "fid")))
from cloudjax.train import TrainConfig  # binds the package cloudjax.train before cj.train is looked up
print("jax" in sys.modules, callable(cj.train), cj.train.TrainConfig is TrainConfig is cj.TrainConfig)
print(cj.rfft_real is cj.spectral.rfft_real, sorted(cj.__all__) == sorted(set(cj.__all__)))
try:
    cj.no_such_name
except AttributeError as e:
    print(e)
"""


def test_import_and_help_load_no_jax_and_names_resolve_on_use():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "False True",
        "True True True",
        "True True",
        "module 'cloudjax' has no attribute 'no_such_name'",
    ]
