"""Where a CPU train step's time goes: the UNet's convolutions alone, XLA against PyTorch (oneDNN), shape by shape.

    python benchmarks/conv_kernels.py                       # tiny and small at 32 px, batch 32, one pinned core
    python benchmarks/conv_kernels.py --presets tiny --sizes 16 --batch 8
    python benchmarks/conv_kernels.py --matmul             # also each convolution written as a matmul

The convolutions are read from the cloudjax UNet's own jaxpr (every ``conv_general_dilated`` of one forward
pass: input and kernel shapes, strides, padding), so the list is exactly what the train step runs. Each distinct
shape is timed alone as forward + both gradients (input and kernel), the work it does in a train step: in JAX a
jitted ``vjp`` of one NHWC convolution (XLA:CPU, which hands it to its YNNPACK/Eigen kernels), in PyTorch
``F.conv2d`` on NCHW with ``backward`` (oneDNN); with ``--matmul`` also each stride-1 convolution written as a
matmul (its total: the network's convolutions with those rewritten). Candidates run in turns (A B A B); a row
gives the medians, and the summary per preset the sum over the network's convolutions (times the count of each
shape) — to set beside the whole train step of ``benchmarks/train_throughput.py``: if the convolutions alone show
the same ratio, the gap is XLA's convolution kernels, not the step around them.
Writes ``results/conv_kernels_cpu.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

import _harness as H  # benchmarks/_harness.py
import numpy as np


def unet_convolutions(preset: str, size: int, batch: int) -> collections.Counter:
    """``Counter`` of ``(input shape NHWC, kernel shape HWIO, strides, padding)`` over one UNet forward pass."""
    import jax
    import jax.extend
    import jax.numpy as jnp
    from flax import nnx

    from cloudjax.models import UNet
    from cloudjax.models import preset as unet_preset

    model = UNet(unet_preset(preset), rngs=nnx.Rngs(0))
    x, t = jnp.zeros((batch, size, size, model.config.channels)), jnp.zeros((batch,))
    found = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                p = eqn.params
                found[(lhs, rhs, tuple(p["window_strides"]), tuple(map(tuple, p["padding"])))] += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(lambda x, t: model(x, t))(x, t).jaxpr)
    return found


def jax_conv(lhs, rhs, strides, padding):
    """``() → result``: jitted forward + vjp (input and kernel gradients) of one NHWC convolution."""
    import jax

    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return _forward_backward(conv, lhs, rhs)


def jax_matmul(lhs, rhs, strides, padding):
    """The same convolution written as one matmul (``None`` for a strided one): 1×1 as an einsum over channels,
    k×k as im2col, the k² shifted inputs stacked on the channel axis against the ``(k²·C, O)`` kernel."""
    import jax.numpy as jnp

    if tuple(strides) != (1, 1):
        return None
    (kh, kw, c, o), (_, h, w_, _) = rhs, lhs

    def conv(x, w):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
        cols = jnp.concatenate([x[:, i : i + h, j : j + w_] for i in range(kh) for j in range(kw)], axis=-1)
        return jnp.einsum("bhwk,ko->bhwo", cols, w.reshape(kh * kw * c, o))

    return _forward_backward(conv, lhs, rhs)


def _forward_backward(conv, lhs, rhs):
    """``() → result``: ``conv(x, w)`` on random inputs of those shapes, forward and vjp, jitted."""
    import jax

    rng = np.random.default_rng(0)
    x, w = rng.normal(size=lhs).astype(np.float32), rng.normal(size=rhs).astype(np.float32)

    @jax.jit
    def step(x, w):
        y, pullback = jax.vjp(conv, x, w)
        return pullback(y)

    x, w = jax.device_put(x), jax.device_put(w)
    return lambda: step(x, w)


def torch_conv(lhs, rhs, strides, padding):
    """``() → result``: ``F.conv2d`` forward + backward on the same shapes in NCHW (padding as given)."""
    import torch
    import torch.nn.functional as F

    n, h, w_, c = lhs
    kh, kw, ci, co = rhs
    x = torch.randn(n, c, h, w_, requires_grad=True)
    w = torch.randn(co, ci, kh, kw, requires_grad=True)
    (top, bottom), (left, right) = padding
    symmetric = top == bottom and left == right

    def step():
        inp = x if symmetric else F.pad(x, (left, right, top, bottom))
        y = F.conv2d(inp, w, stride=strides, padding=(top, left) if symmetric else 0)
        x.grad = w.grad = None
        y.backward(y.detach())
        return w.grad

    return step


def worker(args) -> None:
    import torch

    torch.set_num_threads(H.threads())
    for preset in args.presets:
        for size in args.sizes:
            for (lhs, rhs, strides, padding), count in unet_convolutions(preset, size, args.batch).items():
                shape = (lhs, rhs, strides, padding)
                wait = lambda r: r[0].block_until_ready()
                candidates = {
                    "cloudjax": H.timed(jax_conv(*shape), args.repeats, wait),
                    "torch_eager": H.timed(torch_conv(*shape), args.repeats, lambda r: None),
                }
                if args.matmul and (matmul := jax_matmul(*shape)) is not None:
                    candidates["cloudjax_matmul"] = H.timed(matmul, args.repeats, wait)
                for fn in candidates.values():
                    fn()  # warm-up (compile)
                times = H.interleaved(candidates, args.turns)
                for name, seconds in times.items():
                    row = dict(framework=name, preset=preset, image_size=size, batch=args.batch, input=lhs,
                               kernel=rhs, strides=strides, padding=padding, count=count, cores=args.cores[0],
                               ms=round(1e3 * H.median(seconds), 3))  # fmt: skip
                    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cores", nargs="+", default=["1"], help="core settings: 1 (pinned), all")
    parser.add_argument("--repeats", type=int, default=3, help="calls per turn")
    parser.add_argument("--turns", type=int, default=3, help="turns per framework (A B A B ...)")
    parser.add_argument("--matmul", action="store_true", help="also time each convolution written as a matmul")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=H.RESULTS / "conv_kernels_cpu.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    argv = ["--presets", *args.presets, "--sizes", *map(str, args.sizes), "--batch", str(args.batch)]
    argv += ["--repeats", str(args.repeats), "--turns", str(args.turns)] + ["--matmul"] * args.matmul
    meta = dict(H.machine(), load_average_start=os.getloadavg())
    rows = H.run_workers(__file__, argv, args.cores)
    meta["load_average_end"] = os.getloadavg()
    totals = collections.defaultdict(float)
    shape = lambda r: tuple(map(str, (r["preset"], r["image_size"], r["cores"], r["input"], r["kernel"], r["strides"])))
    as_matmul = {shape(r): r for r in rows if r["framework"] == "cloudjax_matmul"}
    for row in rows:
        if row["framework"] != "cloudjax_matmul":
            totals[(row["framework"], row["preset"], row["image_size"], row["cores"])] += row["ms"] * row["count"]
        if row["framework"] == "cloudjax" and args.matmul:  # every stride-1 convolution as a matmul, the rest as is
            ms = as_matmul.get(shape(row), row)["ms"]
            totals[("cloudjax_matmul", row["preset"], row["image_size"], row["cores"])] += ms * row["count"]
    summary = [dict(framework=f, preset=p, image_size=s, cores=c, ms_per_forward_backward=round(ms, 2),
                    images_per_second=args.batch / (ms / 1e3)) for (f, p, s, c), ms in totals.items()]  # fmt: skip
    convs = [r for r in summary if r["framework"] != "cloudjax_matmul"]
    ratios = H.ratios(convs, ("preset", "image_size", "cores"), "images_per_second")  # > 1: XLA's are faster
    args.out.write_text(json.dumps(dict(meta=meta, ratios=ratios, totals=summary, rows=rows), indent=1) + "\n")
    print(*map(json.dumps, ratios + summary), f"wrote {args.out}", sep="\n")


if __name__ == "__main__":
    main()
