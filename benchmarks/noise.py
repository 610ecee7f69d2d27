"""Noise-kernel speed: cloud noise vs white noise, Π∘FFT vs the plain real FFT.

    python benchmarks/noise.py            # CPU-sized shapes
    python benchmarks/noise.py --large    # the accelerator set, 256×64×64×3 and up

Every function is jitted and timed after a warm-up call as the median of ``--repeats`` calls, each ended by
``block_until_ready``; ratios compare timings taken in the same run. Prints one JSON object per
configuration and writes them all, with the device and versions, to ``benchmarks/results/noise_<backend>.json``.

* ``noise``: ``power_law_noise(key, shape, Δ=1.5, pad=3)`` against ``jax.random.normal(key, shape)`` for the
  PRNG implementations threefry (default), rbg and unsafe_rbg. Target on GPU: cloud ≤ 4× white at 256×64×64×3.
* ``fft``: ``rfft_real`` (Π∘FFT) against ``jnp.fft.rfft2`` on the spatial axes, and ``irfft_real`` against
  ``jnp.fft.irfft2``. Target: Π ≤ 1.5× rfft2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import _harness as H  # benchmarks/_harness.py
import jax
import jax.numpy as jnp
import numpy as np

from cloudjax.noise import power_law_noise
from cloudjax.spectral import irfft_real, rfft_real

SMALL = [(16, 32, 32, 3), (64, 64, 64, 3), (8, 128, 128, 3)]
LARGE = [(256, 64, 64, 3), (64, 128, 128, 3), (16, 256, 256, 3)]
PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")
DELTA = 1.5


def median_ms(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_noise(shape, impl: str, repeats: int) -> dict:
    key = jax.random.key(0, impl=impl)
    white = jax.jit(lambda k: jax.random.normal(k, shape, jnp.float32))
    cloud = jax.jit(lambda k: power_law_noise(k, shape, DELTA, pad=3))
    white_ms = median_ms(white, key, repeats=repeats)
    cloud_ms = median_ms(cloud, key, repeats=repeats)
    return {
        "bench": "noise",
        "shape": list(shape),
        "prng": impl,
        "delta": DELTA,
        "pad": 3,
        "white_ms": round(white_ms, 4),
        "cloud_ms": round(cloud_ms, 4),
        "cloud_over_white": round(cloud_ms / white_ms, 3),
    }


def bench_fft(shape, repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    X = rfft_real(x)
    Z = jnp.fft.rfft2(x, axes=(-3, -2), norm="ortho")
    H, W = shape[-3], shape[-2]
    times = {
        "rfft_real_ms": median_ms(jax.jit(rfft_real), x, repeats=repeats),
        "rfft2_ms": median_ms(jax.jit(lambda v: jnp.fft.rfft2(v, axes=(-3, -2), norm="ortho")), x, repeats=repeats),
        "irfft_real_ms": median_ms(jax.jit(irfft_real), X, repeats=repeats),
        "irfft2_ms": median_ms(
            jax.jit(lambda v: jnp.fft.irfft2(v, s=(H, W), axes=(-3, -2), norm="ortho")), Z, repeats=repeats
        ),
    }
    return {
        "bench": "fft",
        "shape": list(shape),
        **{k: round(v, 4) for k, v in times.items()},
        "pi_over_rfft2": round(times["rfft_real_ms"] / times["rfft2_ms"], 3),
        "inverse_pi_over_irfft2": round(times["irfft_real_ms"] / times["irfft2_ms"], 3),
    }


def environment() -> dict:
    import jaxlib

    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews the timings
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="accelerator shapes (256x64x64x3 and up)")
    parser.add_argument("--quick", action="store_true", help="one tiny shape: a seconds-long CPU check")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per function (median reported)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/noise_<backend>.json)")
    args = parser.parse_args()

    env = environment()
    results = []
    for shape in [(2, 16, 16, 1)] if args.quick else LARGE if args.large else SMALL:
        for row in [bench_fft(shape, args.repeats)] + [bench_noise(shape, impl, args.repeats) for impl in PRNGS]:
            row = {**row, "backend": env["backend"], "device": env["device"]}
            print(json.dumps(row), flush=True)
            results.append(row)
    H.save({"environment": env, "results": results}, "noise", env["backend"], args.out)


if __name__ == "__main__":
    main()
