"""XLA defaults set before JAX's backends start: ``XLA_FLAGS`` is read once, when the first backend is made.

On a CPU, jaxlib 0.10 and 0.11 hand most of a UNet's convolutions to YNNPACK, whose convolutions are slower than
XLA's own at these shapes (a ``small`` train step at 32 px takes ~1.5× as long); ``-individual_convolution`` keeps
YNNPACK for dots and reductions only. The flag touches XLA:CPU's compiler alone (a GPU backend ignores it), is added
only for jaxlib versions known to accept it (XLA aborts the process on a flag it does not know), never replaces a
value the user set, and ``CLOUDJAX_XLA_DEFAULTS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "CLOUDJAX_XLA_DEFAULTS"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
DEFAULTS = {YNN_FLAG: "-individual_convolution"}
JAXLIB = {(0, 10), (0, 11)}  # (major, minor) of the jaxlib releases checked to accept every flag in DEFAULTS


def _jaxlib_version() -> tuple[int, ...] | None:
    """``(major, minor)`` of the installed jaxlib, read from its metadata (importing it is not needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(part) for part in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return None


def _backends_started() -> bool:
    """Whether JAX has made a backend in this process (then ``XLA_FLAGS`` has been read already)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:  # JAX not imported yet: nothing started
        return False
    started = getattr(bridge, "backends_are_initialized", None)
    return started() if started is not None else bool(getattr(bridge, "_backends", True))


def set_xla_defaults() -> list[str]:
    """Append cloudjax's defaults to ``$XLA_FLAGS`` where they apply; returns the flags added."""
    if os.environ.get(ENV_VAR, "1") == "0" or _jaxlib_version() not in JAXLIB or _backends_started():
        return []
    flags = os.environ.get("XLA_FLAGS", "")
    added = [f"{name}={value}" for name, value in DEFAULTS.items() if name not in flags]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added
