"""Training-step throughput and MFU of the UNet presets, and the share of a step spent synthesising noise.

For every (model, image size, dtype, noise) this compiles the real sharded train step of
:mod:`cloudjax.train`, reads its FLOPs from XLA's cost analysis, times ``--iters`` steps and prints one JSON
object; all rows go to ``benchmarks/results/train_step_<device>.json``. MFU = FLOPs per step / step time /
the device's dense peak (table below; None where unknown, e.g. CPU). The noise share is the time of the
noise draw alone (jitted, batch shape) over the time of the whole step.

    python benchmarks/train_step.py                 # small and base at 32 and 64 px, float32 and bfloat16
    python benchmarks/train_step.py --quick         # tiny at 16 px: a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import _harness as H  # benchmarks/_harness.py
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.diffusion import GaussianDiffusion
from cloudjax.noise import PowerLawNoise, WhiteNoise
from cloudjax.train import TrainConfig, init_state, make_mesh, make_optimizer, make_train_step

# Dense peak FLOP/s per device by (device-kind substring, computation dtype). float32 matmuls on these GPUs
# run as TF32 under XLA's default precision, so the float32 entry is the TF32 tensor-core peak.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12,
    ("H100", "float32"): 494e12,
    ("H200", "bfloat16"): 989e12,
    ("H200", "float32"): 494e12,
    ("A100", "bfloat16"): 312e12,
    ("A100", "float32"): 156e12,
    ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v4", "bfloat16"): 275e12,
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    return next((v for (kind, dt), v in PEAK_FLOPS.items() if kind in device_kind and dt == dtype), None)


def _time(fn, iters: int) -> float:
    """Median seconds per call of ``fn()`` (which returns something to block on) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def bench(model: str, size: int, dtype: str, noise: str, batch: int, iters: int) -> dict:
    settings = dict(model=model, image_size=size, dtype=dtype, batch_size=batch, noise=noise, warmup_steps=0)
    config = TrainConfig.from_flat(settings)
    mesh = make_mesh()
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, state = init_state(config, replicated)
    noise_model = WhiteNoise() if noise == "white" else PowerLawNoise(1.5)
    diffusion = GaussianDiffusion(noise_model, loss_weighting="pixel" if noise == "white" else "mahalanobis")
    step = make_train_step(graphdef, diffusion, make_optimizer(config), ema_decay=config.ema_decay, mesh=mesh)
    shape = (batch, size, size, 1)
    x = jax.device_put(np.random.default_rng(0).standard_normal(shape, np.float32), data)
    key = jax.random.key(0)
    tic = time.perf_counter()
    compiled = step.lower(state, x, key).compile()
    compile_s = time.perf_counter() - tic
    flops = H.flops(compiled)

    holder = [state]

    def one_step():
        holder[0], metrics = compiled(holder[0], x, key)
        return metrics["loss"]

    step_s = _time(one_step, iters)
    draw = jax.jit(lambda k: noise_model.sample(k, shape), out_shardings=data)
    noise_s = _time(lambda: draw(key), iters)
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind, dtype)
    return {
        "model": model,
        "image_size": size,
        "dtype": dtype,
        "noise": noise,
        "global_batch": batch,
        "devices": jax.device_count(),
        "device": device.device_kind,
        "platform": device.platform,
        "step_seconds": step_s,
        "images_per_s": batch / step_s,
        "flops_per_step": flops,
        "mfu": None if peak is None or flops is None else flops / step_s / (peak * jax.device_count()),
        "noise_seconds": noise_s,
        "noise_share": noise_s / step_s,
        "compile_seconds": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model at 16 px, batch 16 (CPU smoke run)")
    parser.add_argument("--models", nargs="+", default=["small", "base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_step_<device>.json)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.sizes, args.batch, args.iters = ["tiny"], [16], 16, 5
    device = jax.devices()[0]
    name = "cpu" if device.platform == "cpu" else device.device_kind.replace(" ", "_")
    out = Path(args.out or Path(__file__).parent / "results" / f"train_step_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "quick": args.quick,
    }
    rows = []
    for model in args.models:
        for size in args.sizes:
            for dtype in args.dtypes:
                for noise in ("white", "cloud"):
                    row = bench(model, size, dtype, noise, args.batch, args.iters)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    # written after every row: a run stopped by a timeout keeps what it measured
                    meta["load_average_1min"] = os.getloadavg()[0]  # other work on the machine skews the timings
                    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"→ {out}")


if __name__ == "__main__":
    main()
