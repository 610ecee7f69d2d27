"""Every process of cloudjax trained to its plateau on one dataset: generation and restoration with intervals.

One network family (the ``tiny`` UNet, its Flexi-UNet for scale space), one seed and one budget rule for every
model (``--train-steps``; a model short of the plateau there trains again from scratch at twice it, its ``budget``
in ``configs/processes.json``); each trains with :func:`cloudjax.study.train_stages` (EMA kept in bfloat16 at
25 / 50 / 100 % of the steps, the plateau rule of the white-vs-cloud study) on the training split of
:func:`cloudjax.study.load_dataset`:

* generation — ``ddpm`` (Gaussian, white noise, v prediction: also Cold Diffusion's "hot" baseline),
  ``scale_space_2`` / ``scale_space_3`` (Mukhopadhyay et al., 2 and 3 levels), ``blurring`` (Hoogeboom &
  Salimans: DCT heat equation, sin² schedule) and ``cold_blur`` (Bansal et al.: blur to the per-channel mean,
  Algorithm 2 from the mixture prior); each sampled ``--num-samples`` times per sampler and step count and scored
  against held-out images with every metric of :mod:`cloudjax.metrics` (95 % bootstrap intervals), plus the
  classifier's confidence and class histogram, the pixel mean and std, and seconds per image; ``cold_blur`` also
  from the same starts with louder "broken symmetry" noise (``start_noise`` in ``configs/processes.json``);
* restoration — ``restore_blur``, ``restore_mask``, ``restore_downsample`` (Cold Diffusion): held-out images
  (the floor's) degraded to D(x0, T) and restored by the direct estimate, Algorithm 1 and Algorithm 2; RMSE and SSIM
  on [0, 1] pixels, every metric of the restorations as a set against the reference images (the paper compares
  restorations by FID), each with intervals, and the paired interval of Algorithm 2's gain over each other method.

    python experiments/processes.py                       # experiments/results/processes_cpu/processes.json
    python experiments/processes.py --train-only --models ddpm blurring   # train (or resume) these, then exit
    python experiments/processes.py --quick --out /tmp/p  # seconds: tiny data, model and counts

A model whose ``ema_bf16.npz`` is in ``--workdir`` only samples, so the committed weights regenerate the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.evaluation import draw, features, interval, plot_samples, score
from cloudjax.generate import generate, restore
from cloudjax.study import (
    EMA_AT,
    add_model_arguments,
    device_name,
    get_classifier,
    load_dataset,
    model_config,
    train_stages,
)


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the study: its process settings (``TrainConfig`` fields) and its samplers, or, with
    ``restores``, the restoration table."""

    settings: dict
    samplers: tuple[str, ...] = ()
    restores: bool = False
    start_noise: tuple[float, ...] = ()  # cold generation: also sampled with the start's noise × each factor
    budget: int = 1  # steps: this multiple of --train-steps (doubled, from scratch, while short of the plateau)


PRESET = json.loads((Path(__file__).parent / "configs" / "processes.json").read_text())
MODELS = {name: Model(**entry) for name, entry in PRESET["models"].items()}
PAIRED = ("swd_mean", "frechet_classifier")  # the distances of the restorations whose paired gain is reported
STEPS = PRESET["steps"]  # sampler steps (NFE 50 and 250); a sampler not listed takes the process's own
QUICK = dict(
    data="patches:300",
    image_size=8,
    models=["ddpm", "cold_blur", "restore_mask"],
    train_steps=8,
    train_batch=8,
    ema_decay=0.9,
    num_samples=16,
    num_ref=16,
    bootstrap=3,
    swd_patches=256,
    classifier_steps=20,
    steps=["ddim=2", "ddpm=2"],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a seconds-long check: tiny data, model and counts")
    add_model_arguments(p)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--num-samples", type=int, default=512, help="samples per row, held-out images per table")
    p.add_argument("--num-ref", type=int, default=1024, help="held-out images scored against")
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamplings for the 95%% intervals")
    p.add_argument("--swd-patches", type=int, default=4096)
    p.add_argument("--classifier", default=None, help="feature classifier .npz (trained and saved if missing)")
    p.add_argument("--classifier-steps", type=int, default=2000)
    p.add_argument("--workdir", default="experiments/results/processes_cpu/runs", help="training runs go here")
    p.add_argument("--out", default="experiments/results/processes_cpu")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the models, then exit")
    p.add_argument("--steps", nargs="+", default=[], metavar="SAMPLER=N", help=f"sampler steps (default {STEPS})")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    try:
        args.steps = STEPS | {k: int(n) for k, _, n in (s.partition("=") for s in args.steps)}
    except ValueError:
        p.error("--steps takes SAMPLER=N pairs")
    if args.num_ref < args.num_samples:
        p.error("--num-ref must be >= --num-samples")
    return args


def train_config(name: str, args: argparse.Namespace):
    """The :class:`cloudjax.train.TrainConfig` of model ``name``: the study's network and seed, its budget."""
    return model_config(args, budget=MODELS[name].budget, **MODELS[name].settings)


def class_scores(classifier, images: np.ndarray, bootstrap: int, seed: int) -> dict:
    """The classifier's mean confidence (largest softmax probability) with its interval, and the fraction of
    ``images`` assigned to each class."""
    from cloudjax.models.classifier import classifier_features

    logits = classifier.head(jnp.asarray(classifier_features(classifier, images)))
    probs = np.asarray(jax.nn.softmax(logits))
    confidence = probs.max(axis=1)
    rng = np.random.default_rng(seed)
    draws = [confidence[rng.integers(0, len(confidence), len(confidence))].mean() for _ in range(bootstrap)]
    histogram = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
    return {
        "confidence": float(confidence.mean()),
        "confidence_ci95": interval(np.array(draws)) if bootstrap else None,
        "histogram": [float(h) for h in histogram],
    }


def rmse_ssim(images: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image RMSE and SSIM (scikit-image, data range 1) of ``(N, H, W, C)`` images against ``reference``,
    both clipped to [0, 1]."""
    from skimage.metrics import structural_similarity

    x, y = np.clip(images, 0, 1), np.clip(reference, 0, 1)
    rmse = np.sqrt(np.mean((x - y) ** 2, axis=(1, 2, 3)))
    window = min(7, x.shape[1] - (x.shape[1] + 1) % 2)  # odd, at most the image
    ssim = [
        structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=window) for a, b in zip(x, y, strict=True)
    ]
    return rmse, np.array(ssim)


def restoration_table(restored: dict[str, np.ndarray], measured, bootstrap: int, seed: int) -> dict:
    """``{method: {rmse, ssim, rmse_ci95, ssim_ci95, metrics, metrics_ci95}}`` over the held-out images (``metrics``:
    the restorations as a set against the reference images, ``measured(images) -> (metrics, replicates)``), and
    ``algorithm2_gain``: per other method, the paired mean of (its RMSE − Algorithm 2's), (Algorithm 2's SSIM − its)
    and (its distance − Algorithm 2's) for each of :data:`PAIRED`, with intervals (> 0 where Algorithm 2 is better).

    Every method restores the same images in the same order and ``measured`` resamples them with the same indices,
    so each difference's interval is a paired bootstrap."""
    methods = [m for m in restored if m != "original"]
    per_image = {m: rmse_ssim(restored[m], restored["original"]) for m in methods}
    sets = {m: measured(restored[m]) for m in methods}
    n = len(restored["original"])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(bootstrap)]
    ci = lambda v: interval(np.array([v[i].mean() for i in draws])) if bootstrap else None  # noqa: E731
    table = {
        m: {"rmse": float(r.mean()), "ssim": float(s.mean()), "rmse_ci95": ci(r), "ssim_ci95": ci(s)}
        | {"metrics": sets[m][0], "metrics_ci95": {k: interval(v) for k, v in sets[m][1].items()}}
        for m, (r, s) in per_image.items()
    }
    (r2, s2), (values2, replicates2) = per_image["cold"], sets["cold"]
    table["algorithm2_gain"] = {
        m: {
            "rmse": float((r - r2).mean()),
            "rmse_ci95": ci(r - r2),
            "ssim": float((s2 - s).mean()),
            "ssim_ci95": ci(s2 - s),
        }
        | {k: sets[m][0][k] - values2[k] for k in PAIRED if k in values2}
        | {f"{k}_ci95": interval(sets[m][1][k] - replicates2[k]) for k in PAIRED if k in replicates2}
        for m, (r, s) in per_image.items()
        if m != "cold"
    }
    return table


def settled(spec: Model, measured: dict) -> dict:
    """What ``metrics_at`` keeps per training stage of a restoration table (its restorers' RMSE and SSIM) or a
    generation row (its sampler, NFE and metrics)."""
    keys = ("direct", "cold_naive", "cold") if spec.restores else ("sampler", "nfe", "metrics", "metrics_ci95")
    return {k: measured[k] for k in keys}


def restoration_figure(grids: dict[str, dict[str, np.ndarray]], path: Path, rows: int = 4) -> None:
    """Per degradation ``rows`` images: degraded | direct | Algorithm 1 | Algorithm 2 | original."""
    from cloudjax.plots import image_grid, new_figure

    fig = new_figure(figsize=(6, 2.2 * len(grids)))
    for i, (name, restored) in enumerate(grids.items()):
        images = np.stack([np.clip(x[:rows], 0, 1) for x in restored.values()], 1)
        ax = fig.add_subplot(len(grids), 1, i + 1)
        grid = image_grid(images.reshape(-1, *images.shape[2:]), len(restored))
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name}: " + " | ".join(restored), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out, workdir = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, args.image_size, args.num_ref, 1_000_000, args.data_dir, args.seed)
    config = dict(vars(args), device=device_name(), jax=jax.__version__, load_average_start=os.getloadavg()[0])
    trained = {name: train_stages(train_config(name, args), workdir / name, data.train) for name in args.models}
    if args.train_only:
        return {}

    classifier_path = args.classifier or out / f"classifier_{data.name}_{args.image_size}.npz"
    classifier = get_classifier(data, classifier_path, args.classifier_steps, args.seed)
    reference = features(data.ref, classifier)
    key = jax.random.key(args.seed)
    measured = lambda x: score(reference, x, key, classifier, args.swd_patches, args.bootstrap)  # noqa: E731
    floor, draws = measured(data.ref2[: args.num_samples])
    result = {
        "config": config,
        "dataset": dict(spec=args.data, name=data.name, train_images=len(data.train), held_out=2 * len(data.ref)),
        "floor": floor,
        "floor_ci95": {m: interval(v) for m, v in draws.items()},
        "training": {},
        "rows": [],
        "restoration": {},
    }
    if classifier is not None:
        result["floor_classes"] = class_scores(classifier, data.ref2[: args.num_samples], args.bootstrap, args.seed)
    result, sheets, grids = measured_before(out, result, args.models)

    def scored(model, sampler: str) -> tuple[dict, np.ndarray]:
        """One sampler's samples of ``model`` and their scores (NFE: network calls, the Gaussian-family samplers
        denoise once more after the last step)."""
        run, graphdef, params = model
        sample = lambda k, num, s, method, _: generate(run, graphdef, params, k, num, steps=s, method=method)  # noqa: E731
        steps = args.steps[sampler] if sampler in args.steps else run.diffusion.steps
        batch = min(args.sample_batch, args.num_samples)
        samples, clipped, seconds = draw(sample, sampler, steps, 1.0, batch, args.num_samples, args.seed)
        values, draws = measured(samples)
        entry = dict(
            sampler=sampler,
            nfe=steps if run.config.process.kind == "cold" else steps + 1,
            num_samples=len(samples),
            metrics=values | {"sample_clipped": clipped},
            metrics_ci95={m: interval(v) for m, v in draws.items()},
            seconds_per_image=seconds,
        )
        if classifier is not None:
            entry["classes"] = class_scores(classifier, samples, args.bootstrap, args.seed)
        return entry, samples

    def restoration(model) -> tuple[dict, dict[str, np.ndarray]]:
        """``model``'s restoration table of the held-out images and the restorations by method."""
        run, graphdef, params = model
        start = time.perf_counter()
        restored = restore(run, graphdef, params, data.ref2[: args.num_samples])  # the floor's images
        seconds = (time.perf_counter() - start) / args.num_samples
        table = restoration_table(restored, measured, args.bootstrap, args.seed)
        return table | {"seconds_per_image": seconds, "T": run.diffusion.steps}, restored

    def judged(model, spec: Model) -> dict:
        """What :func:`settled` keeps of ``model`` at an earlier stage."""
        return settled(spec, restoration(model)[0] if spec.restores else scored(model, spec.samplers[0])[0])

    for name in args.models:
        spec, (run, graphdef, params) = MODELS[name], trained[name]
        summary = json.loads((workdir / name / "training.json").read_text())
        if spec.restores:
            table, restored = restoration(trained[name])
            result["restoration"][run.config.process.degradation] = table
            grids[run.config.process.degradation] = restored
        else:
            for sampler in spec.samplers:
                entry, samples = scored(trained[name], sampler)
                result["rows"].append(dict(dataset=data.name, process=run.config.process.kind, variant=name, **entry))
                sheets[(name, entry["nfe"])] = samples[:16]
                print(json.dumps(result["rows"][-1] | {"metrics_ci95": None}), flush=True)
        # the held-out metrics, not only the loss, have settled
        summary["metrics_at"] = {"100%": settled(spec, table if spec.restores else result["rows"][-len(spec.samplers)])}
        for fraction in EMA_AT[:-1]:
            earlier = train_stages(train_config(name, args), workdir / name, data.train, fraction)
            summary["metrics_at"][f"{round(100 * fraction)}%"] = judged(earlier, spec)
        for factor in spec.start_noise:  # Algorithm 2 from the same flat starts with louder "broken symmetry"
            prior = run.measurements["mean_prior"]
            louder = {**run.measurements, "mean_prior": {**prior, "noise": prior["noise"] * factor}}
            entry, _ = scored((dataclasses.replace(run, measurements=louder), graphdef, params), spec.samplers[0])
            result["rows"].append(dict(dataset=data.name, process="cold", variant=name, start_noise=factor, **entry))
        result["training"][name] = summary
        result["config"]["load_average_end"] = os.getloadavg()[0]
        (out / "processes.json").write_text(json.dumps(result, indent=1))
    np.savez(out / "processes_sheets.npz", **{f"{name}/{nfe}": x for (name, nfe), x in sheets.items()})
    np.savez(out / "processes_restorations.npz", **{f"{d}/{m}": x[:4] for d, g in grids.items() for m, x in g.items()})
    if sheets:
        plot_samples(data.ref, sheets, out / "processes_samples.png")
    if grids:
        restoration_figure(grids, out / "processes_restoration.png")
    return result


# the settings that must agree for models measured in separate runs to share one processes.json
SHARED = ("data", "image_size", "model", "train_steps", "train_batch", "lr", "ema_decay", "num_samples", "num_ref")
SHARED += ("bootstrap", "swd_patches", "steps", "seed")


def same_floor(a: dict, b: dict) -> bool:
    """Whether two real-vs-real floors are one measurement (the same held-out images and metrics): equal up to
    float32 rounding, which differs between CPUs (AVX2 and AVX-512 kernels sum in other orders)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-7) for k in a)


def measured_before(out: Path, result: dict, models: list[str]) -> tuple[dict, dict, dict]:
    """``(result, sheets, restorations)`` with what an earlier run measured in ``out`` for models other than
    ``models`` (a model trains and is scored once, so the models of a study are measured as they finish);
    ``ValueError`` if that run had other settings."""
    sheets, grids = {}, {}
    if not (out / "processes.json").is_file():
        return result, sheets, grids
    before = json.loads((out / "processes.json").read_text())
    differ = [k for k in SHARED if before["config"].get(k) != result["config"][k]]
    if differ or not same_floor(before["floor"], result["floor"]):
        raise ValueError(f"{out}/processes.json was measured with other settings: {differ or ['floor']}")
    kept = lambda name: name not in models  # noqa: E731
    result["rows"] = [r for r in before["rows"] if kept(r["variant"])]
    result["training"] = {name: t for name, t in before["training"].items() if kept(name)}
    result["restoration"] = {d: t for d, t in before["restoration"].items() if kept(f"restore_{d}")}
    result["config"]["models"] = [m for m in before["config"]["models"] if kept(m)] + models
    with np.load(out / "processes_sheets.npz") as stored:
        sheets = {(k.split("/")[0], int(k.split("/")[1])): stored[k] for k in stored.files if kept(k.split("/")[0])}
    restorations = out / "processes_restorations.npz"  # none until a restoration model is scored
    with np.load(restorations) if restorations.is_file() else contextlib.nullcontext({}) as stored:
        for k in stored:
            degradation, method = k.split("/")
            if kept(f"restore_{degradation}"):
                grids.setdefault(degradation, {})[method] = stored[k]
    return result, sheets, grids


if __name__ == "__main__":
    main()
