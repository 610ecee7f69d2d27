"""White vs cloud noise: sample quality against network evaluations (NFE), per sampler and metric.

For each dataset, a white-noise model and cloud-noise variants with the same UNet, training budget and seed
are trained (or reused from ``--workdir-white`` / ``--workdir-cloud``); then, for every sampler, NFE and variant,
``--num-samples`` images are drawn from the same starting keys, clipped to the data range [0, 1] (the fraction
clipped is ``sample_clipped``) and scored against held-out data with every metric of :mod:`cloudjax.metrics`,
plus seconds per image. Every model is trained first, then the samplers run in ``--samplers`` order; each row is
saved as it comes, so a run cut short keeps what it measured. Writes ``white_vs_cloud.json``
(``{"config", "datasets", "floor", "rows", "headline", "summary"}``), one metrics-vs-NFE plot and one sample sheet
per dataset, and prints one JSON object per row. ``config.device`` names the accelerator, or the CPU model.

Each trained run keeps its EMA weights in bfloat16 (``<workdir>/<data>_<size>_<variant>/ema_bf16.npz`` beside
``run.json``, a few hundred kB for ``tiny``); every model samples from these rounded weights, and a later run
with the same settings loads them instead of training (no checkpoint needed), so sampling can be re-run alone.

Cloud variants: ``cloud`` (Δ fitted to the data, the author's Mahalanobis loss, the white model's cosine
schedule), ``cloud-pixel-loss``, ``cloud-calibrated`` (the schedule shifted so the cloud noise has the white
schedule's mean per-mode SNR, Falck et al.), ``cloud-delta1.5`` (Δ = 1.5 instead of the fitted one) and
``cloud-t0.95`` (the ``cloud`` model sampled from t = 0.95, as the author did). ``--denoiser oracle`` replaces
the networks by the exact denoiser for Gaussian data with the data's Π variance: no training, only what the noise
and the sampler do.

NFE is the number of network calls: the samplers take ``NFE − 1`` steps and denoise once more at the end.
``headline``: per dataset, variant, sampler and metric, the smallest NFE at which the variant is at least as good
as white noise at the largest NFE (null if none). ``summary``: per dataset and metric, white's best over every
sampler and NFE, the smallest NFE at which each variant matches it, the closest variant and the NFE ratio.
``floor`` holds each metric between two disjoint sets of real images: differences below it are sampling noise.

    python benchmarks/white_vs_cloud.py                 # the real run (a GPU job: benchmarks/gpu_suite.sh)
    python benchmarks/white_vs_cloud.py --tiny --out /tmp/wvc   # end-to-end check: tiny data, model, counts
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

import cloudjax as cj
from cloudjax import metrics
from cloudjax.evaluation import Model, draw, features, interval, plot_samples, score
from cloudjax.plots import new_figure
from cloudjax.schedules import calibrated_schedule
from cloudjax.study import (
    EMA_AT,
    Dataset,
    as_bf16,
    device_name,
    get_classifier,
    load_dataset,
    model_config,
    train_stages,
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one model is built and sampled. ``delta=None`` uses the Δ fitted to the training data."""

    noise: str = "white"
    delta: float | None = None
    loss_weighting: str = "pixel"
    schedule: str = "cosine"  # or "calibrated": the cloud noise gets the white schedule's mean per-mode SNR
    t_start: float = 1.0
    model_of: str | None = None  # sample another variant's model instead of training one


VARIANTS = {
    "white": Variant(),
    "cloud": Variant("cloud", loss_weighting="mahalanobis"),
    "cloud-pixel-loss": Variant("cloud", loss_weighting="pixel"),
    "cloud-calibrated": Variant("cloud", loss_weighting="mahalanobis", schedule="calibrated"),
    "cloud-delta1.5": Variant("cloud", delta=1.5, loss_weighting="mahalanobis"),
    "cloud-t0.95": Variant("cloud", loss_weighting="mahalanobis", t_start=0.95, model_of="cloud"),
}
SAMPLERS = ("ddim", "ddpm", "dpm++2m")
NFES = (5, 10, 20, 50, 100, 250, 1000)


# --- variants ---------------------------------------------------------------------------------------------------


def diffusion_for(variant: Variant, data: Dataset) -> cj.GaussianDiffusion:
    """The :class:`cloudjax.GaussianDiffusion` of ``variant`` (ε prediction) on ``data``."""
    H, W = data.train.shape[1:3]
    noise = cj.WhiteNoise() if variant.noise == "white" else cj.PowerLawNoise(variant.delta or data.delta)
    schedule = variant.schedule
    if schedule == "calibrated":
        schedule = calibrated_schedule(data.fourier_variance, noise.fourier_variance(H, W), base="cosine")
    return cj.GaussianDiffusion(noise=noise, schedule=schedule, prediction="eps", loss_weighting=variant.loss_weighting)


# --- scoring ------------------------------------------------------------------------------------------------------


def badness(metric: str, value: float) -> float:
    """Lower is better: the high-frequency test scores its distance from chance (0.5)."""
    return abs(value - 0.5) if metric == "high_frequency_accuracy" else value


def _first_nfe(rows: list[dict], ids: list[int], bad: dict[int, float], threshold: float) -> int | None:
    """The NFE of the first row of ``ids`` (sorted by NFE) whose badness is at most ``threshold``, or None."""
    return next((rows[i]["nfe"] for i in ids if bad[i] <= threshold), None)


def headline(rows: list[dict], replicates: dict[int, dict[str, np.ndarray]] | None = None) -> dict:
    """Per dataset, variant, sampler and metric: how many NFE each needs to reach white noise's best quality.

    ``threshold``: the worse end of the 95 % interval of white's best value (any NFE of that sampler); ``white_nfe``
    and ``nfe_to_match``: the smallest NFE at which white and the variant are at least that good (None: never);
    ``ratio`` = white_nfe / nfe_to_match (> 1: the variant is faster). ``ratio_ci95`` repeats this on every
    bootstrap replicate with the same threshold (a replicate in which the variant never matches counts as ratio
    0, one in which white never does is left out); it needs ``replicates`` (``{row index: {metric: (B,)}}``),
    else it is None. Rows without a white row of the same dataset and sampler are left out.
    """
    replicates = replicates or {}
    out: dict = {}
    groups: dict = {}
    for i in sorted(range(len(rows)), key=lambda i: rows[i]["nfe"]):
        r = rows[i]
        groups.setdefault((r["dataset"], r["sampler"]), {}).setdefault(r["variant"], []).append(i)
    for (dataset, sampler), variants in groups.items():
        white = variants.pop("white", [])
        for metric in [m for m in rows[white[0]]["metrics"] if not m.startswith("sample_")] if white else []:
            point = {i: badness(metric, rows[i]["metrics"][metric]) for ids in [white, *variants.values()] for i in ids}
            best = min(white, key=point.get)
            draws = {i: badness(metric, replicates[i][metric]) for i in point if metric in replicates.get(i, {})}
            threshold = float(np.percentile(draws[best], 97.5)) if best in draws else point[best]
            first = functools.partial(_first_nfe, rows, threshold=threshold)
            white_nfe = first(white, point)
            for name, ids in variants.items():
                need = first(ids, point)
                entry = dict(
                    white_best=rows[best]["metrics"][metric],
                    white_best_nfe=rows[best]["nfe"],
                    threshold=threshold,
                    white_nfe=white_nfe,
                    nfe_to_match=need,
                    ratio=None if need is None or white_nfe is None else white_nfe / need,
                    ratio_ci95=None,
                )
                count = min((len(draws[i]) if i in draws else 0 for i in white + ids), default=0)
                if count:
                    at = [{i: draws[i][b] for i in white + ids} for b in range(count)]
                    ratios = [(first(white, bad) or np.nan) / (first(ids, bad) or np.inf) for bad in at]
                    entry["ratio_ci95"] = interval(np.array(ratios))
                out.setdefault(dataset, {}).setdefault(name, {}).setdefault(sampler, {})[metric] = entry
    return out


def summary(rows: list[dict]) -> dict:
    """Per dataset and metric: white's best over every sampler and NFE, and for each other variant the smallest NFE
    (any sampler) at which it is at least as good. ``closest``: the variant that matches at the smallest NFE, or,
    when none matches, the one whose best comes nearest; ``ratio``: white's NFE / the NFE ``closest`` needs."""
    out: dict = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        white = [r for r in mine if r["variant"] == "white"]
        if not white:
            continue
        names = [m for m in white[0]["metrics"] if not m.startswith("sample_")]
        for metric in names:
            bad = lambda r: badness(metric, r["metrics"][metric])  # noqa: B023
            best_white = min(white, key=lambda r: (bad(r), r["nfe"]))
            target = bad(best_white)
            variants = {}
            for name in dict.fromkeys(r["variant"] for r in mine if r["variant"] != "white"):
                own = [r for r in mine if r["variant"] == name]
                best = min(own, key=lambda r: (bad(r), r["nfe"]))
                match = min((r for r in own if bad(r) <= target), key=lambda r: r["nfe"], default=None)
                variants[name] = {
                    "nfe_to_match": match and match["nfe"],
                    "sampler": match and match["sampler"],
                    "best": best["metrics"][metric],
                    "best_nfe": best["nfe"],
                    "best_sampler": best["sampler"],
                }
            if not variants:
                continue
            closest = min(
                variants,
                key=lambda v: (
                    variants[v]["nfe_to_match"] is None,
                    variants[v]["nfe_to_match"] or 0,
                    badness(metric, variants[v]["best"]),
                ),
            )
            need = variants[closest]["nfe_to_match"]
            out.setdefault(dataset, {})[metric] = {
                "white": {k: best_white[k] for k in ("nfe", "sampler")} | {"value": best_white["metrics"][metric]},
                "variants": variants,
                "closest": closest,
                "ratio": None if need is None else best_white["nfe"] / need,
            }
    return out


# --- figures ------------------------------------------------------------------------------------------------------


def plot_metrics(rows: list[dict], floor: dict[str, float], path: Path) -> None:
    """One panel per metric: value against NFE (log axis), a line per variant and sampler with its 95 % interval
    shaded (rows that have ``metrics_ci95``), the real-data floor."""
    names = [m for m in rows[0]["metrics"] if not m.startswith("sample_")]
    cols = 4
    fig = new_figure(figsize=(4 * cols, 3.2 * -(-len(names) // cols)))
    axes = fig.subplots(-(-len(names) // cols), cols, squeeze=False).ravel()
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    nfes = sorted({r["nfe"] for r in rows})
    styles = dict(zip(samplers, ("-", "--", ":", "-."), strict=False))
    for ax, name in zip(axes, names, strict=False):
        for i, variant in enumerate(variants):
            for sampler in samplers:
                mine = sorted(
                    (r for r in rows if (r["variant"], r["sampler"]) == (variant, sampler)), key=lambda r: r["nfe"]
                )
                if not mine:
                    continue
                nfe = [r["nfe"] for r in mine]
                ax.plot(
                    nfe,
                    [r["metrics"][name] for r in mine],
                    styles[sampler],
                    color=f"C{i}",
                    marker=".",
                    label=f"{variant} {sampler}",
                )
                if all(name in r.get("metrics_ci95", {}) for r in mine):
                    low, high = zip(*(r["metrics_ci95"][name] for r in mine), strict=True)
                    ax.fill_between(nfe, low, high, color=f"C{i}", alpha=0.15, lw=0)
        ax.axhline(floor[name], color="grey", lw=0.8, ls="--", label="real vs real")
        ax.set_xscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.tick_params(which="minor", labelbottom=False)
        ax.set_xlabel("NFE")
        ax.set_title(name, fontsize=9)
    for ax in axes[len(names) :]:
        ax.axis("off")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# --- models -------------------------------------------------------------------------------------------------------


def oracle_model(variant: Variant, data: Dataset) -> Model:
    """Sampling with the exact denoiser for Gaussian data with the training data's mean image and Π variance:
    what the noise and the sampler do, with nothing learnt (``--denoiser oracle``, no training)."""
    diffusion = diffusion_for(variant, data)
    denoise = jax.tree_util.Partial(cj.gaussian_oracle(diffusion, data.fourier_variance))
    shape = data.train.shape[1:]

    def model(key, num, steps, method, t_start):
        x = cj.sample(denoise, diffusion, key, (num, *shape), steps, method, t_start=t_start)
        return np.asarray(x) * data.std + data.mean

    return model


def unet_model(name: str, spec: str, data: Dataset, args: argparse.Namespace, fraction: float = 1.0) -> Model:
    """The EMA UNet of variant ``name`` (after ``fraction`` of its training), with its weights rounded to bfloat16.

    Reused from ``--workdir-white/--workdir-cloud`` (any cloudjax run), or from ``--workdir``: there a run that
    reached ``--train-steps`` is loaded from its ``ema_bf16.npz`` (no checkpoint needed: a few hundred kB for
    ``tiny``), anything else is trained or resumed with :func:`cloudjax.train.train` and the EMA saved.
    """
    from cloudjax.generate import generate
    from cloudjax.train import load_run

    def sample(run, graphdef, params) -> Model:
        # the loss weighting plays no part in sampling: one value lets the variants that differ only in it
        # share their compiled samplers (one compile per sampler and NFE each costs seconds)
        process = dataclasses.replace(run.config.process, loss_weighting="pixel")
        run = dataclasses.replace(run, config=dataclasses.replace(run.config, process=process))
        return lambda key, num, steps, method, t_start: generate(
            run, graphdef, params, key, num, steps=steps, method=method, t_start=t_start
        )

    workdir = {"white": args.workdir_white, "cloud": args.workdir_cloud}.get(name)
    if workdir is not None:
        run, graphdef, state = load_run(workdir)
        return sample(run, graphdef, as_bf16(state.ema))
    config = train_config(name, spec, args)
    return sample(*train_stages(config, run_dir(args, data, name), data.train, fraction))


def run_dir(args: argparse.Namespace, data: Dataset, name: str) -> Path:
    """Where variant ``name`` of ``data`` trains: ``<--workdir>/<data>_<size>_<variant>``."""
    return Path(args.workdir) / f"{data.name}_{args.image_size}_{name}"


def train_config(name: str, spec: str, args: argparse.Namespace):
    """The :class:`cloudjax.train.TrainConfig` of variant ``name`` on ``spec``: the study's network, budget and seed,
    the variant's noise, schedule and loss."""
    variant = VARIANTS[name]
    return model_config(
        args,
        spec,
        dtype=args.dtype,
        prediction=args.prediction,
        noise=variant.noise,
        delta=variant.delta,
        schedule=variant.schedule,
        loss_weighting=variant.loss_weighting,
    )


def classifier_for(data: Dataset, args) -> metrics.Classifier | None:
    """The feature classifier for labelled data: loaded from ``--classifier`` or trained and saved there."""
    path = Path(args.classifier or Path(args.out) / f"classifier_{data.name}_{args.image_size}.npz")
    return get_classifier(data, path, args.classifier_steps, args.seed)


# --- main ---------------------------------------------------------------------------------------------------------

TINY = dict(
    datasets=["patches:400"],
    bootstrap=2,
    convergence=["ddim", "3"],
    image_size=16,
    variants=["white", "cloud", "cloud-t0.95"],
    samplers=["ddim"],
    nfe=[3, 5],
    num_samples=64,
    sample_batch=64,
    model="tiny",
    train_steps=10,
    train_batch=8,
    ema_decay=0.9,
    swd_patches=1024,
    classifier_steps=30,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a seconds-long CPU check: tiny data, model and sample counts")
    p.add_argument("--datasets", nargs="+", default=["patches", "fashion_mnist"], help="--data specs")
    p.add_argument("--data-dir", default=None, help="where dataset files live (fashion_mnist, tfds)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, default=list(NFES), help="network evaluations per sample (>= 2)")
    p.add_argument("--num-samples", type=int, default=2048, help="samples per (variant, sampler, NFE)")
    p.add_argument("--num-ref", type=int, default=None, help="held-out images scored against (default --num-samples)")
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--max-train", type=int, default=1_000_000, help="at most this many training images")
    p.add_argument("--denoiser", choices=["unet", "oracle"], default="unet", help="oracle: exact Gaussian denoiser")
    p.add_argument("--model", default="small", help="UNet preset")
    p.add_argument("--train-steps", type=int, default=50_000)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v"], help="what the UNet predicts")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine decay to 10 %%)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="UNet compute dtype")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (short runs: 0.995)")
    p.add_argument("--workdir", default="benchmarks/results/white_vs_cloud_runs", help="training runs go here")
    p.add_argument("--workdir-white", default=None, help="reuse this trained white run (one dataset only)")
    p.add_argument("--workdir-cloud", default=None, help="reuse this trained run for the 'cloud' variant")
    p.add_argument("--classifier", default=None, help="feature classifier .npz (trained and saved if missing)")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--inception-weights", default=None, help="pytorch-fid's Inception .pth or its .npz: adds FID")
    p.add_argument("--swd-patches", type=int, default=16384, help="patches per pyramid level for the SWD")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamplings for the 95%% intervals (0: none)")
    p.add_argument(
        "--convergence",
        nargs=2,
        default=["dpm++2m", "50"],
        metavar=("SAMPLER", "NFE"),
        help="score each trained model at 25/50/100%% of its steps with this sampler and NFE",
    )
    p.add_argument("--sheet-nfes", nargs="+", type=int, default=None, help="NFEs in the sample sheet")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--plots-only", action="store_true", help="redraw the metric plots from --out's JSON and exit")
    merge = "merge the --out folders of runs over other datasets, samplers or variants (DIR=NAME,...: those datasets)"
    p.add_argument("--merge", nargs="+", metavar="DIR", help=merge)
    p.add_argument("--train-only", action="store_true", help="train (or resume) every model, then exit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    args.num_ref = args.num_ref or args.num_samples
    if args.num_ref < args.num_samples:
        p.error("--num-ref must be >= --num-samples (the floor compares --num-samples held-out images with them)")
    if min(args.nfe) < 2:
        p.error("--nfe values must be >= 2 (one step and the final denoising call)")
    if (args.workdir_white or args.workdir_cloud) and len(args.datasets) != 1:
        p.error("--workdir-white/--workdir-cloud need exactly one --datasets entry")
    return args


@dataclasses.dataclass
class Study:
    """One dataset ready to sample: its data, classifier (or None), the held-out reference's :func:`features`, the
    real-data floor (metrics and their bootstrap replicates) and a model per variant."""

    data: Dataset
    classifier: metrics.Classifier | None
    reference: dict[str, np.ndarray]
    floor: tuple[dict[str, float], dict[str, np.ndarray]]
    models: dict[str, Model]
    trained: list[str]  # the variants trained in --workdir (their EMA kept at 25 / 50 / 100 %)
    sheets: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)


def prepare(spec: str, data: Dataset, args: argparse.Namespace) -> Study:
    """Score one dataset's real-data floor and train (or load) every variant's model."""
    classifier = classifier_for(data, args)
    reference = features(data.ref, classifier, args.inception_weights)
    key, second = jax.random.key(args.seed), data.ref2[: args.num_samples]
    floor = score(reference, second, key, classifier, args.swd_patches, args.bootstrap, args.inception_weights)
    models: dict[str, Model] = {}
    for name in args.variants:
        owner = VARIANTS[name].model_of or name
        if owner not in models:
            models[owner] = (
                oracle_model(VARIANTS[owner], data)
                if args.denoiser == "oracle"
                else unet_model(owner, spec, data, args)
            )
    reused = {"white": args.workdir_white, "cloud": args.workdir_cloud}
    trained = [name for name in models if args.denoiser == "unet" and reused.get(name) is None]
    return Study(data, classifier, reference, floor, models, trained)


def write(result: dict, replicates: dict[int, dict[str, np.ndarray]], out: Path) -> None:
    """Save ``result`` with its headline and summary redone, and the bootstrap replicates of every row."""
    result.update(headline=headline(result["rows"], replicates), summary=summary(result["rows"]))
    result["config"]["load_average_end"] = os.getloadavg()[0]  # other work on the machine skews timings
    (out / "white_vs_cloud.json").write_text(json.dumps(result, indent=1))
    flat = {f"{i}/{m}": v for i, draws in replicates.items() for m, v in draws.items()}
    np.savez(out / "white_vs_cloud_bootstrap.npz", **flat)


def save_sheets(name: str, real: np.ndarray, sheets: dict[tuple[str, int], np.ndarray], out: Path) -> None:
    """Dataset ``name``'s sample sheet, ``white_vs_cloud_<name>_samples.png``, and its images beside it
    (``…_sheets.npz``: ``real`` and ``<variant>/<nfe>``), from which a merge redraws the sheets of its parts as one."""
    plot_samples(real, sheets, out / f"white_vs_cloud_{name}_samples.png")
    np.savez(
        out / f"white_vs_cloud_{name}_sheets.npz", real=real[:16], **{f"{v}/{n}": x for (v, n), x in sheets.items()}
    )


def plot_all(result: dict, out: Path) -> None:
    """The metric-vs-NFE plot of every dataset in ``result``."""
    for name, floor in result["floor"].items():
        rows = [r for r in result["rows"] if r["dataset"] == name]
        plot_metrics(rows, floor, out / f"white_vs_cloud_{name}_metrics.png")


# the config lists a study's parts may split, the other config keys that may differ between them (a dataset's
# training budget is its own: the merged ``train_steps`` is {dataset: steps}), and the per-dataset sections
MERGED_LISTS = ("datasets", "samplers", "variants")
MERGE_FREE = {*MERGED_LISTS, "train_steps", "out", "load_average_start", "load_average_end"}
SECTIONS = ("datasets", "floor", "floor_ci95", "training")


def merge(parts: list[str | Path], out: Path) -> dict:
    """One study from runs over other datasets, samplers or variants with otherwise equal settings (one process per
    core, or a part measured later): the rows, floors, training summaries and bootstrap replicates of every part (a row
    measured by two parts is refused), the headline and plots redone. A part ``DIR=NAME[,NAME...]`` gives only those
    datasets (e.g. the datasets a longer training did not replace). ``out`` may be one of the parts. A dataset's sample
    sheet is redrawn from the images of every part that saved them (``…_sheets.npz``), else copied from the first
    part that has one."""
    out.mkdir(parents=True, exist_ok=True)
    result, replicates, sheets = None, {}, {}
    for part in map(str, parts):
        part, _, names = part.partition("=")
        part = Path(part)
        piece = json.loads((part / "white_vs_cloud.json").read_text())
        keep = set(names.split(",")) if names else set(piece["datasets"])
        if keep - set(piece["datasets"]):
            raise ValueError(f"{part}: no dataset {sorted(keep - set(piece['datasets']))}")
        steps = piece["config"]["train_steps"]
        steps = {n: steps[n] if isinstance(steps, dict) else steps for n in piece["datasets"] if n in keep}
        piece["config"]["datasets"] = [piece["datasets"][n]["spec"] for n in piece["datasets"] if n in keep]
        if result is None:
            result = {key: {} for key in SECTIONS}
            result.update(config=dict(piece["config"], out=str(out), **{n: [] for n in MERGED_LISTS}), rows=[])
            result["config"]["train_steps"] = {}
        differ = {k for k in piece["config"].keys() | result["config"].keys() if k not in MERGE_FREE}
        differ = {k for k in differ if piece["config"].get(k) != result["config"].get(k)}
        if differ:
            raise ValueError(f"{part}: settings differ from the first part's: {sorted(differ)}")
        row_id = lambda r: (r["dataset"], r["variant"], r["sampler"], r["nfe"])
        rows = [(i, r) for i, r in enumerate(piece["rows"]) if r["dataset"] in keep]
        if {row_id(r) for _, r in rows} & {row_id(r) for r in result["rows"]}:
            raise ValueError(f"{part}: rows already merged from another part")
        index = {i: len(result["rows"]) + j for j, (i, _) in enumerate(rows)}
        with np.load(part / "white_vs_cloud_bootstrap.npz") as draws:
            for name in draws.files:
                row, metric = name.split("/", 1)
                if int(row) in index:
                    replicates.setdefault(index[int(row)], {})[metric] = draws[name]
        for name in MERGED_LISTS:
            result["config"][name] += [v for v in piece["config"][name] if v not in result["config"][name]]
        result["config"]["train_steps"] |= steps
        result["rows"] += [r for _, r in rows]
        for key in SECTIONS:
            result[key] |= {k: v for k, v in piece[key].items() if k in keep or k.rsplit("_", 2)[0] in keep}
        for name in keep:  # a dataset's sheet: every part's images drawn as one, or the first part's picture
            drawn, picture = part / f"white_vs_cloud_{name}_sheets.npz", part / f"white_vs_cloud_{name}_samples.png"
            if drawn.exists():
                with np.load(drawn) as stored:
                    drawn_before = sheets.get(name)  # images win over an earlier part's picture
                    real, images = drawn_before if isinstance(drawn_before, tuple) else (stored["real"], {})
                    images |= {(k.split("/")[0], int(k.split("/")[1])): stored[k] for k in stored.files if k != "real"}
                    sheets[name] = real, images
            elif picture.exists() and name not in sheets:
                sheets[name] = picture
    for name, sheet in sheets.items():
        if isinstance(sheet, Path):
            if sheet.resolve() != (out / sheet.name).resolve():
                shutil.copyfile(sheet, out / sheet.name)
        else:
            save_sheets(name, *sheet, out)
    write(result, replicates, out)
    plot_all(result, out)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Every model of every dataset first, then sampler by sampler (in ``--samplers`` order), dataset, variant and
    NFE; each row is saved as it comes (a run cut short keeps what it measured), the plots after each sampler."""
    args = parse_args(argv)
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)
    if args.plots_only:  # e.g. after a run cut short mid-sampler
        result = json.loads((out / "white_vs_cloud.json").read_text())
        plot_all(result, out)
        return result
    out.mkdir(parents=True, exist_ok=True)
    config = dict(vars(args), device=device_name(), jax=jax.__version__, load_average_start=os.getloadavg()[0])
    result = {"config": config, "datasets": {}, "floor": {}, "floor_ci95": {}, "training": {}, "rows": []}
    replicates: dict[int, dict[str, np.ndarray]] = {}  # row index → {metric: (bootstrap,)}

    save = lambda: write(result, replicates, out)

    def measured(study: Study, samples: np.ndarray) -> tuple[dict, dict]:
        return score(
            study.reference, samples, key, study.classifier, args.swd_patches, args.bootstrap, args.inception_weights
        )

    # every dataset is read before the first model trains: a missing file fails in seconds, not after hours
    datas = [
        load_dataset(s, args.image_size, args.num_ref, args.max_train, args.data_dir, args.seed) for s in args.datasets
    ]
    studies = [prepare(spec, data, args) for spec, data in zip(args.datasets, datas, strict=True)]
    if args.train_only:
        return result
    key, batch = jax.random.key(args.seed), min(args.sample_batch, args.num_samples)
    for spec, study in zip(args.datasets, studies, strict=True):
        data = study.data
        result["floor"][data.name], draws = study.floor
        result["floor_ci95"][data.name] = {m: interval(v) for m, v in draws.items()}
        result["datasets"][data.name] = dict(
            spec=spec, train_images=len(data.train), held_out=2 * len(data.ref), delta_fit=data.delta
        )
        for name in study.trained:  # the metrics, not only the loss, have settled: score 25 / 50 / 100 %
            training = json.loads((run_dir(args, data, name) / "training.json").read_text())
            sampler, nfe = args.convergence[0], int(args.convergence[1])
            for fraction in EMA_AT:
                model = unet_model(name, spec, data, args, fraction)
                samples, _, _ = draw(model, sampler, nfe - 1, 1.0, batch, args.num_samples, args.seed)
                values, draws = measured(study, samples)
                at = {"sampler": sampler, "nfe": nfe, "metrics": values}
                at["metrics_ci95"] = {m: interval(v) for m, v in draws.items()}
                training.setdefault("metrics_at", {})[f"{round(100 * fraction)}%"] = at
            result["training"][f"{data.name}_{args.image_size}_{name}"] = training
    save()
    sheet_nfes = set(args.sheet_nfes or [n for n in (10, 50) if n in args.nfe] + [max(args.nfe)])
    for sampler in args.samplers:
        for study in studies:
            data = study.data
            for name in args.variants:
                variant = VARIANTS[name]
                model = study.models[variant.model_of or name]
                for nfe in sorted(args.nfe):
                    drawn = draw(model, sampler, nfe - 1, variant.t_start, batch, args.num_samples, args.seed)
                    samples, clipped, seconds = drawn
                    values, draws = measured(study, samples)
                    row = dict(
                        dataset=data.name,
                        noise=variant.noise,
                        variant=name,
                        sampler=sampler,
                        nfe=nfe,
                        num_samples=len(samples),
                        metrics=values | {"sample_clipped": clipped},
                        metrics_ci95={m: interval(v) for m, v in draws.items()},
                        seconds_per_image=seconds,
                        device=config["device"],
                    )
                    print(json.dumps(row), flush=True)
                    replicates[len(result["rows"])] = draws
                    result["rows"].append(row)
                    save()
                    if sampler == args.samplers[0] and nfe in sheet_nfes:
                        study.sheets[(name, nfe)] = samples[:16]
            rows = [r for r in result["rows"] if r["dataset"] == data.name]
            plot_metrics(rows, result["floor"][data.name], out / f"white_vs_cloud_{data.name}_metrics.png")
            save_sheets(data.name, data.ref, study.sheets, out)
    return result


if __name__ == "__main__":
    main()
