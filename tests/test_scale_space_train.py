"""A new user's two commands on the generalised processes: `cloudjax train --process scale_space | blurring`, then
`cloudjax sample`; level mistakes are one line with exit status 2."""

import json

import numpy as np
import pytest

import cloudjax as cj
from cloudjax.cli import main
from cloudjax.train import load_run

TRAIN = ["train", "--data", "patches:64", "--image-size", "8", "--batch-size", "8", "--model", "tiny"]
TRAIN += ["--steps", "3", "--lr", "1e-3", "--warmup-steps", "0", "--log-every", "1"]


@pytest.mark.parametrize(
    "process, flags, kind",
    [("scale_space", ["--levels", "2"], cj.ScaleSpaceDiffusion), ("blurring", [], cj.BlurringDiffusion)],
)
def test_train_then_sample_from_the_command_line(process, flags, kind, tmp_path):
    workdir = tmp_path / "run"
    assert main([*TRAIN, "--process", process, *flags, "--workdir", str(workdir)]) == 0
    run, _, state = load_run(workdir)
    assert run.config.process.kind == process and isinstance(run.diffusion, kind) and int(state.step) == 3
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and np.isfinite(losses).all()
    if process == "scale_space":
        stages = [run.diffusion.state_shape((1, 8, 8, 1), stage) for stage in range(2)]
        assert stages == [(1, 4, 4, 1), (1, 8, 8, 1)]  # sampling starts at the coarse level
    samples = []  # the ancestral sampler on these processes: tests/test_scale_space.py, tests/test_blurring.py
    for run_number in range(2):
        out = tmp_path / f"ddim{run_number}"
        argv = ["sample", "--workdir", str(workdir), "--out", str(out), "--num", "4", "--steps", "5"]
        assert main([*argv, "--method", "ddim"]) == 0
        samples.append(np.load(out.with_suffix(".npz"))["images"])
        assert samples[-1].shape == (4, 8, 8, 1) and np.isfinite(samples[-1]).all()  # full resolution at the end
    np.testing.assert_array_equal(samples[0], samples[1])  # the same seed: the same samples


@pytest.mark.parametrize(
    "flags, message",
    [(["--levels", "3"], "levels must be in 1 … 2"), (["--levels", "0"], "levels must be in 1 … 2")],
)
def test_level_mistakes_print_one_line_and_exit_2(flags, message, tmp_path, capsys):
    argv = [*TRAIN, "--process", "scale_space", "--workdir", str(tmp_path / "w"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_model_levels_deepen_or_cut_the_preset_for_more_scale_space_levels():
    """``tiny`` has 2 levels; ``model_levels=3`` repeats its last width, so 3 scale-space levels fit (as the
    error above says), and run.json keeps it. Cutting ``small`` to 1 level takes its attention level with it."""
    from cloudjax.train import Run, TrainConfig

    settings = dict(image_size=8, model="tiny", process="scale_space", levels=3)
    with pytest.raises(ValueError, match="levels must be in 1 … 2"):
        TrainConfig.from_flat(settings)
    config = TrainConfig.from_flat({**settings, "model_levels": 3})
    assert config.unet_config().channel_mults == (1, 2, 2) and config.process.levels == 3
    run = Run(config, mean=(0.0,), std=(1.0,))
    assert Run.from_json(run.to_json()).config == config
    cut = TrainConfig.from_flat(dict(image_size=8, model="small", model_levels=1)).unet_config()
    assert (cut.channel_mults, cut.attention_levels) == ((1,), ())
    with pytest.raises(ValueError, match="model_levels must be >= 1"):
        TrainConfig.from_flat(dict(image_size=8, model="tiny", model_levels=0))
