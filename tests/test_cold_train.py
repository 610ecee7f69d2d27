"""Cold runs end to end: a tiny blur-generation model trained through `cloudjax.train`; on that run the L1 loss
falls, run.json keeps the mean prior, `cloudjax sample` generates and restores (degraded | direct | Algorithm 1 |
Algorithm 2 | original), and user mistakes in the cold flags are one line with exit status 2.

The whole file trains one 8×8 model once (the module fixture); the CLI reuses its compiled samplers.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cloudjax.cli import main
from cloudjax.train import TrainConfig, load_run, train

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A blur-generation model trained 30 steps on 8×8 patches."""
    workdir = tmp_path_factory.mktemp("cold_blur")
    config = TrainConfig.from_flat(
        dict(
            data="patches:64",
            image_size=8,
            model="tiny",
            batch_size=8,
            steps=30,
            lr=1e-3,
            warmup_steps=3,
            checkpoint_every=30,
            log_every=3,
            normalizer_examples=64,
            process="cold",
            degradation="blur",
            generation=True,
        )
    )
    train(config, workdir, stream=None)
    return workdir


def test_l1_loss_falls_and_run_json_keeps_the_mean_prior(workdir):
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 10 and losses[-1] < 0.8 * losses[0]
    run, _, state = load_run(workdir)
    spec = run.config.process
    assert (spec.kind, spec.generation, spec.loss_weighting) == ("cold", True, "l1")
    prior = run.measurements["mean_prior"]
    assert int(state.step) == 30 and len(prior["weights"]) == 1 and 0 < prior["noise"] < 0.01
    process = run.diffusion
    assert process.steps == 20 and process.mean_prior.weights == tuple(prior["weights"])
    x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 1)), jnp.float32)
    np.testing.assert_allclose(process.degrade(x, jnp.full((2,), 20)).std(axis=(1, 2)), 0, atol=1e-6)


def test_sample_generates_and_restores(workdir, tmp_path):
    workdir = str(workdir)
    assert main(["sample", "--workdir", workdir, "--out", str(tmp_path / "gen"), "--num", "4"]) == 0
    generated = np.load(tmp_path / "gen.npz")
    assert generated["images"].shape == (4, 8, 8, 1) and str(generated["method"]) == "cold"
    assert np.ptp(generated["images"], axis=(1, 2)).min() > 1e-3  # not flat: the restorer added detail
    # two pairs of different images with equal means: D(x, T) is their mean, so every restoration agrees per pair
    rng = np.random.default_rng(1)
    a = rng.random((2, 8, 8, 1)).astype(np.float32) * 0.5
    b = rng.random((2, 8, 8, 1)).astype(np.float32) * 0.5
    b += a.mean(axis=(1, 2), keepdims=True) - b.mean(axis=(1, 2), keepdims=True)
    np.savez(tmp_path / "pairs.npz", images=np.concatenate([a, b]))
    argv = ["sample", "--workdir", workdir, "--out", str(tmp_path / "r.png"), "--num", "4", "--restore"]
    assert main([*argv, "--data", "nonexistent"]) == 2  # one line, no traceback
    assert main([*argv, "--data", f"npz:{tmp_path / 'pairs.npz'}"]) == 0
    out = np.load(tmp_path / "r.npz")
    order = np.argsort(out["original"].mean(axis=(1, 2, 3)), kind="stable")
    first, second = order[[0, 2]], order[[1, 3]]  # pairs have equal means
    assert np.abs(out["original"][first] - out["original"][second]).max() > 0.1
    for name in ("degraded", "direct", "cold_naive", "cold"):
        np.testing.assert_allclose(out[name][first], out[name][second], atol=1e-5)
    assert np.abs(out["direct"] - out["degraded"]).max() > 1e-3
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--degradation", "snow"], "invalid choice"),
        (["--degradation-steps", "0"], "steps must be"),
        (["--blur-kernel", "9"], "blur_kernel 9 is larger"),
        (["--prediction", "eps"], "prediction does not apply to process 'cold'"),
        (["--loss-weighting", "mahalanobis"], "loss_weighting must be one of ['l1', 'l2']"),
        (["--degradation", "decolor"], "needs channels=3"),
        (
            ["--degradation", "mask", "--generation"],
            "generation does not apply to process 'cold' with degradation 'mask'",
        ),
        (["--degradation", "downsample", "--degradation-steps", "4"], "halves 8 px"),
    ],
)
def test_cold_flag_mistakes_print_one_line_and_exit_2(flags, message, tmp_path, capsys):
    argv = ["train", "--workdir", str(tmp_path / "w"), "--image-size", "8", "--model", "tiny", "--process", "cold"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
