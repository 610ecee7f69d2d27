"""What the framework comparisons share: core settings, interleaved timing, the machine record, the JSON file.

A comparison runs once per core setting (``1``: pinned to one core with ``taskset``, both frameworks on one
thread; ``all``: every core), each in a fresh worker process so that JAX and PyTorch size their thread pools
for it. Inside a worker the candidates are timed in turns (A B C A B C ...) so that a change of load on a shared
machine hits all of them alike; rows report the median over the turns and the ratios use the medians.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    """The CPU, its core count, the load average and the library versions."""
    cpu = cpu_model()
    versions = {}
    for name in ("jax", "torch", "diffusers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return dict(
        cpu=cpu, cores=os.cpu_count(), platform=platform.platform(), python=platform.python_version(), **versions
    )


def threads() -> int:
    """Cores this process may run on (what ``taskset`` left)."""
    return len(os.sched_getaffinity(0))


def interleaved(candidates: dict[str, Callable[[], float]], turns: int) -> dict[str, list[float]]:
    """``{name: [seconds per unit, one per turn]}``; each turn calls every candidate once, in order."""
    times = {name: [] for name in candidates}
    for _ in range(turns):
        for name, fn in candidates.items():
            times[name].append(fn())
    return times


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[object], object]) -> Callable[[], float]:
    """A candidate: seconds per call of ``fn`` over ``repeats`` calls, ``sync`` waiting for the last result."""

    def run() -> float:
        tic = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        sync(out)
        return (time.perf_counter() - tic) / repeats

    return run


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_workers(script: str, argv: list[str], core_settings: list[str]) -> list[dict]:
    """Run ``script --worker --cores C argv`` for each core setting (``1`` under ``taskset -c <first core>``);
    collect the JSON rows each prints (one per line), echoing them."""
    rows = []
    for cores in core_settings:
        cmd = [sys.executable, script, "--worker", "--cores", cores, *argv]
        if cores == "1":
            if shutil.which("taskset") is None:
                print(json.dumps({"skipped": "cores=1: no taskset"}), flush=True)
                continue
            cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{") and '"framework"' in line:
                rows.append(json.loads(line))
        if proc.wait():
            raise SystemExit(f"worker for cores={cores} failed with status {proc.returncode}")
    return rows


def ratios(rows: list[dict], key: tuple[str, ...], value: str, ours: str = "cloudjax") -> list[dict]:
    """Per group of ``key`` fields: our median over the best other framework's (higher ``value`` is better)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in key), []).append(row)
    out = []
    for group, members in groups.items():
        mine = [r for r in members if r["framework"] == ours]
        others = [r for r in members if r["framework"] != ours]
        if mine and others:
            best = max(others, key=lambda r: r[value])
            ratio = mine[0][value] / best[value]
            out.append({**dict(zip(key, group, strict=True)), "vs": best["framework"], "ratio": round(ratio, 3)})
    return out


def write(path: Path, meta: dict, rows: list[dict], summary: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "ratios": summary, "rows": rows}, indent=1) + "\n")
    for line in summary:
        print(json.dumps(line))
    print(f"wrote {path}")
