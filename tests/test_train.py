"""Trainer: sharded step = single-device step, exact resume after preemption, NaN stop, config checks.

Every run here uses one config (tiny UNet, 8×8, batch 8), so the jitted step compiles once for the file.
"""

import dataclasses
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.data.sources import ArraySource
from cloudjax.train import (
    TrainConfig,
    TrainingDiverged,
    init_state,
    load_run,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from cloudjax.train.checkpoints import _manager, _restore
from cloudjax.train.run import _measure, check_workdir
from cloudjax.train.step import _cached_train_step

SETTINGS = dict(
    data="test",
    model="tiny",
    image_size=8,
    batch_size=8,
    steps=4,
    lr=1e-3,
    warmup_steps=0,
    noise="cloud",
    delta=1.0,
    loss_weighting="mahalanobis",
    checkpoint_every=2,
    log_every=1,
    normalizer_examples=64,
)
CONFIG = TrainConfig.from_flat(SETTINGS)


def _images(n=64):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8), dtype=np.uint8)


class _Source(ArraySource):
    """64 random 8×8 images; ``get`` call number ``at`` sends SIGTERM or returns NaN images.

    A new run reads the normaliser sample first (call 0), then the batch of step s in call s, read while
    step s - 1 runs (the first before any step).
    """

    def __init__(self, at=None, action=None):
        super().__init__(_images(), 8, None)
        self.calls, self.at, self.action = 0, at, action

    def get(self, indices):
        x = super().get(indices)
        self.calls += 1
        if self.calls - 1 == self.at:
            if self.action == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                x = np.full_like(x, np.nan)
        return x


def _max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def test_sharded_step_equals_single_device_step(monkeypatch):
    """The sharded step gives the single-device step's loss and parameters, and each is traced once for its two
    calls: a retrace (a state or key placed differently after the
    first, donated step) would compile again every step, which ``chex.assert_max_traces`` on the loss catches."""
    assert jax.device_count() == 8
    mesh = make_mesh()
    run = _measure(CONFIG, _Source())
    chex.clear_trace_counter()
    monkeypatch.setattr(type(run.diffusion), "loss", chex.assert_max_traces(type(run.diffusion).loss, n=2))
    batch = run.normalize(_Source().get(np.arange(8))).astype(np.float32)
    replicated = NamedSharding(mesh, P())
    key = jax.device_put(jax.random.key(3), replicated)  # placed as train() places it: one compile for the file
    graphdef, fresh = init_state(CONFIG, replicated)
    fresh = jax.tree.map(np.asarray, fresh)  # host copy: the steps donate their state
    # a second step moves every parameter (after the first only the zero-initialised output layer has gradients)
    one = jax.device_put(fresh, jax.devices()[0])
    single = make_train_step(graphdef, run.diffusion, make_optimizer(CONFIG), ema_decay=CONFIG.ema_decay)
    sharded = _cached_train_step(graphdef, run, mesh)  # the one train() uses below: compiled once
    key2 = jax.device_put(jax.random.key(4), replicated)
    one, m1 = single(one, batch, jax.device_put(key, jax.devices()[0]))
    one, m1 = single(one, batch, jax.device_put(key2, jax.devices()[0]))
    many = jax.device_put(fresh, replicated)
    data = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert len(data.sharding.device_set) == 8
    many, m8 = sharded(many, data, key)
    many, m8 = sharded(many, data, key2)
    assert abs(float(m1["loss"]) - float(m8["loss"])) < 1e-5
    assert _max_diff(one.params, many.params) < 1e-5
    assert _max_diff(one.ema, many.ema) < 1e-5
    assert _max_diff(one.params, fresh.params) > 1e-4  # the steps did move the parameters


def test_preempted_run_resumes_to_the_same_parameters(tmp_path):
    straight = train(CONFIG, tmp_path / "straight", source=_Source())
    assert straight["step"] == 4 and not straight["preempted"]

    # SIGTERM arrives while the batch of step 3 is read: step 2 finishes, is checkpointed, training stops.
    first = train(CONFIG, tmp_path / "resumed", source=_Source(at=3, action="sigterm"))
    assert first["preempted"] and first["step"] == 2 and first["last_checkpoint"] == 2
    second = train(CONFIG, tmp_path / "resumed", source=_Source())
    assert second["step"] == 4 and not second["preempted"]

    _, _, a = load_run(tmp_path / "straight")
    _, _, b = load_run(tmp_path / "resumed")
    assert int(a.step) == int(b.step) == 4
    assert _max_diff(a.params, b.params) < 1e-6
    assert _max_diff(a.ema, b.ema) < 1e-6
    assert _max_diff(a.opt_state, b.opt_state) < 1e-6
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # steps 1, 2 before the preemption, 3, 4 after
    events = sorted((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2 and all(e.stat().st_size > 100 for e in events)  # one writer per run, with scalars


def test_sigterm_checkpoints_the_current_step(tmp_path):
    # SIGTERM while the batch of step 4 is read, during step 3 (not a checkpoint step): the checkpoint is step 3.
    result = train(CONFIG, tmp_path, source=_Source(at=4, action="sigterm"))
    assert result["preempted"] and result["step"] == 3 and result["last_checkpoint"] == 3
    _, _, state = load_run(tmp_path)
    assert int(state.step) == 3 and len(state.params["stem"]["kernel"].sharding.device_set) == 8
    # the same checkpoint restored onto 2 devices (the abstract target carries the new sharding)
    two = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("data",)), P())
    manager = _manager(tmp_path, CONFIG)
    small, meta = _restore(manager, 3, CONFIG, two)
    manager.close()
    assert meta["data_step"] == 3 and len(small.params["stem"]["kernel"].sharding.device_set) == 2
    assert _max_diff(small, state) == 0.0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # the batch of step 3 is NaN; steps 1-2 are good and step 2 is checkpointed.
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3.*last good checkpoint: step 2"):
        train(CONFIG, tmp_path, source=_Source(at=3, action="nan"))
    _, _, state = load_run(tmp_path)
    assert int(state.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_a_different_run_in_the_same_workdir_is_refused(tmp_path):
    (tmp_path / "run.json").write_text(_measure(CONFIG, _Source()).to_json())
    with pytest.raises(ValueError, match="holds a different run.*noise"):
        train(TrainConfig.from_flat({**SETTINGS, "noise": "white", "delta": None}), tmp_path, source=_Source())
    moved = TrainConfig.from_flat({**SETTINGS, "data_dir": "/elsewhere"})  # the same data moved: the same run
    assert check_workdir(moved, tmp_path).config.data_dir == "/elsewhere"


def test_calibrated_schedule_shifts_the_snr_by_the_measured_ratio():
    t = np.array([0.2, 0.5, 0.8], np.float32)
    a, s = (np.asarray(v, np.float64) for v in _measure(CONFIG, _Source()).diffusion.alpha_sigma(t))  # cosine
    for noise, cloud_ratio in (("white", False), ("cloud", True)):
        delta = SETTINGS["delta"] if noise == "cloud" else None  # Δ applies to cloud noise only
        config = TrainConfig.from_flat({**SETTINGS, "schedule": "calibrated", "noise": noise, "delta": delta})
        run = _measure(config, _Source())
        ratio = run.measurements["snr_ratio"]
        assert (abs(ratio - 1) > 0.05) == cloud_ratio  # white noise is its own reference: ratio 1
        a2, s2 = (np.asarray(v, np.float64) for v in run.diffusion.alpha_sigma(t))
        np.testing.assert_allclose((a2 / s2) ** 2, ratio * (a / s) ** 2, rtol=1e-4)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("grad_accum", 3, "grad_accum=3 must divide"),
        ("noise", "pink", "noise must be"),
        ("model", "huge", "model must be one of"),
        ("image_size", 7, "divisible by 2"),
        ("delta", -1.0, "delta must be"),
        ("schedule", "sigmoid", "schedule must be"),
    ],
)
def test_bad_config_raises_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_flat({**SETTINGS, field: value})


class _DeterministicLoss:
    """A loss without randomness: its value on a batch is the mean of its values on equal micro-batches."""

    def loss(self, apply_fn, key, x0):
        return jnp.mean((apply_fn(0.5 * x0, jnp.full(x0.shape[:1], 0.5)) - x0) ** 2)


def test_grad_accumulation_equals_the_one_pass_step():
    config = dataclasses.replace(CONFIG, dropout=0.0, batch_size=4)
    graphdef, fresh = init_state(config)
    fresh = jax.tree.map(np.asarray, fresh)
    batch = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype(np.float32)
    runs = []
    for accum in (1, 2):
        step = make_train_step(
            graphdef, _DeterministicLoss(), make_optimizer(config), ema_decay=config.ema_decay, grad_accum=accum
        )
        state = jax.tree.map(jnp.asarray, fresh)
        # the same math without LLVM's optimisation: half the compile time
        step = step.lower(state, batch, jax.random.key(0)).compile({"xla_backend_optimization_level": 0})
        metrics = []
        for _ in range(2):  # the second step moves every parameter
            state, m = step(state, batch, jax.random.key(0))
            metrics.append(m)
        runs.append((state, metrics))
    (one, m1), (two, m2) = runs
    for a, b in zip(m1, m2, strict=True):
        np.testing.assert_allclose(float(a["loss"]), float(b["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(a["grad_norm"]), float(b["grad_norm"]), rtol=1e-5)
    assert _max_diff(one.params, two.params) < 1e-6
    assert _max_diff(one.params, fresh.params) > 1e-4
