"""The ``cloudjax`` command: ``stats``, ``train``, ``sample``, ``fid``, ``fid-stats``, ``fid-convert``, ``demo``.

Each subcommand is a ``_cmd_<name>(args)`` function in a module of this package (``runs``, ``sample``, ``fid``)
whose ``register(sub)`` adds its parser. User mistakes
(bad flags, missing data, bad values) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from cloudjax.cli import fid, runs, sample
from cloudjax.cli._common import UsageError, _Parser


def _compile_cache(off: bool) -> None:
    """JAX's persistent compilation cache (:mod:`cloudjax.compile_cache`); ``off`` also for what this process starts."""
    from cloudjax.compile_cache import ENV_VAR, enable_compile_cache

    if off:
        os.environ[ENV_VAR] = "off"
    enable_compile_cache()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cloudjax", description="Diffusion with scale-invariant (cloud) noise.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (runs, sample, fid):
        module.register(sub)
    for p in sub.choices.values():
        p.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread: the command unwinds as after Ctrl-C (its temporary files removed)."""


def _terminate(signum, frame):
    raise _Terminated


@functools.cache  # once per process
def _quiet_checkpoint_library() -> None:
    """Orbax reports a failed save or read with tracebacks from its threads (absl ERROR records, asyncio's "Future
    exception was never retrieved" for its pending writes, and "Event loop is closed" from their callbacks, through
    ``sys.unraisablehook``). cloudjax reports those failures itself in one line (the error of ``train``, a checkpoint
    skipped or read again), so they are dropped; the command runs no asyncio code of its own."""
    import logging

    import absl.logging  # noqa: F401  (first: absl's own logger, which names the caller's file, must be the one)

    logging.getLogger("absl").addFilter(lambda r: r.levelno < logging.ERROR or "orbax" not in r.pathname)
    logging.getLogger("asyncio").addFilter(lambda r: "exception was never retrieved" not in r.getMessage())
    hook = sys.unraisablehook

    def unraisablehook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = unraisablehook


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    _quiet_checkpoint_library()
    parser = build_parser()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None  # `train` takes it over to save
    try:
        args = parser.parse_args(argv)
        _compile_cache(args.no_compile_cache)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except OSError as e:  # a full disk, a lost mount: what the system said, about which file
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (a smaller --batch-size, --num or data set fits)", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
