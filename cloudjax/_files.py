"""Run-folder safety: atomic file writes and the workdir lock.

``atomic_write`` writes a temporary file in the target's folder, fsyncs it and ``os.replace``\\ s it over the
target, so a reader (or a crash, or a full disk) sees the old file or the new one, never a part. ``workdir_lock``
holds an OS advisory lock (``fcntl.flock``) on ``workdir/.lock`` while a run trains: the kernel drops it when
the process ends however it ends, so a killed run leaves nothing stuck.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "WorkdirBusy", "workdir_lock"]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace ``path`` by ``data`` (text is UTF-8) all at once; on any error the old file is left as it was."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class WorkdirBusy(RuntimeError):
    """Another process is training in this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``workdir`` (a local folder) or raise :class:`WorkdirBusy` at once.

    Folders that are not local (``gs://`` …) or file systems without ``flock`` are not locked.
    """
    import fcntl

    try:
        fd = os.open(Path(workdir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (OSError, ValueError):  # not a local path
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"workdir {workdir} is in use by another training process") from None
        except OSError:  # no flock on this file system
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
