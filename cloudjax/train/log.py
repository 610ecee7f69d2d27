"""metrics.jsonl, TensorBoard and the progress line; the preemption flag."""

from __future__ import annotations

import json
import math
import signal
import threading

import jax
import numpy as np
from etils.epath import Path  # local paths and buckets (gs://, s3://) alike, as Orbax uses

from cloudjax._files import atomic_write


class _Logger:
    """metrics.jsonl (process 0), TensorBoard events if tensorboardX is installed, a line on stderr.

    Records after ``start`` (written by a run that was killed before its next checkpoint) are dropped. The
    TensorBoard writer is made at the first record (importing tensorboardX takes seconds: not before step 1).
    """

    def __init__(self, workdir: Path, enabled: bool, stream, start: int):
        self.enabled, self.stream, self.workdir = enabled, stream, workdir
        path = workdir / "metrics.jsonl"
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if _record_step(line) <= start]
            atomic_write(path, "".join(line + "\n" for line in kept))
        self.file = path.open("a") if enabled else None
        self.tb = None

    def write(self, record: dict, line: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is None:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:
                self.tb = False
        if self.tb:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb:
            self.tb.close()


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut short by a kill


class _StopFlag:
    """Set by SIGTERM (preemption) while training. Processes agree on it every :attr:`every` steps (an all-gather
    across hosts; a single process reads it every step), so every process stops at the same step."""

    every = 10

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, step: int) -> bool:
        """Whether to stop after ``step``: this process's flag alone, or every process's at multiples of ``every``."""
        if jax.process_count() == 1:
            return self.set
        if step % self.every:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.int32(self.set)).max())


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
