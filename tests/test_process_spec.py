"""Process specs (cloudjax.process.ProcessSpec): every registered spec speaks the protocol and round-trips through
run.json; runs made before specs (one flat config in run.json) load, sample and resume exactly as they did; a
process registered at run time (the README's "Adding a process") trains and samples through the ordinary code.

``data/old_runs`` holds three such runs (Gaussian cloud noise with the calibrated schedule, cold blur with
generation, scale space) and the references that code gives (``old_runs.py``).
"""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from old_runs import DATA, OLD_RUNS, TRAIN, isa

import cloudjax as cj
from cloudjax import registry
from cloudjax.cli import main
from cloudjax.generate import generate
from cloudjax.process import ProcessSpec
from cloudjax.train import Run, TrainConfig, check_workdir, load_run
from cloudjax.train.checkpoints import _digest

README = Path(__file__).resolve().parents[1] / "README.md"
# settings for the tiny network at 8 px where a process's defaults do not fit it, and variants worth a round trip
FITS = {"scale_space": {"levels": 2}}
VARIANTS = [
    ("gaussian", {"noise": "cloud", "delta": 1.0, "schedule": "calibrated", "prediction": "v"}),
    ("cold", {"generation": True, "gmm_components": 2}),
    ("cold", {"degradation": "mask"}),
    ("blurring", {"noise": "cloud"}),
]


def _config(name: str, **settings) -> TrainConfig:
    return TrainConfig.from_flat({"process": name, "model": "tiny", "image_size": 8, **FITS.get(name, {}), **settings})


@pytest.mark.parametrize("name", list(registry.PROCESSES))
def test_every_registered_spec_speaks_the_protocol(name):
    """The spec class of every registered name: its kind, defaults that make a spec, a config that resolves it
    (resolving again changes nothing), a network whose output has the images' shape, a process of the protocol
    that its default sampler drives, and settings that round-trip through the flat form."""
    spec_class = registry.process_spec(name)
    assert spec_class.kind == name and isinstance(spec_class(), ProcessSpec)
    config = _config(name)
    spec = config.process
    assert isinstance(spec, ProcessSpec) and spec.resolve(8, 1, config.unet_config()) == spec
    assert TrainConfig.from_flat(config.flat()) == config
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    process = spec.build(spec.measure(images, np.ones(1), 0), (8, 8, 1))
    assert isinstance(process, cj.ForwardProcess) and spec.sampler in registry.samplers_for(process.kind)
    assert isinstance(spec.generates, bool) and int(spec.sampler_steps) >= 1
    out = jax.eval_shape(lambda: config.network(nnx.Rngs(0))(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,))))
    assert out.shape == (2, 8, 8, 1)


@pytest.mark.parametrize(("name", "settings"), [(name, {}) for name in registry.PROCESSES] + VARIANTS)
def test_config_to_run_json_and_back_is_the_same_run(name, settings):
    """config → run.json (the process as {"kind", fields}, the measurements beside it) → the same config, run and
    process; check_workdir takes the config back."""
    config = _config(name, **settings)
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    run = Run(config, (0.5,), (0.2,), config.process.measure(images, np.full(1, 0.2), 0))
    saved = json.loads(run.to_json())
    assert saved["config"]["process"] == {"kind": name, **dataclasses.asdict(config.process)}
    assert settings.items() <= saved["config"]["process"].items()
    back = Run.from_json(run.to_json())
    assert back == run and back.config == config and TrainConfig.from_json(saved["config"]) == config
    assert jax.tree.structure(back.diffusion) == jax.tree.structure(run.diffusion)
    for a, b in zip(jax.tree.leaves(back.diffusion), jax.tree.leaves(run.diffusion), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_mistake_in_any_part_is_one_value_error_naming_the_setting():
    cases = [
        (dict(levels=2), "levels does not apply to process 'gaussian'"),
        (dict(lelves=2), "unknown setting 'lelves'"),
        (dict(process="cold", noise="cloud"), "noise does not apply to process 'cold'"),
        (dict(process="scale_space", levels=2, channels=3, noise="cloud"), "noise 'cloud' needs channels=1"),
        (dict(process="blurring", channels=3, noise="cloud"), "noise 'cloud' needs channels=1"),
        (dict(process="scale_space"), "the default levels=4 does not fit a network of 2 levels"),
        (dict(process="cold", degradation_steps=0), "degradation_steps must be in 1"),
        (dict(process="nope"), "process must be one of"),
        (dict(schedule="cosine", prediction="y"), "prediction must be one of"),
        (dict(sample_every=5, process="cold"), "sample_every needs a process that generates"),
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig.from_flat({"model": "tiny", "image_size": 8, **settings})


def test_rgb_cloud_scale_space_is_refused_before_the_workdir_is_touched(tmp_path, capsys):
    workdir = tmp_path / "w"
    argv = ["train", "--workdir", str(workdir), "--image-size", "8", "--model", "tiny", "--channels", "3"]
    assert main([*argv, "--process", "scale_space", "--levels", "2", "--noise", "cloud"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: noise 'cloud' needs channels=1") and err.count("\n") == 1
    assert not workdir.exists()


def test_committed_study_runs_of_the_older_format_load_with_their_processes_and_new_configs():
    """The white-vs-cloud study's runs (flat run.json): their processes are what they were trained with, and the
    config the study makes from its settings (a flat mapping) is the same run: check_workdir accepts it."""
    study = ("data", "image_size", "channels", "model", "dtype", "batch_size", "steps", "decay_steps", "lr")
    study += ("prediction", "warmup_steps", "checkpoint_every", "log_every", "ema_decay", "noise", "schedule")
    study += ("loss_weighting", "seed")
    runs = sorted((README.parent / "benchmarks" / "results" / "white_vs_cloud_converged" / "runs").glob("*"))
    flat = [p for p in runs if isinstance(json.loads((p / "run.json").read_text())["config"]["process"], str)]
    assert len(runs) == 8 and len(flat) == 4  # the patches runs; Fashion-MNIST's were trained again since
    for path in flat:
        old = json.loads((path / "run.json").read_text())
        run, c = Run.read(path), old["config"]
        process = run.diffusion
        assert isinstance(process, cj.GaussianDiffusion) and run.config.process.kind == "gaussian"
        assert (process.prediction, process.loss_weighting) == (c["prediction"], c["loss_weighting"])
        assert process.noise == (cj.WhiteNoise() if c["noise"] == "white" else cj.PowerLawNoise(old["delta"]))
        assert (c["schedule"] == "calibrated") == ("snr_ratio" in run.measurements)
        config = TrainConfig.from_flat({k: c[k] for k in study})
        assert check_workdir(config, path).config == config


@pytest.mark.parametrize("name", list(OLD_RUNS))
def test_runs_made_before_specs_load_sample_and_resume_the_same(name, tmp_path):
    workdir = tmp_path / name
    shutil.copytree(DATA / name, workdir)
    assert isinstance(json.loads((workdir / "run.json").read_text())["config"]["process"], str)  # the flat format
    run, graphdef, state = load_run(workdir)
    x = generate(run, graphdef, state.ema, jax.random.key(0), 4)
    np.testing.assert_array_equal(x, np.load(DATA / f"{name}_samples.npy"))  # float32-identical
    assert main([*TRAIN, *OLD_RUNS[name], "--steps", "3", "--workdir", str(workdir)]) == 0
    _, _, resumed = load_run(workdir)
    references = json.loads((DATA / "resumed_sha256.json").read_text())
    if isa() not in references:
        pytest.skip(f"the old code's resumed states are recorded on {sorted(references)} CPUs only, not {isa()}")
    assert _digest(resumed)[0] == references[isa()][name]


@pytest.fixture
def linear_variance(monkeypatch):
    """The README's "Adding a process" example, run: its spec registered for this test only."""
    monkeypatch.setattr(registry, "PROCESS_SPECS", dict(registry.PROCESS_SPECS))
    monkeypatch.setattr(registry, "PROCESSES", registry.PROCESS_SPECS.keys())
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scope = {"__name__": "readme_linear_variance"}
    exec(next(b for b in blocks if "LinearVarianceSpec" in b), scope)
    return scope


def test_a_process_registered_at_run_time_trains_and_samples_through_the_ordinary_code(linear_variance, tmp_path):
    workdir = tmp_path / "run"
    argv = [*TRAIN, "--process", "linear_variance", "--min-variance", "1e-3", "--steps", "2", "--workdir", str(workdir)]
    assert main(argv) == 0
    saved = json.loads((workdir / "run.json").read_text())["config"]["process"]
    assert saved == {"kind": "linear_variance", "min_variance": 1e-3}
    run, graphdef, state = load_run(workdir)
    assert isinstance(run.config.process, linear_variance["LinearVarianceSpec"]) and int(state.step) == 2
    out = tmp_path / "samples"
    assert main(["sample", "--workdir", str(workdir), "--out", str(out), "--num", "4", "--steps", "3"]) == 0
    samples = np.load(out.with_suffix(".npz"))
    assert samples["images"].shape == (4, 8, 8, 1) and np.isfinite(samples["images"]).all()
    assert str(samples["method"]) == "ddim"
    with pytest.raises(ValueError, match="min_variance must be in"):
        TrainConfig.from_flat({"process": "linear_variance", "min_variance": 0.7})
