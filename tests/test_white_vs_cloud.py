"""The white-vs-cloud benchmark runs end to end in its --tiny configuration and reports what it promises."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cloudjax import study

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "white_vs_cloud.py"


@pytest.fixture(scope="module")
def wvc():
    spec = importlib.util.spec_from_file_location("white_vs_cloud", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    return module


def _labelled_npz(path: Path, n: int = 400, size: int = 16) -> str:
    """Horizontal vs vertical stripes with random phase and noise, uint8, with labels (so a classifier trains)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:size, :size] / size
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    coord = np.where(labels[:, None, None] == 0, yy, xx)
    images = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * coord + phase) + 0.1 * rng.normal(size=(n, size, size))
    np.savez(path, images=(np.clip(images, 0, 1) * 255).astype(np.uint8), labels=labels)
    return f"npz:{path}"


def _check_rows(rows, variants, samplers, nfes):
    assert len(rows) == len(variants) * len(samplers) * len(nfes)
    assert {(r["variant"], r["sampler"], r["nfe"]) for r in rows} == {
        (v, s, n) for v in variants for s in samplers for n in nfes
    }
    for row in rows:
        assert {"dataset", "noise", "variant", "sampler", "nfe", "metrics", "seconds_per_image", "device"} <= set(row)
        assert row["noise"] == ("white" if row["variant"] == "white" else "cloud")
        assert row["seconds_per_image"] > 0
        m = row["metrics"]
        for name in ("swd_mean", "spectral_distance", "frechet_pixel", "frechet_spectrum", "high_frequency_accuracy"):
            assert np.isfinite(m[name]), name
        assert 0 <= m["high_frequency_accuracy"] <= 1


def test_tiny_oracle_run_writes_rows_floor_plots_and_headline(wvc, tmp_path):
    """The whole pipeline with the exact Gaussian denoiser (no training), the classifier metric included."""
    spec = _labelled_npz(tmp_path / "stripes.npz")
    out = tmp_path / "out"
    variants = ["white", "cloud", "cloud-calibrated", "cloud-t0.95"]  # the loss weighting means nothing to an oracle
    result = wvc.main(
        ["--tiny", "--denoiser", "oracle", "--variants", *variants, "--datasets", spec, "--out", str(out)]
    )
    saved = json.loads((out / "white_vs_cloud.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    tiny = wvc.TINY
    rows = saved["rows"]
    _check_rows(rows, variants, tiny["samplers"], tiny["nfe"])
    name = rows[0]["dataset"]
    assert name == "stripes" and saved["datasets"][name]["held_out"] == 2 * tiny["num_samples"]
    # Gaussian samples are not stripes: the classifier sees it, well above the real-vs-real floor
    floor = saved["floor"][name]
    assert all(r["metrics"]["frechet_classifier"] > 2 * floor["frechet_classifier"] for r in rows)
    # t_start = 0.95 samples the same model from another start: different samples
    by = {(r["variant"], r["nfe"]): r["metrics"]["swd_mean"] for r in rows}
    assert by[("cloud-t0.95", 3)] != by[("cloud", 3)]
    headline = saved["headline"][name]
    assert set(headline) == set(variants) - {"white"}
    assert headline["cloud"]["ddim"]["swd_mean"]["white_nfe"] == max(tiny["nfe"])
    for kind in ("metrics", "samples"):
        assert (out / f"white_vs_cloud_{name}_{kind}.png").stat().st_size > 1000
    assert list(out.glob("classifier_*.npz")), "the feature classifier is saved for reuse"
    # a second dataset run by another process merges into one study; other settings are refused
    other = tmp_path / "other"
    wvc.main(["--tiny", "--denoiser", "oracle", "--variants", *variants, "--out", str(other)])
    sheet = (out / f"white_vs_cloud_{name}_samples.png").read_bytes()
    merged = wvc.main(["--merge", str(out), str(other), "--out", str(tmp_path / "merged")])
    part = json.loads((other / "white_vs_cloud.json").read_text())
    assert merged["rows"] == rows + part["rows"]
    assert set(merged["headline"]) == {name, part["rows"][0]["dataset"]} != {name}
    assert merged["headline"][name] == headline
    assert merged["config"]["datasets"] == [spec, "patches:400"]
    with np.load(tmp_path / "merged" / "white_vs_cloud_bootstrap.npz") as draws:
        assert {int(k.split("/")[0]) for k in draws.files} == set(range(len(merged["rows"])))
    shutil.copytree(out, tmp_path / "into")  # a part may be the merged folder itself
    assert wvc.merge([tmp_path / "into", other], tmp_path / "into")["rows"] == merged["rows"]
    assert (tmp_path / "into" / f"white_vs_cloud_{name}_samples.png").read_bytes() == sheet
    (tmp_path / "changed").mkdir()
    changed = json.loads((other / "white_vs_cloud.json").read_text())
    changed["config"]["seed"] = 1
    (tmp_path / "changed" / "white_vs_cloud.json").write_text(json.dumps(changed))
    shutil.copy(other / "white_vs_cloud_bootstrap.npz", tmp_path / "changed")
    with pytest.raises(ValueError, match="seed"):
        wvc.merge([out, tmp_path / "changed"], tmp_path / "bad")
    with pytest.raises(ValueError, match="already merged"):
        wvc.merge([out, other, out], tmp_path / "bad")
    # a dataset trained longer replaces its rows: the older study gives only the other dataset; budgets per dataset
    changed["config"]["seed"], changed["config"]["train_steps"] = 0, 2 * tiny["train_steps"]
    (tmp_path / "changed" / "white_vs_cloud.json").write_text(json.dumps(changed))
    replaced = wvc.merge([f"{tmp_path / 'merged'}={name}", tmp_path / "changed"], tmp_path / "replaced")
    assert replaced["rows"] == merged["rows"] and replaced["floor"] == merged["floor"]
    assert replaced["config"]["train_steps"] == {name: tiny["train_steps"], "patches_400": 2 * tiny["train_steps"]}
    with (
        np.load(tmp_path / "replaced" / "white_vs_cloud_bootstrap.npz") as a,
        np.load(tmp_path / "merged" / "white_vs_cloud_bootstrap.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    with pytest.raises(ValueError, match="no dataset"):
        wvc.merge([f"{out}=patches_400"], tmp_path / "bad")
    # one dataset's variants measured by two parts: the merged sheet holds every variant's images
    other_name, piece = part["rows"][0]["dataset"], json.loads((other / "white_vs_cloud.json").read_text())
    drawn = dict(np.load(other / f"white_vs_cloud_{other_name}_sheets.npz"))
    assert {k.split("/")[0] for k in drawn} == {"real", *variants}
    with np.load(other / "white_vs_cloud_bootstrap.npz") as stored:
        draws = {k: stored[k] for k in stored.files}
    for half, names in (("first", {"white"}), ("second", set(variants) - {"white"})):
        (tmp_path / half).mkdir()
        rows = [i for i, r in enumerate(piece["rows"]) if r["variant"] in names]
        (tmp_path / half / "white_vs_cloud.json").write_text(
            json.dumps(piece | {"rows": [piece["rows"][i] for i in rows]})
        )
        index = lambda k: int(k.split("/")[0])  # noqa: E731
        kept = {f"{rows.index(index(k))}/{k.split('/', 1)[1]}": v for k, v in draws.items() if index(k) in rows}
        np.savez(tmp_path / half / "white_vs_cloud_bootstrap.npz", **kept)
        images = {k: v for k, v in drawn.items() if k.split("/")[0] in names | {"real"}}
        np.savez(tmp_path / half / f"white_vs_cloud_{other_name}_sheets.npz", **images)
    wvc.merge([tmp_path / "first", tmp_path / "second"], tmp_path / "whole")
    with np.load(tmp_path / "whole" / f"white_vs_cloud_{other_name}_sheets.npz") as whole:
        assert sorted(whole.files) == sorted(drawn) and all(np.array_equal(whole[k], drawn[k]) for k in drawn)


def test_tiny_unet_run_trains_through_cloudjax_train_and_resamples_from_the_bf16_ema(wvc, tmp_path):
    """The trained path: a cloud UNet (fitted Δ, Mahalanobis loss, calibrated schedule) from cloudjax.train; its
    EMA is kept in bfloat16, and a second run samples from it alone (checkpoints deleted), identically."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["--tiny", "--variants", "cloud-calibrated", "--nfe", "3", "--out", str(out), "--workdir", str(runs)]
    rows = wvc.main(args)["rows"]
    _check_rows(rows, ["cloud-calibrated"], wvc.TINY["samplers"], [3])
    folder = next(runs.glob("*_cloud-calibrated"))
    run = json.loads((folder / "run.json").read_text())
    config = run["config"]
    process = config["process"]
    assert (process["noise"], process["loss_weighting"], process["schedule"]) == ("cloud", "mahalanobis", "calibrated")
    assert config["decay_steps"] == wvc.TINY["train_steps"] and 0.5 < run["delta"] < 4 and run["snr_ratio"] > 0
    assert config["ema_decay"] == wvc.TINY["ema_decay"]
    for fraction in study.EMA_AT:  # one run, its EMA kept at 25 %, 50 % and 100 % of the steps
        with np.load(study.ema_path(folder, fraction)) as ema:
            assert int(ema["__step__"]) == round(fraction * wvc.TINY["train_steps"])
            assert all(ema[k].dtype == np.uint16 for k in ema.files if k != "__step__")  # bfloat16 bit patterns
    training = json.loads((folder / "training.json").read_text())
    assert training["steps"] == wvc.TINY["train_steps"] and training["images"] == 10 * wvc.TINY["train_batch"]
    # the converged-study schema: intervals on every metric, the model scored at 25 / 50 / 100 % of its steps
    saved = json.loads((out / "white_vs_cloud.json").read_text())
    entry = saved["training"][folder.name]
    assert set(entry["metrics_at"]) == {"25%", "50%", "100%"} and entry["plateau"] in (True, False)
    final = {k: v for k, v in rows[0]["metrics"].items() if k != "sample_clipped"}
    assert entry["metrics_at"]["100%"]["metrics"] == final  # the same model, sampler, NFE and keys as the row
    assert entry["metrics_at"]["25%"]["metrics"] != final
    for row in saved["rows"]:
        assert row["num_samples"] == wvc.TINY["num_samples"]
        for metric, (low, high) in row["metrics_ci95"].items():
            assert low <= row["metrics"][metric] <= high, metric
    assert set(saved["floor_ci95"][rows[0]["dataset"]]) == set(saved["floor"][rows[0]["dataset"]]) - {
        "sample_mean",
        "sample_std",
    }
    shutil.rmtree(folder / "checkpoints")
    again = wvc.main(args)["rows"]
    assert not (folder / "checkpoints").exists(), "reloading the EMA must not train again"
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]


def test_headline_finds_the_first_nfe_that_matches_white(wvc):
    def row(variant, nfe, swd, hf):
        metrics = {"swd_mean": swd, "high_frequency_accuracy": hf}
        return dict(dataset="d", variant=variant, sampler="ddim", nfe=nfe, metrics=metrics)

    rows = [row("white", 10, 0.5, 0.9), row("white", 100, 0.2, 0.6)]
    rows += [row("cloud", 10, 0.3, 0.45), row("cloud", 20, 0.19, 0.7), row("cloud", 100, 0.1, 0.35)]
    entry = wvc.headline(rows)["d"]["cloud"]["ddim"]
    assert entry["swd_mean"] == dict(
        white_best=0.2, white_best_nfe=100, threshold=0.2, white_nfe=100, nfe_to_match=20, ratio=5.0, ratio_ci95=None
    )
    # the high-frequency test is judged by its distance from chance: 0.45 beats white's 0.6
    assert entry["high_frequency_accuracy"]["nfe_to_match"] == 10
    worse = wvc.headline(rows[:2] + [row("cloud", 10, 0.9, 0.99)])["d"]["cloud"]["ddim"]
    assert worse["swd_mean"]["nfe_to_match"] is None and worse["swd_mean"]["ratio"] is None


def test_headline_threshold_and_ratio_interval_come_from_the_bootstrap(wvc):
    """White's best (0.20 at NFE 100) has an interval up to ~0.25, so white is within it from NFE 50 (0.24) and
    cloud from NFE 10 (0.245): ratio 5. The replicates decide the interval of the ratio. Without spread the
    threshold is white's best itself: white needs NFE 100, cloud 50 (0.245 at NFE 10 is worse): ratio 2."""
    rng = np.random.default_rng(0)

    def row(variant, nfe, swd):
        return dict(dataset="d", variant=variant, sampler="ddim", nfe=nfe, metrics={"swd_mean": swd})

    values = [("white", 10, 0.5), ("white", 50, 0.24), ("white", 100, 0.2), ("cloud", 10, 0.245), ("cloud", 50, 0.1)]
    rows = [row(*v) for v in values]
    spread = 0.025 * rng.standard_normal(400)  # the same spread for every row: ~ ±0.05 at 95 %
    replicates = {i: {"swd_mean": r["metrics"]["swd_mean"] + rng.permutation(spread)} for i, r in enumerate(rows)}
    entry = wvc.headline(rows, replicates)["d"]["cloud"]["ddim"]["swd_mean"]
    assert 0.23 < entry["threshold"] < 0.27 and entry["white_nfe"] == 50 and entry["nfe_to_match"] == 10
    assert entry["ratio"] == 5
    low, high = entry["ratio_ci95"]
    assert {low, high} <= {1, 2, 5, 10} and low < 5 < high  # white at NFE 50 or 100, cloud at 10 or 50
    exact = {i: {"swd_mean": np.full(400, r["metrics"]["swd_mean"])} for i, r in enumerate(rows)}
    entry = wvc.headline(rows, exact)["d"]["cloud"]["ddim"]["swd_mean"]
    assert entry["threshold"] == 0.2 and entry["ratio"] == 2 and entry["ratio_ci95"] == [2, 2]


def test_summary_takes_whites_best_over_samplers_and_the_variant_that_matches_soonest(wvc):
    def row(variant, sampler, nfe, swd):
        return dict(dataset="d", variant=variant, sampler=sampler, nfe=nfe, metrics={"swd_mean": swd})

    rows = [row("white", "ddim", 50, 0.3), row("white", "dpm++2m", 50, 0.2), row("white", "dpm++2m", 250, 0.25)]
    rows += [row("a", "ddim", 10, 0.19), row("a", "dpm++2m", 5, 0.4), row("b", "dpm++2m", 5, 0.2)]
    rows += [row("c", "ddim", 100, 0.21)]
    entry = wvc.summary(rows)["d"]["swd_mean"]
    assert entry["white"] == {"nfe": 50, "sampler": "dpm++2m", "value": 0.2}
    assert entry["variants"]["a"]["nfe_to_match"] == 10 and entry["variants"]["a"]["sampler"] == "ddim"
    assert entry["variants"]["c"]["nfe_to_match"] is None and entry["variants"]["c"]["best"] == 0.21
    assert entry["closest"] == "b" and entry["ratio"] == 10  # b matches white's best (a tie counts) at NFE 5
    lost = wvc.summary(rows[:3] + rows[-1:])["d"]["swd_mean"]
    assert lost["closest"] == "c" and lost["ratio"] is None


def test_nfe_below_two_is_refused(wvc):
    with pytest.raises(SystemExit):
        wvc.parse_args(["--tiny", "--nfe", "1"])
