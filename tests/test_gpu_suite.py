"""`benchmarks/gpu_suite.sh --dry-run`: the one prepared GPU script runs every part at tiny sizes on the CPU."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import COMPILE_FLAGS
from test_white_vs_cloud import _check_rows

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_suite.sh"


def test_gpu_suite_dry_run_writes_every_part_under_one_folder(tmp_path):
    """``benchmarks/gpu_suite.sh --dry-run``: every part at tiny sizes on the CPU, each writing JSON under one
    folder, few enough files (8) to copy back from a GPU machine, every part run (none timed out or failed)."""
    out = tmp_path / "suite"
    env = os.environ | {"XLA_FLAGS": COMPILE_FLAGS}  # one CPU device: the machine it sizes for
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "noise.json",
        "suite.log",
        "train_step.json",
        "train_throughput.json",
        "white_vs_cloud.json",
        "white_vs_cloud.tar.gz",
    ]
    assert json.loads((out / "noise.json").read_text())["results"]
    step = json.loads((out / "train_step.json").read_text())["rows"]
    assert {r["noise"] for r in step} == {"white", "cloud"} and all(r["step_seconds"] > 0 for r in step)
    assert json.loads((out / "train_throughput.json").read_text())["rows"][0]["images_per_second"] > 0
    study = json.loads((out / "white_vs_cloud.json").read_text())
    _check_rows(study["rows"], ["cloud"], ["ddim"], [3])
    assert study["config"]["train_steps"] == 4 and study["config"]["ema_decay"] == 0
    with tarfile.open(out / "white_vs_cloud.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("_metrics.png") for n in names) and any(n.endswith("/run.json") for n in names)
    assert ": exit " not in (out / "suite.log").read_text(), "a part failed"
