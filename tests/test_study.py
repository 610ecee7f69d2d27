"""cloudjax.study and cloudjax.evaluation: the plateau rule, the bfloat16 EMA snapshots and the bootstrap intervals
the studies share."""

import json

import jax
import numpy as np
import pytest

from cloudjax import evaluation, study


@pytest.mark.parametrize("tail, plateau", [(0.0, True), (0.01, True), (0.05, False)])
def test_loss_summary_calls_a_plateau_by_the_last_fifth_of_the_steps(tmp_path, tail, plateau):
    """A loss that falls fast and then by ``tail`` (relative) over the last 20 % of the steps; noise is smoothed."""
    rng = np.random.default_rng(0)
    steps = np.arange(50, 10_001, 50)
    loss = 0.3 + 0.7 * np.exp(-steps / 800) - tail * 0.3 * np.clip((steps - 8000) / 2000, 0, 1)
    loss = loss * (1 + 0.01 * rng.standard_normal(len(steps)))
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(
            json.dumps({"step": int(s), "loss": float(v), "images_per_s": 100.0 + (s == 50) * 1e4}) + "\n"
            for s, v in zip(steps, loss, strict=True)
        )
    )
    summary = study.loss_summary(path, batch_size=64)
    assert summary["steps"] == 10_000 and summary["images"] == 640_000 and summary["plateau"] is plateau
    assert summary["loss_first"] > summary["loss_at_80pct"] >= summary["loss_final"] * (1 - 0.01)
    assert summary["seconds_per_image"] == 0.01  # the median rate, the first (compiling) record left out


def test_bf16_ema_round_trips_the_unet_parameters(tmp_path):
    from flax import nnx

    from cloudjax.models import UNet
    from cloudjax.train import TrainConfig

    config = TrainConfig(model="tiny", image_size=8)
    rng = np.random.default_rng(0)  # host arrays: eager jax would compile an op per parameter shape
    abstract = nnx.state(nnx.eval_shape(lambda: UNet(config.unet_config(), rngs=nnx.Rngs(0))))
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract)
    study.save_ema(tmp_path / "ema.npz", params, 7)
    _, loaded, step = study.load_ema(tmp_path / "ema.npz", config)
    assert step == 7
    for a, b in zip(jax.tree.leaves(study.as_bf16(params)), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # rounding to bfloat16 keeps 8 significant bits, not more
    errors = [
        np.max(np.abs(np.asarray(a) - np.asarray(b)) / (np.abs(np.asarray(a)) + 1e-30))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True)
    ]
    assert 0 < max(errors) <= 2**-8
    with pytest.raises(ValueError, match="tiny network"):
        study.load_ema(tmp_path / "ema.npz", TrainConfig(model="tiny", image_size=8, channels=3))


def test_score_intervals_are_centred_on_the_measured_value():
    """Bootstrap replicates of a distance are shifted by the bootstrap's bias: the interval brackets the value."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
    y = np.clip(x[::-1] * 0.8 + 0.1, 0, 1)
    fx = evaluation.features(x, None)
    values, draws = evaluation.score(fx, y, jax.random.key(0), None, swd_patches=256, bootstrap=20)
    for metric, v in draws.items():
        assert v.shape == (20,) and np.isclose(v.mean(), values[metric])
        low, high = evaluation.interval(v)
        assert low <= values[metric] <= high and high > low, metric


def test_a_stage_stopped_by_sigterm_ends_the_stages(tmp_path, monkeypatch):
    """The first stage's train() reports a preemption (checkpoint saved): no EMA is kept, no later stage starts."""
    import importlib

    from cloudjax.train import TrainConfig

    steps = []

    def preempted(config, workdir, source):
        steps.append(config.steps)
        return {"step": 1, "preempted": True, "timed_out": False}

    monkeypatch.setattr(importlib.import_module("cloudjax.train"), "train", preempted)
    config = TrainConfig.from_flat(dict(data="patches:64", image_size=8, model="tiny", steps=8, batch_size=4))
    with pytest.raises(InterruptedError, match="stopped at step 1"):
        study.train_stages(config, tmp_path / "run", np.zeros((16, 8, 8, 1), np.float32))
    assert steps == [2] and not list(tmp_path.glob("run/ema_bf16*"))
