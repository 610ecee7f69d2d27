"""Cold Diffusion's blur D(x0, t): one Fourier pass (``cj.GaussianBlur``) against the reference code's t convolutions.

    python benchmarks/degradations.py             # 8×32×32×3, about a minute on a 2-core CPU
    python benchmarks/degradations.py --size 64   # larger images

The reference code recomputes D(x0, t) as t depthwise convolutions of the padded image at every call; here that is a
jitted ``lax.fori_loop`` of t ``lax.conv_general_dilated`` calls (HIGHEST precision, channels folded into the
batch). ``cj.GaussianBlur`` does one FFT, one product of per-axis transfer tables and one inverse FFT whatever t
is. Both are timed at t = T for every image (the reference cost grows with the largest t of the batch; the one-pass
cost does not depend on t) as the median of ``--repeats`` calls (a fifth of them for the convolutions) after a
warm-up, side by side in one run, and checked to agree. The reference blurs: std σ_i = e^{0.01 i}, 15×15 kernels for
T = 50 and 200 (its CelebA restoration setting), 27×27 for T = 300 (its generation setting). Prints one JSON object
per configuration and writes them all, with the machine and its load (before and after), to
``benchmarks/results/degradations_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

import _harness as H  # benchmarks/_harness.py
import jax
import jax.numpy as jnp
import numpy as np
from noise import environment  # benchmarks/noise.py

import cloudjax as cj

CONFIGS = [(50, 15, "circular"), (200, 15, "circular"), (300, 27, "circular"), (200, 15, "reflect")]


@partial(jax.jit, static_argnames="padding")
def conv_composition(x, kernels, t, padding):
    """The reference D(x, t): t convolutions of every channel, step i with ``kernels[i]`` ``(k, k)``, SAME alignment.

    Channels are folded into the batch for a one-feature ``lax.conv`` (on CPU about 1.5× faster than the depthwise
    ``feature_group_count=C`` form, so the fastest composition of the ones we tried)."""
    (B, H, W, C), k = x.shape, kernels.shape[-1]
    pads = ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0))
    mode = "wrap" if padding == "circular" else "reflect"

    def step(i, y):
        return jax.lax.conv_general_dilated(
            jnp.pad(y, pads, mode=mode), kernels[i][:, :, None, None], (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    y = jax.lax.fori_loop(0, t, step, jnp.moveaxis(x, -1, 1).reshape(B * C, H, W, 1))
    return jnp.moveaxis(y.reshape(B, C, H, W), 1, -1)


def gaussian_kernels(stds, k: int) -> jnp.ndarray:
    """``(T, k, k)`` normalised truncated 2-D Gaussians."""
    a = np.arange(k) - (k - 1) / 2
    g = np.exp(-(a[None, :, None] ** 2 + a[None, None, :] ** 2) / (2 * np.asarray(stds)[:, None, None] ** 2))
    return jnp.asarray(g / g.sum(axis=(1, 2), keepdims=True), jnp.float32)


def timed(fn, *args, repeats: int):
    """``(output, median ms)``: the output of a warm-up (compiling) call, then the median of ``repeats`` calls."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return out, statistics.median(times)


def bench_blur(steps: int, kernel_size: int, padding: str, shape, repeats: int) -> dict:
    blur = cj.GaussianBlur.from_routine("exponential", steps, 0.01, kernel_size, padding)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    kernels = gaussian_kernels(blur.stds, kernel_size)
    fast, one_pass_ms = timed(jax.jit(lambda x, t: blur(x, t)), x, jnp.full(shape[0], steps), repeats=repeats)
    slow, conv_ms = timed(lambda x: conv_composition(x, kernels, steps, padding), x, repeats=max(repeats // 5, 1))
    return {
        "bench": "blur",
        "shape": list(shape),
        "steps": steps,
        "kernel_size": kernel_size,
        "padding": padding,
        "stds": "exp(0.01 i)",
        "one_pass_ms": round(one_pass_ms, 3),
        "conv_composition_ms": round(conv_ms, 3),
        "speedup": round(conv_ms / one_pass_ms, 1),
        "max_abs_difference": float(jnp.abs(fast - slow).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-pass calls (a fifth for the convolutions)")
    parser.add_argument("--out", default=None, help="JSON file (default results/degradations_<backend>.json)")
    args = parser.parse_args()

    env = {**environment(), "cpu_model": H.cpu_model()}
    shape = (args.batch, args.size, args.size, 3)
    results = []
    for steps, kernel_size, padding in CONFIGS:
        row = {**bench_blur(steps, kernel_size, padding, shape, args.repeats), "backend": env["backend"]}
        print(json.dumps(row), flush=True)
        results.append(row)
    env["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    H.save({"environment": env, "results": results}, "degradations", env["backend"], args.out)


if __name__ == "__main__":
    main()
