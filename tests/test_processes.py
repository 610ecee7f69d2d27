"""experiments/processes.py --quick: every kind of process trains in stages, samples, and is scored in the
schema of the converged study (rows, training with its 25/50/100 % scores, the restoration table, the floor)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cloudjax import study

pytest.importorskip("skimage")
SCRIPT = Path(__file__).parents[1] / "experiments" / "processes.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("processes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("processes")
    rng = np.random.default_rng(0)  # two classes: bright and dark discs, so the classifier scores have a meaning
    labels = rng.integers(0, 2, 300)
    yy, xx = np.mgrid[:8, :8] - 3.5
    disc = (yy**2 + xx**2 < 9).astype(float)
    images = 0.2 + 0.6 * disc * labels[:, None, None] + 0.1 * rng.random((300, 8, 8))
    np.savez(tmp / "discs.npz", images=(images * 255).astype(np.uint8), labels=labels)
    out = tmp / "out"
    result = module.main(["--quick", "--data", f"npz:{tmp / 'discs.npz'}", "--out", str(out), "--workdir", str(tmp)])
    return module, out, tmp, result


def test_rows_hold_every_generating_process_with_intervals_and_class_scores(quick):
    module, out, _, result = quick
    saved = json.loads((out / "processes.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    kinds = {(r["process"], r["variant"], r["sampler"], r["nfe"]) for r in saved["rows"]}
    T = json.loads((out.parent / "cold_blur" / "run.json").read_text())["config"]["process"]["degradation_steps"]
    assert kinds == {
        ("gaussian", "ddpm", "ddim", 3),
        ("gaussian", "ddpm", "ddpm", 3),
        ("cold", "cold_blur", "cold", T),
    }
    # Algorithm 2 also starts from the same flat images with louder noise: other samples
    cold = {r.get("start_noise", 1): r["metrics"] for r in saved["rows"] if r["variant"] == "cold_blur"}
    assert set(cold) == {1, *module.MODELS["cold_blur"].start_noise}
    assert all(cold[f] != cold[1] for f in cold if f != 1)
    for row in saved["rows"]:
        assert row["num_samples"] == module.QUICK["num_samples"] and row["seconds_per_image"] > 0
        assert set(row["metrics_ci95"]) == set(row["metrics"]) - {"sample_mean", "sample_std", "sample_clipped"}
        assert np.isfinite(row["metrics"]["frechet_classifier"]) and 0 <= row["metrics"]["sample_clipped"] <= 1
        classes = row["classes"]
        assert len(classes["histogram"]) == 2 and np.isclose(sum(classes["histogram"]), 1)
        assert 0.5 <= classes["confidence"] <= 1
    assert saved["floor_classes"]["confidence"] > 0.5 and set(saved["floor"]) >= set(saved["floor_ci95"])
    assert (out / "processes_samples.png").stat().st_size > 1000


def test_training_is_summarised_and_scored_at_every_stage(quick):
    module, _, workdir, result = quick
    for name, entry in result["training"].items():
        steps = 8 * module.MODELS[name].budget  # --train-steps 8 times the model's budget multiple
        assert entry["steps"] == steps and entry["images"] == 8 * steps and entry["plateau"] in (True, False)
        for fraction in study.EMA_AT:  # one run, its EMA kept in bfloat16 at each stage
            with np.load(study.ema_path(workdir / name, fraction)) as ema:
                assert int(ema["__step__"]) == round(fraction * steps)
        at = entry["metrics_at"]  # held-out metrics at each stage: the last is the table's
        assert set(at) == {"25%", "50%", "100%"}
        if name == "restore_mask":
            assert (
                at["25%"]["cold"] != at["100%"]["cold"] and at["100%"]["cold"] == result["restoration"]["mask"]["cold"]
            )
        else:
            assert at["25%"]["metrics"] != at["100%"]["metrics"]
            first = next(r for r in result["rows"] if r["variant"] == name)
            assert at["100%"]["metrics"] == first["metrics"] and at["100%"]["nfe"] == first["nfe"]


def test_restoration_table_compares_the_three_methods_on_the_same_images(quick):
    module, out, _, result = quick
    table = result["restoration"]["mask"]
    assert table["T"] == 50 and table["seconds_per_image"] > 0
    for method in ("degraded", "direct", "cold_naive", "cold"):
        scores = table[method]
        assert 0 <= scores["rmse"] <= 1 and -1 <= scores["ssim"] <= 1 and len(scores["rmse_ci95"]) == 2
        # the restorations as a set, scored as the samples are: against the reference, beside the floor
        assert set(scores["metrics"]) == set(result["floor"])
        assert set(scores["metrics_ci95"]) == set(result["floor_ci95"])
    gain = table["algorithm2_gain"]
    assert set(gain) == {"degraded", "direct", "cold_naive"}
    for method, g in gain.items():  # paired: the gain is the difference of the two means
        assert np.isclose(g["rmse"], table[method]["rmse"] - table["cold"]["rmse"], atol=1e-6)
        assert np.isclose(g["ssim"], table["cold"]["ssim"] - table[method]["ssim"], atol=1e-6)
        for k in module.PAIRED:
            assert np.isclose(g[k], table[method]["metrics"][k] - table["cold"]["metrics"][k])
            assert len(g[f"{k}_ci95"]) == 2
    data = study.load_dataset(result["config"]["data"], 8, module.QUICK["num_ref"], 1_000_000, None, 0)
    with np.load(out / "processes_restorations.npz") as restored:  # the floor's held-out images
        np.testing.assert_array_equal(restored["mask/original"], data.ref2[:4])
    assert (out / "processes_restoration.png").stat().st_size > 1000


def test_models_measured_later_join_the_same_study(quick):
    """A later run of some models replaces their entries and keeps the others; other settings are refused."""
    module, out, workdir, result = quick
    data = json.loads((out / "processes.json").read_text())["config"]["data"]
    argv = ["--quick", "--data", data, "--out", str(out), "--workdir", str(workdir)]
    again = module.main([*argv, "--models", "restore_mask"])
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rows]  # noqa: E731
    assert timeless(again["rows"]) == timeless(json.loads(json.dumps(result["rows"])))  # same weights, keys, scores
    tables = lambda r: {d: {k: v for k, v in t.items() if k != "seconds_per_image"} for d, t in r.items()}  # noqa: E731
    assert tables(again["restoration"]) == tables(json.loads(json.dumps(result["restoration"])))
    assert set(again["training"]) == set(result["training"]) and again["config"]["models"][-1] == "restore_mask"
    with np.load(out / "processes_sheets.npz") as sheets:
        assert {k.split("/")[0] for k in sheets.files} == {"ddpm", "cold_blur"}
    with pytest.raises(ValueError, match="other settings: \\['num_samples'"):
        module.main([*argv, "--models", "restore_mask", "--num-samples", "8"])


def test_floors_that_differ_by_rounding_are_one_measurement(quick):
    """Another CPU rounds the metrics differently: such a floor joins the study; another data set's does not."""
    module, out, _, _ = quick
    floor = json.loads((out / "processes.json").read_text())["floor"]
    assert module.same_floor(floor, {k: v * (1 + 3e-7) for k, v in floor.items()})
    assert not module.same_floor(floor, {k: v * 1.01 for k, v in floor.items()})
    assert not module.same_floor(floor, {k: v for k, v in floor.items() if k != "swd_mean"})
