#!/usr/bin/env python
"""Does cloud noise sample in fewer steps? The noise-free half of the question, with an exact denoiser.

    python experiments/gaussian_steps.py --image-size 32 --num 1024 --out runs/gaussian_steps

The data are zero-mean Gaussian images whose Π covariance is diagonal with the Π variance C of natural-image
patches (``cloudjax.data.patches``, normalised per pixel). For such data the exact denoiser is known
(:func:`cloudjax.gaussian_oracle`), so every error left in the samples is the sampler's discretisation error,
not the network's. For white noise and for cloud noise with the fitted Δ (pad = 1, for which the oracle is
exact, and pad = 3, the paper's aperiodic noise, for which the oracle ignores the crop's small mode
correlations), and each sampler, the script draws ``--num`` samples per step count and records the error of
their radially averaged log spectrum against the data's:

    e_r = log(S_r / C_r),  rmse = √mean_r e_r²,  S = mean over samples of (Π x)²,

next to the Monte-Carlo floor (the same error for ``--num`` exact data samples). For the deterministic samplers
with diagonal noise, the first sample starts from the unit probe ε = Π⁻¹√N, whose output is the sampler's exact
expected spectrum ("exact_rmse", no Monte-Carlo error). Writes ``gaussian_steps.json`` and
``gaussian_steps.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import cloudjax as cj
from cloudjax.data.patches import patches
from cloudjax.registry import samplers_for
from cloudjax.spectral import irfft_real, radial_profile, rfft_real
from cloudjax.stats import fit_power_law

DETERMINISTIC = ("ddim", "dpm++2m")
TOLERANCE = 0.05  # "converged": log-spectrum rmse below 5 %


def log_spectrum_error(x: jnp.ndarray, C: np.ndarray) -> np.ndarray:
    """Per radial bin ``log(S_r / C_r)`` of images x ``(n, H, W, 1)`` against the Π variance C ``(H, W)``."""
    _, sampled = radial_profile(jnp.mean(rfft_real(x)[..., 0] ** 2, axis=0))
    _, reference = radial_profile(C)
    return np.log(np.asarray(sampled) / np.asarray(reference))


def summary(errors: np.ndarray) -> dict[str, float]:
    return {"rmse": float(np.sqrt(np.mean(errors**2))), "max": float(np.abs(errors).max())}


def run(args: argparse.Namespace) -> dict:
    size, n = args.image_size, args.num
    images = patches(args.patches, size, channels=1, seed=args.seed, normalize="pixel")
    C = np.asarray(jnp.mean(rfft_real(images)[..., 0] ** 2, axis=0), np.float32)
    delta = float(fit_power_law(images).delta)
    print(f"data: {args.patches} patches {size}x{size}, fitted delta {delta:.3f}", file=sys.stderr)

    key_data, key_noise, key_sampler = jax.random.split(jax.random.key(args.seed), 3)
    data = irfft_real(np.sqrt(C)[..., None] * jax.random.normal(key_data, (n, size, size, 1)))
    floor = summary(log_spectrum_error(data, C))

    noises = {
        "white": cj.WhiteNoise(),
        "cloud_pad1": cj.PowerLawNoise(delta, pad=1),
        "cloud_pad3": cj.PowerLawNoise(delta, pad=3),
    }
    rows, profiles = [], {}
    for name, noise in noises.items():
        diffusion = cj.GaussianDiffusion(noise=noise, schedule=args.schedule)
        oracle = cj.gaussian_oracle(diffusion, C)
        probe = irfft_real(np.sqrt(noise.fourier_variance(size, size))[None, :, :, None], axes=(1, 2))
        eps = jnp.concatenate([probe, noise.sample(key_noise, (n, size, size, 1))])
        for method in args.methods:
            for steps in args.steps:
                start = time.perf_counter()
                x = cj.sample(oracle, diffusion, key_sampler, eps.shape, steps, method=method, init_noise=eps)
                x = jax.block_until_ready(x)
                row = {"noise": name, "method": method, "steps": steps, "nfe": steps + 1}
                row["seconds"] = round(time.perf_counter() - start, 3)
                errors = log_spectrum_error(x[1:], C)
                row.update({f"log_spectrum_{k}": v for k, v in summary(errors).items()})
                if method in DETERMINISTIC and name != "cloud_pad3":  # diagonal: the probe gives the exact spectrum
                    row["exact_rmse"] = summary(log_spectrum_error(x[:1], C))["rmse"]
                rows.append(row)
                profiles[f"{name}/{method}/{steps}"] = errors.tolist()
                print(json.dumps(row), file=sys.stderr)

    converged = {}
    for name in noises:
        for method in args.methods:
            mine = [r for r in rows if r["noise"] == name and r["method"] == method]
            ok = [r["steps"] for r in mine if r.get("exact_rmse", r["log_spectrum_rmse"]) < TOLERANCE]
            converged[f"{name}/{method}"] = min(ok) if ok else None
    k, _ = radial_profile(C)
    return {
        "config": {k_: v for k_, v in vars(args).items() if k_ != "out"},
        "delta": delta,
        "monte_carlo_floor": floor,
        "tolerance": TOLERANCE,
        "steps_to_tolerance": converged,
        "k": k.tolist(),
        "rows": rows,
        "profiles": profiles,
    }


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    methods, steps = result["config"]["methods"], result["config"]["steps"]
    shown = min(steps, key=lambda s: abs(s - 10))
    colors = {"white": "tab:gray", "cloud_pad1": "tab:blue", "cloud_pad3": "tab:orange"}
    fig = Figure(figsize=(5 * len(methods), 8), layout="constrained")
    axes = fig.subplots(2, len(methods), squeeze=False)
    for col, method in enumerate(methods):
        top, bottom = axes[0, col], axes[1, col]
        for name, color in colors.items():
            rows = [r for r in result["rows"] if r["noise"] == name and r["method"] == method]
            top.plot([r["steps"] for r in rows], [r["log_spectrum_rmse"] for r in rows], "o-", c=color, label=name)
            if "exact_rmse" in rows[0]:
                top.plot([r["steps"] for r in rows], [r["exact_rmse"] for r in rows], "x--", c=color, alpha=0.7)
            bottom.plot(result["k"], np.exp(result["profiles"][f"{name}/{method}/{shown}"]), "o-", c=color, label=name)
        top.axhline(result["monte_carlo_floor"]["rmse"], c="k", ls=":", label="Monte-Carlo floor")
        top.set(xscale="log", yscale="log", xlabel="steps", ylabel="log-spectrum rmse", title=method)
        bottom.axhline(1.0, c="k", ls=":")
        bottom.set(xlabel="|k| (cycles / pixel)", ylabel="sampled / data spectrum", title=f"{method}, {shown} steps")
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    fig.suptitle(f"Exact Gaussian denoiser, Δ = {result['delta']:.2f}; x markers: exact expected spectrum")
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num", type=int, default=1024, help="samples per configuration")
    parser.add_argument("--patches", type=int, default=4000, help="patches the data spectrum is measured on")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000])
    parser.add_argument("--methods", nargs="+", default=samplers_for("gaussian"), choices=samplers_for("gaussian"))
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "offset_cosine", "linear"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/gaussian_steps"))
    args = parser.parse_args(argv)
    if args.image_size < 4 or args.num < 2 or args.patches < 2 or min(args.steps) < 1:
        parser.error("need --image-size >= 4, --num >= 2, --patches >= 2 and every --steps >= 1")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gaussian_steps.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "gaussian_steps.png")
    print(json.dumps({"steps_to_tolerance": result["steps_to_tolerance"], "out": str(args.out)}))


if __name__ == "__main__":
    main()
