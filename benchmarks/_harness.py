"""What the framework comparisons share: core settings, timing in turns, the machine record, the JSON file.

A comparison runs per core setting (``1``: pinned to one core with ``taskset``, every framework on one thread;
``all``: every core). By default each framework runs in a process of its own (:func:`alternate`): for every
configuration the frameworks take turns as whole processes, A B A B ... over ``turns`` rounds, so neither shares
its process, allocator or thread pools with the other and a change of load on a shared machine hits all alike.
``--one-process`` (:func:`compare`) times them in turns inside one worker process instead. Rows report the
median over the turns and the ratios use the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def _worker(script: str, argv: list[str], cores: str, env: dict | None = None) -> list[dict]:
    """Run ``script --worker --cores C argv`` (``C = 1`` under ``taskset -c <first core>``); the JSON rows it
    prints (one per line), echoed."""
    cmd = [sys.executable, script, "--worker", "--cores", cores, *argv]
    if cores == "1":
        if shutil.which("taskset") is None:
            print(json.dumps({"skipped": "cores=1: no taskset"}), flush=True)
            return []
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    rows = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("{") and '"framework"' in line:
            rows.append(json.loads(line))
    if proc.wait():
        raise SystemExit(f"worker {' '.join(cmd)} failed with status {proc.returncode}")
    return rows


def run_workers(script: str, argv: list[str], core_settings: list[str]) -> list[dict]:
    """One worker per core setting, the frameworks timed in turns inside it; the rows of all."""
    return [row for cores in core_settings for row in _worker(script, argv, cores)]


def alternate(
    script: str, configs: list[list[str]], frameworks: list[str], argv: list[str], cores: str, turns: int, value: str
) -> list[dict]:
    """Each framework in its own worker: per configuration (worker arguments), ``turns`` rounds of one process per
    framework (A B A B ...), each timing one turn; one row per framework and configuration, ``value`` the median
    over the rounds (``rounds_<value>``: each round's; ``load_average``: at the end of each). The workers share a
    fresh JAX compilation cache, so only the first round compiles."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="cloudjax-bench-") as cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
        rows = []
        for config in configs:
            rounds: dict[str, list[dict]] = {f: [] for f in frameworks}
            for _ in range(turns):
                for framework in frameworks:
                    args = [*config, *argv, "--frameworks", framework, "--turns", "1"]
                    rounds[framework] += _worker(script, args, cores, env)
            for done in rounds.values():
                if done:
                    values = [r[value] for r in done]
                    row = {k: v for k, v in done[0].items() if not k.startswith("turns_")}
                    loads = [r["load_average"] for r in done]
                    rows.append({**row, value: median(values), f"rounds_{value}": values, "load_average": loads})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


CONFIG = ("preset", "image_size", "cores", "mode")  # the fields that name a configuration's rows


def options(parser: argparse.ArgumentParser, frameworks: list[str]) -> None:
    """The options every comparison takes (core settings, turns, frameworks, process mode, output)."""
    parser.add_argument("--frameworks", nargs="+", default=frameworks)
    parser.add_argument("--cores", nargs="+", default=["1"], help="core settings: 1 (pinned), all")
    parser.add_argument("--turns", type=int, default=3, help="turns (rounds) per framework, A B A B ...")
    parser.add_argument("--one-process", action="store_true", help="all frameworks in one process, in turns")
    parser.add_argument("--merge", action="store_true", help="keep --out's rows of other configurations")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)


def compare(script: str, configs: list[list[str]], args, argv: list[str], value: str) -> list[dict]:
    """Every core setting in ``args.cores``: the frameworks each in their own processes (:func:`alternate`), or
    with ``args.one_process`` in turns inside one worker per configuration; rows tagged with their ``mode``."""
    rows = []
    for cores in args.cores:
        if args.one_process:
            turns = ["--frameworks", *args.frameworks, "--turns", str(args.turns)]
            new = [row for config in configs for row in _worker(script, [*config, *argv, *turns], cores)]
        else:
            new = alternate(script, configs, args.frameworks, argv, cores, args.turns, value)
        rows += [{**row, "mode": "one_process" if args.one_process else "processes"} for row in new]
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


def write(path: Path, meta: dict, rows: list[dict], summary: list[dict], merge: tuple[str, ...] = ()) -> None:
    """Write ``{"meta", "ratios", "rows"}``. With ``merge`` (the fields naming a configuration) rows of an existing
    file for configurations this run did not measure are kept (a long comparison split into several runs)."""
    if merge and path.exists():
        old = json.loads(path.read_text())
        ours = {tuple(r[k] for k in merge) for r in rows}
        kept = [r for r in old["rows"] if tuple(r.get(k) for k in merge) not in ours]
        summary = [s for s in old["ratios"] if tuple(s.get(k) for k in merge) not in ours] + summary
        rows, meta = kept + rows, {**meta, "earlier_runs": old["meta"].get("earlier_runs", []) + [old["meta"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "ratios": summary, "rows": rows}, indent=1) + "\n")
    for line in summary:
        print(json.dumps(line))
    print(f"wrote {path}")


def save(result: dict, name: str, platform: str, out: str | None = None) -> Path:
    """Write ``result`` to ``out`` or ``results/<name>_<platform>.json``; returns the path."""
    path = Path(out) if out else RESULTS / f"{name}_{platform}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (``jax.jit(f).lower(...).compile()``), None where it gives none."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None
