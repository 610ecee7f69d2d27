"""JAX's persistent compilation cache, on by default for the ``cloudjax`` command and :func:`cloudjax.train`.

A second run with the same shapes loads its compiled programs (the train step, the initialiser, the sampler)
from disk instead of compiling them again, tens of seconds on a CPU. The cache lives in
``$CLOUDJAX_COMPILE_CACHE`` if set (``off`` or ``0`` turns it off, as does ``cloudjax --no-compile-cache``),
else ``$XDG_CACHE_HOME/cloudjax/jax`` (``~/.cache/cloudjax/jax``). A directory JAX was already given
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left in place. Like any JAX cache it must not be writable
by users you do not trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["ENV_VAR", "cache_dir", "enable_compile_cache"]

ENV_VAR = "CLOUDJAX_COMPILE_CACHE"


def cache_dir() -> Path | None:
    """The directory the environment asks for: ``$CLOUDJAX_COMPILE_CACHE``, or the user cache; None when off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cloudjax" / "jax"


def enable_compile_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir` unless it is off or JAX has a directory
    already; returns the directory in use (None: no cache). Takes effect for compilations that follow."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = cache_dir()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
