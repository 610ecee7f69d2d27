"""Persistent compilation cache: where it lives, how it is turned off, and that a compile lands in it."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from cloudjax.compile_cache import ENV_VAR, cache_dir, enable_compile_cache


@pytest.fixture
def no_jax_cache():
    """JAX without a cache directory for one test (conftest gives the test run one)."""
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", saved)


def test_cache_dir_from_the_environment(monkeypatch, tmp_path, no_jax_cache):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "cloudjax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "cloudjax" / "jax"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    for off in ("off", "0", ""):
        monkeypatch.setenv(ENV_VAR, off)
        assert cache_dir() is None
        assert enable_compile_cache() is None  # turned off: nothing set
    assert not jax.config.jax_compilation_cache_dir


def test_a_directory_given_to_jax_is_kept(monkeypatch, tmp_path, no_jax_cache):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "ours"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    assert enable_compile_cache() == str(tmp_path / "theirs")
    assert not (tmp_path / "ours").exists()


PROGRAM = """
import jax, jax.numpy as jnp
from cloudjax.compile_cache import enable_compile_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **_: hits.append(name == "/jax/compilation_cache/cache_hits"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(enable_compile_cache(), float(jax.jit(lambda x: jnp.cumsum(jnp.sin(x)))(jnp.arange(5.0))[-1]), sum(hits))
"""


def test_a_second_process_reads_the_compile_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # not the test run's cache
    env[ENV_VAR] = str(tmp_path / "cache")
    run = lambda: subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    first = run().stdout.split()
    entries = sorted((tmp_path / "cache").iterdir())
    second = run().stdout.split()
    assert first[0] == second[0] == str(tmp_path / "cache") and entries
    assert first[1] == second[1] and first[2] == "0" and int(second[2]) == len(entries)  # every program read back
    assert sorted((tmp_path / "cache").iterdir()) == entries
