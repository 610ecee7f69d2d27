"""Cold Diffusion's restoration table at small scale, and generation from blur against a Gaussian model.

For each degradation (blur, mask, down-sampling) a cold model is trained on Fashion-MNIST (``--data``) with
``cloudjax.train``; held-out test images are degraded to D(x0, T) and restored by the direct reconstruction,
Algorithm 1 and Algorithm 2. The table gives RMSE and SSIM (scikit-image) against the originals on [0, 1]
pixels, as the reference code reports them. Generation: a blur model whose last step goes to the per-channel mean,
sampled from its mean prior with Algorithm 2, against a Gaussian ("hot") model of the same network, batch and
step budget sampled with 50 DDIM steps, both scored against held-out images with :mod:`cloudjax.metrics`.

    python experiments/cold_diffusion.py               # the table: experiments/results/cold_diffusion/
    python experiments/cold_diffusion.py --quick       # seconds: 8 px, a few steps (the test suite runs it)

Writes ``cold_diffusion.json`` (settings, machine, table, generation scores, times) and ``cold_diffusion.png``
(per degradation, rows of degraded | direct | Algorithm 1 | Algorithm 2 | original; then generated samples).
The settings (the flags' defaults, the models and what they share) are ``configs/cold_diffusion.json``; each model
samples with its process's default sampler (Algorithm 2 with T steps; 50 DDIM steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from cloudjax.data import open_source
from cloudjax.generate import generate, restore
from cloudjax.metrics import fourier_features, frechet_distance, sliced_wasserstein, spectral_distance
from cloudjax.registry import samplers_for
from cloudjax.train import TrainConfig, load_run, train

PRESET = json.loads((Path(__file__).parent / "configs" / "cold_diffusion.json").read_text())
# the columns of a restoration (cloudjax.generate.restore): D(x, T), the samplers from one-shot to Algorithm 2, x
RESTORATIONS = ("degraded", *samplers_for("cold"), "original")


def rmse_ssim(images: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean RMSE and SSIM (scikit-image, data range 1) of ``(N, H, W, C)`` images in [0, 1] against ``reference``."""
    from skimage.metrics import structural_similarity

    x, y = np.clip(images, 0, 1), np.clip(reference, 0, 1)
    rmse = float(np.mean(np.sqrt(np.mean((x - y) ** 2, axis=(1, 2, 3)))))
    window = min(7, x.shape[1] - (x.shape[1] + 1) % 2)  # odd, at most the image
    ssim = [
        structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=window) for a, b in zip(x, y, strict=True)
    ]
    return rmse, float(np.mean(ssim))


def _train(config: TrainConfig, workdir: Path, source) -> tuple:
    start = time.perf_counter()
    summary = train(config, workdir, source=source, stream=None)
    run, graphdef, state = load_run(workdir)
    return run, graphdef, state, {"loss": summary["loss"], "train_s": time.perf_counter() - start}


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "load_average_at_end": load,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/cold_diffusion")
    parser.add_argument("--data", default=PRESET["data"], help="training data")
    parser.add_argument("--test-data", default=PRESET["test_data"], help="held-out images")
    parser.add_argument("--image-size", type=int, default=PRESET["image_size"])
    parser.add_argument("--model", default=PRESET["model"])
    parser.add_argument("--batch-size", type=int, default=PRESET["batch_size"])
    parser.add_argument("--train-steps", type=int, default=PRESET["train_steps"], help="training steps per model")
    parser.add_argument("--num", type=int, default=PRESET["num"], help="held-out images per row, samples per model")
    parser.add_argument("--seed", type=int, default=PRESET["seed"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8 px, 30 steps, 4 images, one model (the generation blur model restores; no Gaussian model)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(PRESET["quick"])
    degradations = {} if args.quick else PRESET["restoration"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    source = open_source(args.data, args.image_size, 1, seed=args.seed)
    held_out = open_source(args.test_data, args.image_size, 1, seed=args.seed)
    idx = np.sort(np.random.default_rng(args.seed).permutation(held_out.num_examples)[: args.num])
    reference = np.asarray(held_out.get(idx), np.float32)
    base = dict(
        **PRESET["train"],
        data=args.data,
        image_size=args.image_size,
        model=args.model,
        batch_size=args.batch_size,
        steps=args.train_steps,
        warmup_steps=min(100, args.train_steps // 10),
        checkpoint_every=args.train_steps,
        log_every=max(1, args.train_steps // 10),
        normalizer_examples=64 if args.quick else min(1024, source.num_examples),
        seed=args.seed,
    )

    table, grids, runs = {}, {}, {}

    def restoration_row(name, run, graphdef, state):
        restored = restore(run, graphdef, state.ema, reference)
        scores = {k: rmse_ssim(restored[k], reference) for k in RESTORATIONS[:-1]}
        table[name] = {k: {"rmse": rmse, "ssim": ssim} for k, (rmse, ssim) in scores.items()}
        table[name]["T"] = run.diffusion.steps
        grids[name] = restored
        print(name, table[name], flush=True)

    for name, settings in degradations.items():
        config = TrainConfig.from_flat({**base, **settings})
        run, graphdef, state, runs[name] = _train(config, out / "runs" / name, source)
        restoration_row(name, run, graphdef, state)

    # generation: cold blur to the mean + mean prior, vs a Gaussian model with the same network and budget
    generated = {}
    models = list(PRESET["generation"].items())
    for name, settings in models[:1] if args.quick else models:
        run, graphdef, state, runs[name] = _train(
            TrainConfig.from_flat({**base, **settings}), out / "runs" / name, source
        )
        if args.quick and name == "cold_blur":
            restoration_row("blur_to_mean", run, graphdef, state)
        key = jax.random.key(args.seed + 1)
        generated[name] = np.clip(generate(run, graphdef, state.ema, key, args.num), 0, 1)
    scores = {}
    for name, images in generated.items():
        swd = sliced_wasserstein(reference, images, jax.random.key(0), min_resolution=min(8, args.image_size))
        scores[name] = {
            "spectral_distance": float(spectral_distance(reference, images)),
            "frechet_fourier": float(frechet_distance(fourier_features(reference), fourier_features(images))),
            "swd_mean": swd["mean"],
            "pixel_std": float(images.std()),
        }
        print(name, scores[name], flush=True)

    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": _machine(),
        "restoration": table,
        "generation": scores,
        "runs": runs,
        "total_s": time.perf_counter() - t0,
    }
    (out / "cold_diffusion.json").write_text(json.dumps(result, indent=1))
    _figure(grids, generated, reference, out / "cold_diffusion.png")
    return result


def _figure(grids: dict, generated: dict, reference: np.ndarray, path: Path, rows: int = 4) -> None:
    """Per degradation ``rows`` rows of degraded | direct | Alg. 1 | Alg. 2 | original; then samples per model."""
    from cloudjax.plots import image_grid, new_figure

    panels = [
        (f"{name}: " + " | ".join(RESTORATIONS), np.stack([g[k][:rows] for k in RESTORATIONS], 1))
        for name, g in grids.items()
    ]
    panels += [(f"generated: {name}", images[None, : 2 * len(RESTORATIONS)]) for name, images in generated.items()]
    panels += [("held-out data", reference[None, : 2 * len(RESTORATIONS)])]
    fig = new_figure(figsize=(6, 2.2 * len(panels)))
    for i, (title, images) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        ncols = images.shape[1]
        ax.imshow(image_grid(images.reshape(-1, *images.shape[2:]), ncols)[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
