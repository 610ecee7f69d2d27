"""Run-folder safety: atomic file writes and the workdir lock.

``atomic_output`` gives a temporary file in the target's folder, fsyncs it and ``os.replace``\\ s it over the
target when the block ends (and deletes it if the block raises, is interrupted or the process gets SIGTERM
through the CLI), so a reader (or a crash, or a full disk) sees the old file or the new one, never a part. Every
file a ``cloudjax`` command writes goes through it. ``workdir_lock`` holds an OS advisory lock (``fcntl.flock``)
on ``workdir/.lock`` while a run trains: the kernel drops it when the process ends however it ends, so a killed
run leaves nothing stuck.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "atomic_write", "is_local", "WorkdirLockError", "WorkdirBusy", "workdir_lock"]


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on this machine's file systems (not an object store such as ``gs://`` or ``s3://``)."""
    return "://" not in str(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file for the new content of ``path``: a temporary file in its folder, fsynced and renamed over
    ``path`` when the block ends, deleted (``path`` untouched) if the block raises. In an object store the
    content is uploaded at the end, as one object (which appears whole or not at all)."""
    if not is_local(path):
        from etils import epath

        buffer = io.BytesIO()
        yield buffer
        epath.Path(path).write_bytes(buffer.getvalue())
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name the target
            e.filename = str(path)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace ``path`` by ``data`` (text is UTF-8) all at once; on any error the old file is left as it was."""
    with atomic_output(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


class WorkdirLockError(RuntimeError):
    """The workdir's lock cannot be taken (its ``.lock`` is not a file that can be opened, or its file system
    has no locks): the run does not train unlocked."""


class WorkdirBusy(WorkdirLockError):
    """Another process is training in this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``workdir`` or raise at once: :class:`WorkdirBusy` if another process holds it,
    :class:`WorkdirLockError` if it cannot be taken (``workdir/.lock`` a folder or a dangling link, a file
    system without ``flock``). Folders in object stores (``gs://`` …) have no locks and are not locked."""
    import fcntl

    if not is_local(workdir):
        yield
        return
    lock = Path(workdir) / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirLockError(
            f"cannot lock workdir {workdir}: {lock} cannot be opened ({e.strerror or e}); remove it, or use another "
            "--workdir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"workdir {workdir} is in use by another training process") from None
        except OSError as e:
            raise WorkdirLockError(
                f"cannot lock workdir {workdir}: its file system does not support locks ({e.strerror or e}); "
                "use a workdir on a local disk or NFS"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
