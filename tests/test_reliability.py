"""Runs and numbers that never lie: verified checkpoints with fallback, the workdir lock (and a lock that cannot be
taken), atomic output files, the lr horizon, bad data, bad outputs and hand-edited run files refused, flags that do
not apply refused, one line for every user mistake and failure (a full disk, SIGTERM, a checkpoint deleted while it
is read), large Δ, streamed sampling, and the author's units of the Mahalanobis distance.

The training runs use test_train.py's CONFIG (tiny UNet, 8×8, batch 8), imported, so the jitted step is compiled
once per worker; damaged copies of one trained run folder stand in for the failures. What a process does when it
is signalled or its disk fills (its exit status, its output) is checked on a `cloudjax` subprocess.
"""

import dataclasses
import errno
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import CONFIG  # the same run config: its step compiles once per worker

import cloudjax as cj
from cloudjax import cli
from cloudjax._files import WorkdirBusy, WorkdirLockError, atomic_write, workdir_lock
from cloudjax.cli import sample as cli_sample
from cloudjax.cold import MAX_DEGRADATION_STEPS
from cloudjax.data.sources import ArraySource, FolderSource
from cloudjax.generate import generate
from cloudjax.stats import mahalanobis_weight
from cloudjax.train import Run, TrainConfig, TrainingDiverged, check_workdir, load_run, train

checkpoints = importlib.import_module("cloudjax.train.checkpoints")
loop = importlib.import_module("cloudjax.train.loop")


def _source(seed=0):
    return ArraySource(np.random.default_rng(seed).integers(0, 256, (64, 8, 8), dtype=np.uint8), 8, None)


def _max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder trained to step 4 with checkpoints 1 (Orbax saves the first step), 2 and 4; tests damage
    copies of it."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train(CONFIG, workdir, source=_source(), stream=io.StringIO())
    assert _steps(workdir) == [1, 2, 4]
    return workdir


@pytest.fixture(scope="module")
def step2(trained):
    return load_run(trained, step=2)[2]


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def _flip_bytes(step_dir):
    """Invert 64 bytes in the middle of every data file (a restore reads only some byte ranges of each)."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d" and path.stat().st_size > 1024:
            data = bytearray(path.read_bytes())
            middle = len(data) // 2
            data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
            path.write_bytes(bytes(data))


def _wrong_hash(step_dir):
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    (step_dir / "meta" / "metadata").write_text(json.dumps({**meta, "sha256": "0" * 64}))


def _delete_chunk(step_dir):
    chunks = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    max(chunks, key=lambda p: p.stat().st_size).unlink()


DAMAGE = {
    "flipped bytes": _flip_bytes,
    "no _METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "missing chunk": _delete_chunk,
    "garbled meta": lambda d: (d / "meta" / "metadata").write_text('{"step": 4, "data_st'),
    "wrong hash": _wrong_hash,
}


# 1, 2: a damaged checkpoint is detected, skipped with one line, and training resumes from the one before
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_skipped_for_the_newest_that_verifies(step2, copy, damage):
    DAMAGE[damage](copy / "checkpoints" / "4")
    log = io.StringIO()
    _, _, state = load_run(copy, stream=log)
    assert int(state.step) == 2 and _max_diff(state, step2) == 0.0
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("checkpoint 4 in") and "skipped" in lines[0]
    with pytest.raises(ValueError, match="checkpoint 4"):
        load_run(copy, step=4, stream=io.StringIO())


def test_training_resumes_from_the_checkpoint_before_a_damaged_one(trained, copy):
    _flip_bytes(copy / "checkpoints" / "4")
    summary = train(CONFIG, copy, source=_source(), stream=io.StringIO())
    assert summary["last_checkpoint"] == 4 and (copy / "damaged").is_dir()  # set aside, step 4 saved anew
    _, _, a = load_run(trained)
    _, _, b = load_run(copy)
    assert _max_diff(a, b) == 0.0  # exact resume from step 2


def test_the_content_hash_is_written_with_each_checkpoint(trained):
    meta = json.loads((trained / "checkpoints" / "4" / "meta" / "metadata").read_text())
    _, _, state = load_run(trained)
    assert meta["sha256"] == checkpoints._digest(state)[0]


# 3: non-finite flags are refused; a non-finite state is never written
@pytest.mark.parametrize("field, value", [("weight_decay", float("nan")), ("lr", float("inf")), ("clip_norm", np.inf)])
def test_non_finite_flags_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CONFIG, **{field: value})


def test_a_non_finite_state_is_never_checkpointed(tmp_path, monkeypatch):
    real = loop._cached_train_step

    def poisoned(*args):  # what a NaN weight decay did: the loss of step 1 is finite, its parameters are not
        step = real(*args)

        def run(state, batch, key):
            state, metrics = step(state, batch, key)
            return state.replace(params=nan_like(state.params)), metrics

        return run

    nan_like = jax.jit(lambda tree: jax.tree.map(lambda p: p * jnp.nan, tree))

    monkeypatch.setattr(loop, "_cached_train_step", poisoned)
    config = dataclasses.replace(CONFIG, steps=1, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="not finite after step 1.*last good checkpoint: none yet"):
        train(config, tmp_path, source=_source(), stream=io.StringIO())
    assert not (tmp_path / "checkpoints").exists() or _steps(tmp_path) == []


# 4: the workdir lock
def test_a_second_training_process_is_refused_in_one_line(copy, tmp_path, capsys):
    with workdir_lock(copy):
        with pytest.raises(WorkdirBusy, match="in use"):
            train(dataclasses.replace(CONFIG, steps=6), copy, source=_source(), stream=io.StringIO())
    assert _steps(copy) == [1, 2, 4] and json.loads((copy / "run.json").read_text())["config"]["steps"] == 4
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with workdir_lock(fresh):
        assert cli.main([*TRAIN, "--workdir", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by another training process" in err
    assert not (fresh / "run.json").exists()


def test_a_killed_process_leaves_no_lock_and_no_stale_temporary_folders(copy):
    code = "import sys, time; from cloudjax._files import workdir_lock\nwith workdir_lock(sys.argv[1]):\n"
    code += "    print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy):
            with workdir_lock(copy):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    stale = copy / "checkpoints" / "6.orbax-checkpoint-tmp-1796177310123"
    stale.mkdir()
    (stale / "part").write_text("cut short")
    summary = train(dataclasses.replace(CONFIG, steps=5), copy, source=_source(), stream=io.StringIO())
    assert summary["step"] == 5 and not stale.exists()


def test_a_reader_follows_a_checkpoint_deleted_while_it_reads(trained, copy, monkeypatch):
    # `sample` during training with --keep 1: the newest step is deleted after a newer one is saved
    shutil.rmtree(copy / "checkpoints" / "4")
    real, calls = checkpoints._restore, []

    def racing(manager, step, *args):
        if not calls:  # between listing and reading, training saves step 4 and deletes step 2
            shutil.copytree(trained / "checkpoints" / "4", copy / "checkpoints" / "4")
            shutil.rmtree(copy / "checkpoints" / "2")
        calls.append(step)
        return real(manager, step, *args)

    monkeypatch.setattr(checkpoints, "_restore", racing)
    log = io.StringIO()
    _, _, state = load_run(copy, stream=log)
    assert int(state.step) == 4 and calls == [2, 4] and log.getvalue() == ""


# 5: run files
def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["run.json"]


@pytest.mark.parametrize("text", ["", '{"config": {"image_size": 8', '{"config": {"nonsense": 1}}', "[]"])
def test_a_damaged_run_json_is_named_in_one_line(copy, capsys, text):
    (copy / "run.json").write_text(text)
    assert cli.main(["sample", "--workdir", str(copy), "--out", str(copy / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.json is damaged" in err and "Traceback" not in err


# 6: the lr horizon is part of the run
def test_extending_a_run_keeps_its_lr_horizon(trained, copy, tmp_path):
    extended = train(dataclasses.replace(CONFIG, steps=6), copy, source=_source(), stream=io.StringIO())
    straight = tmp_path / "straight"
    train(dataclasses.replace(CONFIG, steps=6, decay_steps=4), straight, source=_source(), stream=io.StringIO())
    _, _, a = load_run(copy)
    _, _, b = load_run(straight)
    assert extended["step"] == 6 and int(a.step) == int(b.step) == 6
    assert _max_diff(a, b) == 0.0
    assert json.loads((copy / "run.json").read_text())["config"]["decay_steps"] == 4
    with pytest.raises(ValueError, match="--steps 2 is below the run's step 6"):
        train(dataclasses.replace(CONFIG, steps=2), copy, source=_source(), stream=io.StringIO())
    with pytest.raises(ValueError, match="decay_steps: 4 → 8"):
        train(dataclasses.replace(CONFIG, steps=8, decay_steps=8), copy, source=_source(), stream=io.StringIO())


# 7: bad images
def test_damaged_images_are_skipped_with_one_warning_naming_them(tmp_path, caplog):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = bytearray((tmp_path / "1.png").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    (tmp_path / "1.png").write_bytes(bytes(data))
    (tmp_path / "3.png").write_bytes((tmp_path / "3.png").read_bytes()[:60])
    with caplog.at_level("WARNING", logger="cloudjax"):
        source = FolderSource(str(tmp_path), 8, None)
    assert source.num_examples == 2 and source.get(np.arange(2)).shape == (2, 8, 8, 1)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "skipped 2" in warnings[0] and "1.png" in warnings[0] and "3.png" in warnings[0]


# 8: the data's fingerprint
def test_resuming_on_other_data_is_refused(copy):
    fingerprint = json.loads((copy / "run.json").read_text())["data_fingerprint"]
    assert fingerprint.startswith("64 images of 8×8×1")
    with pytest.raises(ValueError, match="data differ from the run's"):
        train(dataclasses.replace(CONFIG, steps=6), copy, source=_source(seed=1), stream=io.StringIO())


# 9: one line for every user mistake
TRAIN = ["train", "--data", "patches:64", "--image-size", "8", "--batch-size", "8", "--model", "tiny", "--steps", "1"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--workdir", "{file}"], "is a file"),
        (["--workdir", "{file}/run"], "inside a file"),
        (["--workdir", "{tmp}/w", "--seed", str(2**70)], "argument --seed"),
        (["--workdir", "{tmp}/w", "--seed", "-1"], "argument --seed"),
        (["--workdir", "{tmp}/w", "--decay-steps", "-5"], "decay_steps"),
        (["--workdir", "{tmp}/w", "--lr", "inf"], "lr must be a finite"),
        (["--workdir", "{tmp}/w", "--weight-decay", "nan"], "weight_decay must be a finite"),
        (["--workdir", "{tmp}/w", "--data", "patches:1000000000"], "use at most patches:"),
        (["--workdir", "{tmp}/w", "--batch-size", str(10**9)], "larger than the data"),
        (["--workdir", "{tmp}/w", "--data", "npz:{const}", "--noise", "cloud"], "pass --delta"),
    ],
)
def test_train_mistakes_give_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "file").write_text("")
    np.savez(tmp_path / "const.npz", images=np.full((16, 8, 8), 0.5, np.float32))
    names = dict(file=tmp_path / "file", tmp=tmp_path, const=tmp_path / "const.npz")
    assert cli.main([*TRAIN, *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "w" / "run.json").exists()


def test_output_folders_are_checked_before_the_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    np.savez(tmp_path / "noise.npz", images=np.random.default_rng(0).random((16, 8, 8)).astype(np.float32))
    data = ["--data", f"npz:{tmp_path / 'noise.npz'}", "--image-size", "8"]
    assert cli.main(["stats", *data, "--out", str(tmp_path / "file" / "stats")]) == 2
    assert cli.main(["sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "file" / "s")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("--out" in line and "a file" in line for line in err)
    # iid noise fits Δ ≈ 0, possibly < 0: the report still completes, with the noise at max(Δ, 0)
    assert cli.main(["stats", *data, "--out", str(tmp_path / "stats")]) == 0
    report = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert report["noise_delta"] == max(report["delta"], 0.0) and abs(report["delta"]) < 0.3


# 10: large Δ
@pytest.mark.parametrize("delta", [20.0, 200.0])
def test_a_steep_power_law_stays_finite_with_unit_variance(delta):
    x = np.asarray(cj.power_law_noise(jax.random.key(0), (4096, 8, 8, 1), delta))
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x.var(axis=0).mean(), 1.0, rtol=0.1)
    variance = cj.PowerLawNoise(delta).fourier_variance(8, 8)
    assert np.isfinite(variance).all() and abs(variance.mean() - 1) < 1e-5


# 11: sampling in batches, streamed
def test_sample_draws_fixed_size_batches(trained, tmp_path, capsys):
    argv = ["sample", "--workdir", str(trained), "--num", "5", "--batch-size", "2", "--steps", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "s")]) == 0
    images = np.load(tmp_path / "s.npz")["images"]
    run, graphdef, state = load_run(trained)
    keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(3)]
    expected = np.concatenate([generate(run, graphdef, state.ema, k, 2, 1) for k in keys])[:5]
    assert images.shape == (5, 8, 8, 1) and np.array_equal(images, expected)
    assert (tmp_path / "s.png").stat().st_size > 0


def test_the_npz_is_streamed_with_memory_flat_in_the_count(tmp_path):
    batch = np.ones((16, 64, 64, 1), np.float32)  # 256 KiB
    for count in (4, 64):
        tracemalloc.start()
        cli_sample._write_npz(tmp_path / f"{count}.npz", (batch * i for i in range(count)), (16 * count, 64, 64, 1), {})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * batch.nbytes, peak
    images = np.load(tmp_path / "64.npz")["images"]
    assert images.shape == (1024, 64, 64, 1) and images[-1, 0, 0, 0] == 63


# 12: the denoiser's output and t are checked
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x, t: x[:1], "shape"),
        (lambda x, t: x[..., :1], "shape"),
        (lambda x, t: x.astype(jnp.complex64), "real"),
    ],
)
def test_a_wrong_denoiser_output_is_refused(bad, match):
    diffusion = cj.GaussianDiffusion()
    with pytest.raises(ValueError, match=f"denoise_fn must return .*{match}"):
        cj.sample(bad, diffusion, jax.random.key(0), (2, 8, 8, 3), steps=1)
    with pytest.raises(ValueError, match=f"apply_fn must return .*{match}"):
        diffusion.loss(bad, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))


@pytest.mark.parametrize("t", [2.0, -1.0, np.array([0.5, 1.5])])
def test_q_sample_refuses_t_outside_0_1(t):
    with pytest.raises(ValueError, match="t must be in"):
        cj.GaussianDiffusion().q_sample(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), t)


# 13: the author's units
def _author_distance(x, delta):
    """The author's d(x, 0) by his definition (Cloud Diffusion Part 1), from the full FFT: each conjugate pair of
    modes once as (Re Z)² + (Im Z)², each self-conjugate mode as Z², weighted by |k|^{2Δ} with |k| = index / (N − 1).
    """
    H, W = x.shape
    Z = np.fft.fft2(x, norm="ortho")
    i, j = np.meshgrid(np.fft.fftfreq(H) * H, np.fft.fftfreq(W) * W, indexing="ij")  # signed indices
    k = np.sqrt((i / (H - 1)) ** 2 + (j / (W - 1)) ** 2)
    self_conjugate = (i % H == (-i) % H) & (j % W == (-j) % W)
    weight = np.where(k > 0, k, 1.0) ** (2 * delta) * np.where(self_conjugate, 1.0, 0.5) * (k > 0)
    return np.sqrt(np.sum(weight * np.abs(Z) ** 2))


@pytest.mark.parametrize("shape", [(8, 8), (9, 9), (6, 7)])
def test_distances_in_the_authors_units(shape):
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    ours = cj.mahalanobis_distance(x, 0.0, 1.5, axes=(-2, -1), units="author")
    np.testing.assert_allclose(ours, [_author_distance(xi, 1.5) for xi in x], rtol=1e-5)
    plain = np.asarray(cj.mahalanobis_distance(x, 0.0, 1.5, axes=(-2, -1)))
    assert np.all(np.abs(np.asarray(ours) / plain * np.sqrt(2) - 1) > 0.01)  # ÷√2 is not the conversion


def test_two_white_96_px_images_are_27_3_apart_in_the_authors_units():
    # E d² = 2 Σ w for two independent white images; the paper reports 27.33 (STL-10, Δ = 1.5)
    expected = np.sqrt(2 * mahalanobis_weight(96, 96, 1.5, units="author").astype(np.float64).sum())
    assert abs(expected - 27.33) < 0.1
    white = jax.random.normal(jax.random.key(0), (64, 96, 96, 1))
    measured = float(cj.mahalanobis_between(white, None, 1.5, units="author"))
    assert abs(measured - 27.33) / 27.33 < 0.01


# 14: the second round of abuse
def _cli(*argv, file_limit=None, **kw):
    """``cloudjax ARGV`` in a fresh process: ``subprocess.Popen`` (text output); ``file_limit``: the largest file it
    may write in bytes (``ulimit -f``, SIGXFSZ ignored: a write beyond it fails like one on a full disk)."""
    cmd = [sys.executable, "-m", "cloudjax.cli", *map(str, argv)]
    env = dict(os.environ)
    if file_limit is not None:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its entries would hit the limit too
        cmd = ["sh", "-c", 'ulimit -f "$0" && trap "" XFSZ && exec "$@"', str(file_limit // 512), *cmd]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _one_line(err, expected=""):
    assert err.count("\n") == 1 and err.startswith("error:") and expected in err, err
    return err


@pytest.mark.parametrize("lock", ["folder", "dangling link"])
def test_a_lock_that_cannot_be_taken_stops_training_in_one_line(tmp_path, capsys, lock):
    workdir = tmp_path / "w"
    workdir.mkdir()
    if lock == "folder":
        (workdir / ".lock").mkdir()
    else:
        (workdir / ".lock").symlink_to(tmp_path / "gone" / "lock")
    assert cli.main([*TRAIN, "--workdir", str(workdir)]) == 2
    _one_line(capsys.readouterr().err, f"cannot lock workdir {workdir}")
    assert not (workdir / "run.json").exists()


def test_a_file_system_without_locks_is_refused(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(WorkdirLockError, match="does not support locks"):
        with workdir_lock(tmp_path):
            pass


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """A cold blur run (T = 20, restorations only) trained one step through the CLI."""
    workdir = tmp_path_factory.mktemp("cold") / "run"
    assert cli.main([*TRAIN, "--process", "cold", "--workdir", str(workdir)]) == 0
    return workdir


def test_restorations_are_written_whole(cold_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    argv = ["sample", "--workdir", str(cold_run), "--out", str(out), "--num", "2"]
    assert cli.main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"r.npz", "r.png"}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli.main([*argv, "--seed", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"error: {out}.png: No space left on device"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old files, no temporary ones


@pytest.mark.parametrize(
    "flags, expected",
    [(["--steps", "100"], "--steps must be in 1 … 20"), (["--t-start", "0.5"], "--t-start does not apply")],
)
def test_restoration_mistakes_give_one_line(cold_run, tmp_path, capsys, flags, expected):
    assert cli.main(["sample", "--workdir", str(cold_run), "--out", str(tmp_path / "r"), *flags]) == 2
    _one_line(capsys.readouterr().err, expected)
    assert list(tmp_path.iterdir()) == []


def test_stats_on_constant_images_gives_one_line(tmp_path, capsys):
    np.savez(tmp_path / "const.npz", images=np.full((16, 8, 8), 0.5, np.float32))
    argv = ["stats", "--data", f"npz:{tmp_path / 'const.npz'}", "--image-size", "8", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()  # the progress bar, then the error
    assert len(err) == 2 and err[-1].startswith("error: cannot measure the data's statistics: the images do not vary")


@pytest.mark.parametrize("T", [MAX_DEGRADATION_STEPS + 1, 10**9])
def test_the_degradation_steps_are_bounded_before_anything_of_size_t_is_made(T):
    tracemalloc.start()
    with pytest.raises(ValueError, match=f"degradation_steps must be in 1 … {MAX_DEGRADATION_STEPS}, got {T}"):
        TrainConfig.from_flat(dict(process="cold", degradation_steps=T))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20, peak


def test_scale_space_levels_are_stored_when_the_run_is_made(tmp_path, capsys):
    settings = dict(process="scale_space", model="small", image_size=16)
    config = TrainConfig.from_flat(settings)
    assert config.process.levels == 4 and TrainConfig.from_flat({**settings, "levels": 4}) == config
    (tmp_path / "run.json").write_text(Run(config, (0.5,), (0.2,)).to_json())
    assert json.loads((tmp_path / "run.json").read_text())["config"]["process"]["levels"] == 4
    assert check_workdir(TrainConfig.from_flat({**settings, "levels": 4}), tmp_path) is not None  # the same run
    # the default does not fit the tiny network: say so, and what to pass
    assert cli.main([*TRAIN, "--process", "scale_space", "--workdir", str(tmp_path / "w")]) == 2
    _one_line(capsys.readouterr().err, "the default levels=4 does not fit a network of 2 levels; pass --levels 1 … 2")


def test_a_full_disk_while_training_is_one_line(tmp_path):
    # the checkpoint's files (> 100 kB) cannot be written; Orbax's threads fail with tracebacks of their own
    proc = _cli(*TRAIN, "--steps", "2", "--checkpoint-every", "1", "--workdir", tmp_path / "w", file_limit=100_000)
    code, _, err = _finish(proc)
    assert code == 2 and "Traceback" not in err, err
    _one_line(err, "File too large")
    assert not any(p.name.isdigit() for p in (tmp_path / "w" / "checkpoints").iterdir())  # nothing half-written


def test_a_checkpoint_deleted_while_sample_reads_it_is_read_again_quietly(trained, copy, tmp_path):
    # `sample` while training runs with --keep 1: step 4 is deleted while its arrays are read, step 2 restores
    code = f"""
import shutil, sys, tensorstore
real = tensorstore.open
def racing(*args, **kwargs):
    shutil.rmtree({str(copy / "checkpoints" / "4")!r}, ignore_errors=True)
    return real(*args, **kwargs)
tensorstore.open = racing
from cloudjax.cli import main
sys.exit(main(sys.argv[1:]))
"""
    argv = ["sample", "--workdir", copy, "--out", tmp_path / "s", "--num", "2", "--steps", "1"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert np.load(tmp_path / "s.npz")["step"] == 2


@pytest.mark.parametrize(
    "edit",
    [
        {"std": [float("nan")]},
        {"std": [-0.2]},
        {"std": [0.0]},
        {"mean": [float("inf")]},
        {"delta": -1.0},
        {"delta": None},
        {"mean": [0.1, 0.2]},
        {"config": {"image_size": "8"}},
        {"config": {"blur_std": 3.0}},
        {"config": {"levels": 2}},
    ],
)
def test_a_hand_edited_run_json_is_refused(copy, capsys, edit):
    run = json.loads((copy / "run.json").read_text())
    run = {**run, **edit, "config": {**run["config"], **edit.get("config", {})}}
    (copy / "run.json").write_text(json.dumps(run))
    assert cli.main(["sample", "--workdir", str(copy), "--out", str(copy / "s")]) == 2
    _one_line(capsys.readouterr().err, "run.json is damaged")


def test_run_json_of_older_versions_keeps_loading(copy):
    # older versions stored one flat config, with the defaults of settings that did not apply to the run
    old = dict(degradation="blur", blur_routine="constant", blur_padding="circular", mask_initial=11.0)
    old.update(generation=False, gmm_components=1, levels=None, blur_std=None)
    run = json.loads((copy / "run.json").read_text())
    expected = Run.read(copy)
    (copy / "run.json").write_text(json.dumps({**run, "config": {**expected.config.flat(), **old}}))
    assert Run.read(copy) == expected


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--process", "cold", "--degradation", "mask", "--blur-std", "3"], "blur_std does not apply"),
        (["--process", "blurring", "--blur-std", "3"], "blur_std does not apply to process 'blurring'"),
        (["--process", "cold", "--noise", "cloud"], "noise does not apply to process 'cold'"),
        (["--levels", "2"], "levels does not apply to process 'gaussian'"),
        (["--delta", "1.5"], "delta does not apply to process 'gaussian' with noise 'white'"),
        (["--process", "cold", "--gmm-components", "2"], "gmm_components does not apply"),
        (["--process", "cold", "--degradation", "mask", "--mask-initial", "-5"], "mask_initial must be > 0, got -5.0"),
        (["--process", "cold", "--degradation", "mask", "--mask-std", "nan"], "mask_std must be a finite number"),
    ],
)
def test_flags_that_do_not_apply_or_are_wrong_are_named_in_one_line(tmp_path, capsys, flags, expected):
    assert cli.main([*TRAIN, "--workdir", str(tmp_path / "w"), *flags]) == 2
    err = _one_line(capsys.readouterr().err, expected)
    assert len(err) < 160, err  # the flag and its value, not the T values it gives


def _processes():
    return [cj.ColdDiffusion(cj.GaussianBlur.from_routine("constant", 4, 1.0, 3), 4), cj.BlurringDiffusion()]


@pytest.mark.parametrize("process", [*_processes(), cj.ScaleSpaceDiffusion(8, 2, num_steps=20)], ids=type)
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x, t, **kw: x[..., :1], "shape"),
        (lambda x, t, **kw: x[0], "shape"),
        (lambda x, t, **kw: x.astype(jnp.int32), "real floating-point"),
    ],
    ids=["channels", "batchless", "int32"],
)
def test_every_process_checks_the_network_output_in_its_loss(process, bad, match):
    with pytest.raises(ValueError, match=f"apply_fn must return .*{match}"):
        process.loss(bad, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))


def test_sample_refuses_a_shape_the_process_does_not_make():
    with pytest.raises(ValueError, match=r"shape \(2, 12, 12, 1\) does not match the process's image size"):
        cj.sample(lambda x, t, **kw: x, cj.ScaleSpaceDiffusion(16, 2), jax.random.key(0), (2, 12, 12, 1), steps=4)


@pytest.mark.parametrize("process", [cj.BlurringDiffusion(), cj.ScaleSpaceDiffusion(8, 2)], ids=type)
@pytest.mark.parametrize("t", [1.5, -0.5, float("nan")])
def test_q_sample_of_every_gaussian_process_refuses_t_outside_0_1(process, t):
    with pytest.raises(ValueError, match="t must be in"):
        process.q_sample(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), t)


def test_a_full_disk_while_sampling_is_one_line(trained, tmp_path):
    out = tmp_path / "s"
    proc = _cli("sample", "--workdir", trained, "--out", out, "--num", "64", "--steps", "1", file_limit=4096)
    code, _, err = _finish(proc)
    assert code == 1 and err == f"error: {out}.npz: File too large\n", err
    assert list(tmp_path.iterdir()) == []  # no part of a file, no temporary one


def test_sigterm_while_sampling_removes_the_temporary_file(trained, tmp_path):
    argv = ["sample", "--workdir", trained, "--out", tmp_path / "s", "--num", "10000000", "--steps", "1"]
    proc = _cli(*argv, "--batch-size", "8")
    end = time.monotonic() + 300
    while not list(tmp_path.glob(".s.npz.*.tmp")):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 143 and err == "terminated\n", err
    assert list(tmp_path.iterdir()) == []


def test_a_nan_start_time_is_one_line_and_nothing_else(trained, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["sample", "--workdir", str(trained), "--out", str(tmp_path / "s"), "--t-start", "nan"]) == 2
    _one_line(capsys.readouterr().err, "argument --t-start: must be a number in (0, 1], got nan")


def test_the_mean_prior_refuses_non_finite_images():
    images = np.zeros((4, 8, 8, 1), np.float32)
    images[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="images must be finite, got 1 NaN"):
        cj.MeanPrior.fit(images)


def test_a_mask_with_a_bad_initial_names_it_and_its_value_only():
    with pytest.raises(ValueError, match=r"^initial must be finite and > 0, got -5$"):
        cj.GaussianMask.linear(50, 0.1, -5)
