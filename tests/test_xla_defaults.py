"""cloudjax's XLA defaults (``cloudjax/_xla.py``): ``$XLA_FLAGS`` and a compiled convolution, in fresh processes."""

import os
import subprocess
import sys

import pytest

from cloudjax import _xla

pytestmark = pytest.mark.skipif(_xla._jaxlib_version() not in _xla.JAXLIB, reason="jaxlib without known defaults")

# a 3x3 convolution that XLA:CPU hands to YNNPACK unless told not to; "started": a backend made before the import
PROBE = """
import os, sys, jax, jax.numpy as jnp
if sys.argv[1] == "started":
    jax.devices()
import cloudjax
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print(os.environ.get("XLA_FLAGS", ""))
print("__ynn_fusion" in hlo)
"""
DEFAULT = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def probe(flags: str | None, when: str = "fresh", **env) -> tuple[str, bool]:
    """``(XLA_FLAGS after import cloudjax, whether the convolution went to YNNPACK)`` in a new process."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla.ENV_VAR)} | env
    env |= {"XLA_FLAGS": flags} if flags is not None else {}
    done = subprocess.run([sys.executable, "-c", PROBE, when], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    flags, ynn = done.stdout.splitlines()[-2:]
    return flags, ynn == "True"


def test_flag_added_when_absent_and_the_convolution_leaves_ynnpack():
    assert probe(None) == (DEFAULT, False)
    assert probe("--xla_backend_optimization_level=0") == (f"--xla_backend_optimization_level=0 {DEFAULT}", False)


def test_user_setting_kept():
    mine = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    assert probe(mine) == (mine, True)


def test_switched_off_or_backend_already_started_leaves_xla_flags_alone():
    assert probe(None, **{_xla.ENV_VAR: "0"}) == ("", True)
    assert probe(None, "started") == ("", True)
