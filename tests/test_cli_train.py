"""`cloudjax train / sample / demo`: a killed run restores, SIGTERM checkpoints the current step,
sampling is deterministic per seed, user mistakes give one line and a non-zero exit.

The two training subprocesses share a persistent compilation cache, so only the first compiles.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cloudjax.cli import main
from cloudjax.train import load_run

TRAIN = ["train", "--data", "patches:256", "--image-size", "8", "--batch-size", "8", "--model", "tiny"]
TRAIN += ["--steps", "100000", "--lr", "1e-3", "--warmup-steps", "0", "--log-every", "1"]


def _wait(condition, proc, timeout=400.0):
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited early with status {proc.returncode}"
        assert time.monotonic() < end, "timed out waiting for the training subprocess"
        time.sleep(0.2)


def _checkpoints(workdir):
    """Finalised checkpoint steps (Orbax renames a step's temporary folder to the bare number when complete)."""
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.fixture(scope="module")
def killed_then_terminated(tmp_path_factory):
    """Train in a subprocess, SIGKILL it mid-run, restore; resume in a second one, SIGTERM it."""
    workdir = tmp_path_factory.mktemp("run")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache"))}
    cmd = [sys.executable, "-m", "cloudjax.cli", *TRAIN, "--workdir", str(workdir)]
    with open(workdir.parent / "train.log", "w") as out:
        first = subprocess.Popen([*cmd, "--checkpoint-every", "3"], env=env, stdout=out, stderr=out)
        try:
            _wait(lambda: len(_checkpoints(workdir)) >= 2, first)
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            first.kill()
    killed = _checkpoints(workdir)
    _, _, restored = load_run(workdir)

    log2 = workdir.parent / "resume.log"
    with open(log2, "w") as out:
        second = subprocess.Popen([*cmd, "--checkpoint-every", "1000"], env=env, stdout=out, stderr=out)
        try:
            _wait(lambda: f"step {int(restored.step) + 2}/" in log2.read_text(), second)
            second.send_signal(signal.SIGTERM)
            status = second.wait(timeout=120)
        finally:
            second.kill()
    return dict(workdir=workdir, killed=killed, restored=restored, status=status, log=log2)


def test_sigkill_leaves_a_checkpoint_that_restores(killed_then_terminated):
    run = killed_then_terminated
    step = int(run["restored"].step)
    assert step == run["killed"][-1] and step % 3 == 0 and step >= 3
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run["restored"].params))


def test_sigterm_saves_the_current_step_and_exits_143(killed_then_terminated):
    run = killed_then_terminated
    assert run["status"] == 143
    last = _checkpoints(run["workdir"])[-1]
    assert last > int(run["restored"].step) + 1 and last % 1000 != 0  # saved where SIGTERM found it
    assert f"SIGTERM: saved checkpoint at step {last}" in run["log"].read_text()
    # metrics: every step once; the records the killed run wrote after its last checkpoint were replaced
    assert _logged_steps(run["workdir"]) == list(range(1, last + 1))


def test_sample_is_deterministic_per_seed(killed_then_terminated, tmp_path):
    workdir = str(killed_then_terminated["workdir"])
    base = ["sample", "--workdir", workdir, "--num", "4", "--steps", "3", "--method", "ddim"]
    assert main([*base, "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--seed", "1", "--out", str(tmp_path / "b.png")]) == 0
    assert main([*base, "--seed", "2", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (np.load(tmp_path / f"{name}.npz")["images"] for name in "abc")
    assert a.shape == (4, 8, 8, 1) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert (tmp_path / "a.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--workdir", "W", "--noise", "pink"], "invalid choice"),
        (["train", "--workdir", "W", "--batch-size", "0"], "batch_size must be"),
        (["train", "--workdir", "W", "--data", "nonexistent"], "unknown spec"),
        (["train", "--workdir", "W", "--image-size", "7", "--model", "tiny"], "divisible by 2"),
        (["train", "--workdir", "W", "--delta", "-1", "--noise", "cloud"], "delta must be"),
        (["sample", "--workdir", "W", "--out", "x"], "holds no run"),
        (["sample", "--workdir", "W", "--out", "x", "--num", "0"], "--num"),
        (["demo", "--minutes", "0"], "--minutes"),
        (["train", "--workdir", "W", "--config", "missing.json"], "--config missing.json"),
        (["train", "--workdir", "W", "--process", "scale_space", "--resize", "nearest"], "invalid choice"),
        (["train", "--workdir", "W", "--process", "scale_space", "--levels", "2", "--num-steps", "0"], "num_steps"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_train_refuses_a_workdir_of_a_different_run(killed_then_terminated, capsys):
    argv = [*TRAIN, "--workdir", str(killed_then_terminated["workdir"]), "--noise", "cloud"]
    assert main(argv) == 2
    assert "holds a different run" in capsys.readouterr().err


CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "configs" / "train").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_files_give_their_settings_and_flags_override_them(path, tmp_path):
    """Each preset in experiments/configs/train is a valid ``--config``: the run's config holds every setting of
    the file except the flags given, which win; the scale-space settings the file does not name keep defaults."""
    from cloudjax.cli import build_parser
    from cloudjax.cli.runs import _train_config

    settings = json.loads(path.read_text())
    argv = ["train", "--config", str(path), "--workdir", str(tmp_path), "--steps", "7", "--seed", "3"]
    flat = _train_config(build_parser().parse_args(argv)).flat()
    expected = {k: v for k, v in settings.items() if k != "about"} | {"steps": 7, "seed": 3}
    assert {k: flat[k] for k in expected} == expected


def test_scale_space_steps_and_resize_reach_the_process(tmp_path):
    from cloudjax.train import TrainConfig

    config = TrainConfig.from_flat(
        dict(process="scale_space", levels=2, num_steps=200, resize="bilinear", image_size=8, model="tiny")
    )
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    process = config.process.build({}, (8, 8, 1))
    assert (process.num_steps, process.resize, process.levels) == (200, "bilinear", 2)
