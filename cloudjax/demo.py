"""``cloudjax demo``: the main job in miniature — white vs cloud noise on natural patches, minutes on a CPU."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path

from cloudjax._files import atomic_write
from cloudjax.generate import generate
from cloudjax.train import TrainConfig, load_run, train

__all__ = ["run_demo"]

# The two runs' settings, as flat settings (what `cloudjax train`'s flags give): the same network, prediction and
# optimiser; cloud noise with the author's Mahalanobis loss, white with the pixel loss.
PRESET = dict(model="tiny", lr=1e-3, prediction="v")
NOISES = {
    "white": dict(noise="white", loss_weighting="pixel"),
    "cloud": dict(noise="cloud", loss_weighting="mahalanobis"),
}


def run_demo(out: str | Path, steps: int = 20_000, minutes: float = 7.0, quick: bool = False, seed: int = 0) -> dict:
    """Fit Δ on natural patches, train a white and a cloud ``tiny`` model, sample both, write a report.

    ``out`` receives stats.json, fit.png, noise.png (the Δ fit), ``white/`` and ``cloud/`` (runs),
    samples.png (data | white | cloud) and summary.json / summary.md with the numbers. The whole demo
    aims to end within ``minutes``: each model trains ``steps`` steps or its share of the time left (less an
    allowance for compiling and sampling), whichever ends first. Cloud uses the fitted Δ and the author's
    Mahalanobis loss; white the pixel loss; same network, v-prediction (well-conditioned at both ends of the
    cosine schedule, where an ε-network's x̂0 = (x − σε̂)/α amplifies errors by 1/α), batches and seed.
    ``quick``: 8 px, a few steps, for tests.
    """
    from cloudjax.data import open_source
    from cloudjax.metrics import sliced_wasserstein, spectral_distance
    from cloudjax.plots import plot_sample_comparison
    from cloudjax.stats import fit_power_law
    from cloudjax.stats_report import write_stats_report

    deadline = time.perf_counter() + 60 * minutes
    out = Path(out)
    size, batch, num, sample_steps = (8, 8, 16, 4) if quick else (16, 16, 256, 50)
    steps = min(steps, 4) if quick else steps
    spec = f"patches:{256 if quick else 4096}"
    source = open_source(spec, size, 1, seed=seed)
    data = source.get(np.arange(min(source.num_examples, 1024)))
    report = write_stats_report(data, out, table_size=64 if quick else 256, seed=seed)
    delta = float(report["delta"])

    summary = {"delta": delta, "amplitude": report["amplitude"], "r_value": report["r_value"], "image_size": size}
    samples = {"data": data[:num]}
    for remaining, noise in ((2, "white"), (1, "cloud")):
        sizes = dict(data=spec, image_size=size, batch_size=batch, steps=steps, warmup_steps=min(100, steps // 10))
        intervals = dict(checkpoint_every=steps, log_every=max(1, steps // 10), ema_decay=0.99 if quick else 0.995)
        fitted = dict(delta=delta) if noise == "cloud" else {}
        config = TrainConfig.from_flat({**PRESET, **NOISES[noise], **sizes, **intervals, **fitted, "seed": seed})
        tic = time.perf_counter()
        budget = max(10.0, (deadline - tic) / remaining - 60)  # 60 s: compiling and sampling
        result = train(config, out / noise, source=source, time_limit=budget)
        run, graphdef, state = load_run(out / noise)
        x = generate(run, graphdef, state.ema, jax.random.key(seed + 1), num, steps=sample_steps)
        samples[noise] = np.clip(x, 0, 1)
        ref = jnp.asarray(data[: len(x)])
        swd = sliced_wasserstein(jnp.asarray(x), ref, jax.random.key(seed), num_patches=2048, num_projections=64)
        summary[noise] = {
            "steps": result["step"],
            "seconds": time.perf_counter() - tic,
            "loss": result["loss"],
            "spectral_distance": float(spectral_distance(jnp.asarray(x), ref)),
            "swd_mean": float(swd["mean"]),
            "sample_delta": float(fit_power_law(x).delta),
            "sample_mean": float(x.mean()),
            "sample_std": float(x.std()),
        }
    summary["data_mean"], summary["data_std"] = float(data.mean()), float(data.std())
    plot_sample_comparison(samples, out / "samples.png")
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    atomic_write(out / "summary.md", _demo_markdown(summary, sample_steps))
    return summary


def _demo_markdown(s: dict, sample_steps: int) -> str:
    rows = [
        ("training steps", "steps", "{:d}"),
        ("training seconds", "seconds", "{:.0f}"),
        ("final loss", "loss", "{:.4f}"),
        ("spectral distance to data (log-power RMS, lower is better)", "spectral_distance", "{:.3f}"),
        ("sliced Wasserstein distance, mean over levels", "swd_mean", "{:.4f}"),
        (f"Δ fitted on samples (data: {s['delta']:.3f})", "sample_delta", "{:.3f}"),
        (f"pixel mean (data: {s['data_mean']:.3f})", "sample_mean", "{:.3f}"),
        (f"pixel std (data: {s['data_std']:.3f})", "sample_std", "{:.3f}"),
    ]
    lines = [
        "# cloudjax demo: white vs cloud noise on natural patches",
        "",
        f"Natural-image patches, {s['image_size']}×{s['image_size']} grey. Power-law fit of the data: "
        f"Δ = {s['delta']:.3f}, A = {s['amplitude']:.4g}, r = {s['r_value']:.3f} (fit.png, stats.json).",
        f"Both models: the `tiny` UNet, same batches and seed; cloud noise with the fitted Δ and the Mahalanobis "
        f"loss, white noise with the pixel loss, both predicting v. Samples: EMA weights, DDIM, {sample_steps} steps "
        "(samples.png).",
        "",
        "| | white | cloud |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {fmt.format(s['white'][k])} | {fmt.format(s['cloud'][k])} |" for name, k, fmt in rows]
    lines += ["", "A few minutes of CPU training make rough samples: compare the two columns, not with the data."]
    return "\n".join(lines) + "\n"
