"""Cold runs through the trainer and the CLI: the L1 loss of a tiny blur model falls, run.json keeps the mean
prior, `cloudjax sample` generates and restores (degraded | direct | Algorithm 1 | Algorithm 2 | original),
and user mistakes in the cold flags are one line with exit status 2.

One tiny 8×8 generation run (blur, last step to the mean) serves every test here.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cloudjax.cli import main
from cloudjax.data.sources import ArraySource
from cloudjax.train import RESTORATIONS, TrainConfig, load_run, train

CONFIG = TrainConfig(
    data="test",
    model="tiny",
    image_size=8,
    batch_size=8,
    steps=30,
    lr=2e-3,
    warmup_steps=0,
    process="cold",
    degradation="blur",
    degradation_steps=5,
    blur_std=1.0,
    blur_kernel=5,
    generation=True,
    gmm_components=2,
    checkpoint_every=30,
    log_every=5,
    normalizer_examples=64,
)


def _images(n=64):
    """Smooth random images: blurred noise plus a per-image brightness (two clusters of means)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8))
    x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2) + np.roll(x, (1, 1), (1, 2))) / 8
    level = np.where(np.arange(n) % 2, 0.3, 0.7)[:, None, None]
    return np.clip(level + x, 0, 1).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cold")
    summary = train(CONFIG, workdir, source=ArraySource(_images(), 8, 1), stream=None)
    return workdir, summary


def test_l1_loss_falls_and_run_json_keeps_the_mean_prior(cold_run):
    workdir, summary = cold_run
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 30 and losses[-1] < 0.7 * losses[0]
    run, _, state = load_run(workdir)
    assert run.config == CONFIG and int(state.step) == 30
    prior = run.mean_prior
    assert len(prior.weights) == 2 and 0 < prior.noise < 0.01
    # the two brightness clusters, in normalised units
    levels = np.sort(np.asarray(prior.means)[:, 0] * run.std[0] + run.mean[0])
    np.testing.assert_allclose(levels, [0.3, 0.7], atol=0.05)
    process = run.diffusion
    assert process.steps == 5 and process.mean_prior == prior
    flat = process.degrade(jnp.asarray(_images(2)), jnp.full((2,), 5))
    np.testing.assert_allclose(flat.std(axis=(1, 2)), 0, atol=1e-6)  # D(x, T) is the mean: the prior's domain


def test_sample_generates_and_restores(cold_run, tmp_path):
    workdir, _ = cold_run
    assert main(["sample", "--workdir", str(workdir), "--out", str(tmp_path / "gen"), "--num", "3"]) == 0
    generated = np.load(tmp_path / "gen.npz")
    assert generated["images"].shape == (3, 8, 8, 1) and str(generated["method"]) == "cold"
    assert np.ptp(generated["images"], axis=(1, 2)).min() > 1e-3  # not flat: the restorer added detail
    argv = ["sample", "--workdir", str(workdir), "--out", str(tmp_path / "r.png"), "--num", "2", "--restore"]
    assert main([*argv, "--data", "nonexistent"]) == 2  # one line, no traceback
    assert main([*argv, "--data", "patches:8"]) == 0
    out = np.load(tmp_path / "r.npz")
    run, _, _ = load_run(workdir)
    z = run.normalize(out["original"])
    degraded = run.denormalize(run.diffusion.degrade(jnp.asarray(z, jnp.float32), jnp.full((2,), 5)))
    np.testing.assert_allclose(out["degraded"], degraded, atol=1e-5)
    errors = {name: np.abs(out[name] - out["original"]).mean() for name in RESTORATIONS}
    assert errors["original"] == 0 and errors["direct"] < errors["degraded"]
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--degradation", "snow"], "invalid choice"),
        (["--degradation-steps", "0"], "steps must be"),
        (["--blur-kernel", "9"], "blur_kernel 9 is larger"),
        (["--prediction", "eps"], "prediction must be one of ['x0']"),
        (["--loss-weighting", "mahalanobis"], "loss_weighting must be one of ['l1', 'l2']"),
        (["--degradation", "decolor"], "needs channels=3"),
        (["--degradation", "mask", "--generation"], "generation needs degradation 'blur'"),
        (["--degradation", "downsample", "--degradation-steps", "4"], "halves 8 px"),
    ],
)
def test_cold_flag_mistakes_print_one_line_and_exit_2(flags, message, tmp_path, capsys):
    argv = ["train", "--workdir", str(tmp_path / "w"), "--image-size", "8", "--model", "tiny", "--process", "cold"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
