"""A one-line progress bar on stderr: count/total, rate and ETA, redrawn in place on a terminal.

When the stream is not a terminal (logs, CI) it prints only the final line.
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``with Progress(total, "stats") as bar: bar.update(n)``; also usable as a ``callback(n)``."""

    def __init__(self, total: int, desc: str = "", stream=None, width: int = 24, min_interval: float = 0.1):
        self.total, self.desc, self.width, self.min_interval = int(total), desc, width, min_interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count = 0
        self.start = self._drawn = self._updated = time.perf_counter()

    def line(self) -> str:
        elapsed = self._updated - self.start  # the rate of the work, not of what follows it
        rate = self.count / elapsed if elapsed > 0 else 0.0
        frac = min(self.count / self.total, 1.0) if self.total > 0 else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = _clock((self.total - self.count) / rate) if rate > 0 and self.count < self.total else "0:00"
        return f"{self.desc} [{bar}] {self.count}/{self.total} {rate:.1f}/s ETA {eta}".lstrip()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self._updated = time.perf_counter()
        if self.tty and now - self._drawn >= self.min_interval:
            self._drawn = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    __call__ = update

    def close(self) -> None:
        self.stream.write(("\r" if self.tty else "") + self.line() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
