"""Training throughput: cloudjax against a PyTorch UNet of the same layout, and data-fed against synthetic input.

    python benchmarks/train_throughput.py            # accelerator: small/base × 32/64 px, batch 128, bf16
    python benchmarks/train_throughput.py --quick    # CPU check that every path runs (numbers mean nothing)

For each preset and image size, one row per framework and input:

* ``cloudjax``: the trainer's own jitted step (``cloudjax.train.make_train_step``: ε-prediction loss with the
  noise drawn on the device, clipping, AdamW, EMA), the batch placed with ``make_array_from_process_local_data``.
* ``pytorch``: diffusers' ``UNet2DModel`` with the same widths, blocks, attention levels, GroupNorm and dropout
  (the parameter counts are equal for every preset; each row has its own), ``torch.compile``, bf16 autocast, a
  cosine schedule, the same noise (cloud noise from the same spectrum), clipping, AdamW (fused on CUDA) and EMA.
* input ``synthetic``: one fixed host batch every step; ``fashion_mnist``: batches from ``BatchIterator`` over the
  Fashion-MNIST IDX files (``--data-dir``), so host-side loading and resizing are inside the timing.

Images/s is ``batch · steps / seconds`` over ``--steps`` steps after ``--warmup`` (compile) steps, the last result
fetched to the host. MFU is ``flops per step / step time / peak``, with the flops of the compiled cloudjax step
(XLA's cost analysis) for both frameworks — same network, same useful work — and the dense bf16 peak of the
device (no MFU for unknown devices or the CPU). torch and diffusers are optional benchmark dependencies
(``pip install torch diffusers``), imported here only; without them the PyTorch rows are skipped with a note.
Prints one JSON object per row and writes ``{"rows": [...]}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import cloudjax as cj
from cloudjax.data import BatchIterator, open_source
from cloudjax.train import TrainConfig, init_state, make_mesh, make_train_step

RESULTS = Path(__file__).parent / "results"

# Dense bf16 peak FLOP/s per device, matched in order against the device name.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v6", 918e12),
)


def peak_flops(device: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name.lower() in device.lower()), None)


def batches(source: str, config: TrainConfig, data_dir: str | None):
    """Endless host batches ``(B, H, W, C)`` in [0, 1]: one fixed random batch, or Fashion-MNIST."""
    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    if source == "synthetic":
        return itertools.repeat(np.random.default_rng(0).uniform(size=shape).astype(np.float32))
    data = open_source("fashion_mnist", config.image_size, config.channels, data_dir)
    return BatchIterator(data, config.batch_size, seed=0)


def noise_model(delta: float):
    return cj.PowerLawNoise(delta) if delta > 0 else cj.WhiteNoise()


# ---------------------------------------------------------------------------------------------- cloudjax


def compile_cloudjax(config: TrainConfig, delta: float) -> dict:
    """The trainer's compiled ``step`` on a mesh over every device, a fresh ``state``, ``place`` (host batch →
    global array) and ``flops``: XLA's count for one step of the compiled (per-device) program."""
    mesh = make_mesh()
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, state = init_state(config, replicated)
    step = make_train_step(graphdef, cj.GaussianDiffusion(noise_model(delta)), config, mesh)
    place = lambda b: jax.make_array_from_process_local_data(data, b)
    example = place(np.zeros((config.batch_size, config.image_size, config.image_size, config.channels), np.float32))
    cost = step.lower(state, example, jax.random.key(0)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return dict(step=step, state=state, place=place, flops=float(cost.get("flops", 0.0)) or None)


def run_cloudjax(compiled: dict, batches, steps: int, warmup: int) -> dict:
    """Time ``steps`` steps after ``warmup``; the state (donated each step) is carried on in ``compiled``."""
    step, place, key = compiled["step"], compiled["place"], jax.random.key(0)
    for i in range(warmup + steps):
        if i == warmup:
            jax.block_until_ready(compiled["state"])
            start = time.perf_counter()
        compiled["state"], metrics = step(compiled["state"], place(next(batches)), jax.random.fold_in(key, i))
    float(metrics["loss"])  # waits for the device
    seconds = time.perf_counter() - start
    params = sum(x.size for x in jax.tree.leaves(compiled["state"].params))
    return dict(device=jax.devices()[0].device_kind, params=int(params), seconds_per_step=seconds / steps)


# ---------------------------------------------------------------------------------------------- PyTorch


def torch_unet(cfg, image_size: int):
    """diffusers' ``UNet2DModel`` with the layout of a cloudjax ``UNetConfig`` (widths, blocks, attention, norm)."""
    from diffusers import UNet2DModel

    widths = tuple(cfg.base_channels * m for m in cfg.channel_mults)
    levels = range(len(widths))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=widths,
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels)),
        norm_num_groups=cfg.norm_groups,
        attention_head_dim=widths[-1] // cfg.num_heads,
        dropout=cfg.dropout,
    )


def torch_noise(delta: float, shape: tuple[int, ...], device, pad: int = 3):
    """``() → (B, C, H, W)`` noise distributed as ``noise_model(delta)`` (``cj.PowerLawNoise(delta, pad)``).

    White noise on the ``(pad·H, pad·W)`` grid filtered by ``√S(|k|)`` with orthonormal FFTs, then the centre
    crop. ``cj.power_law_spectrum`` depends on |k| only and ``cj.wavenumbers`` is the FFT grid's |k|, so its
    first ``PW//2 + 1`` columns are S on torch's rfft grid.
    """
    import torch

    if delta == 0:
        return lambda: torch.randn(shape, device=device)
    H, W = shape[-2:]
    PH, PW = pad * H, pad * W
    amplitude = np.sqrt(cj.power_law_spectrum(PH, PW, delta))[:, : PW // 2 + 1]
    amplitude = torch.as_tensor(amplitude, dtype=torch.float32, device=device)
    top, left = (PH - H) // 2, (PW - W) // 2

    def sample():
        white = torch.randn((*shape[:-2], PH, PW), device=device)
        field = torch.fft.irfft2(torch.fft.rfft2(white, norm="ortho") * amplitude, s=(PH, PW), norm="ortho")
        return field[..., top : top + H, left : left + W]

    return sample


def run_pytorch(config: TrainConfig, delta: float, batches, steps: int, warmup: int) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = config.unet_config()
    model = torch_unet(cfg, config.image_size).to(device).train()
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device == "cuda")
    noise = torch_noise(delta, (config.batch_size, cfg.channels, config.image_size, config.image_size), device)

    @torch.compile  # the noise is drawn outside: inductor generates no code for complex (FFT) products
    def loss_fn(x0, eps):
        t = torch.rand(x0.shape[0], device=device)
        alpha, sigma = torch.cos(t * torch.pi / 2).view(-1, 1, 1, 1), torch.sin(t * torch.pi / 2).view(-1, 1, 1, 1)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16"):
            pred = model(alpha * x0 + sigma * eps, t * 1000).sample
        return torch.mean((pred.float() - eps) ** 2)

    def step(batch):
        x0 = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x0, noise())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - config.ema_decay)
        return loss

    for _ in range(warmup):
        step(next(batches)).item()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(next(batches))
    loss.item()  # waits for the device
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return dict(device=name, params=sum(p.numel() for p in params), seconds_per_step=seconds / steps)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--delta", type=float, default=1.5, help="cloud noise Δ (0: white noise)")
    parser.add_argument("--frameworks", nargs="+", choices=["cloudjax", "pytorch"], default=["cloudjax", "pytorch"])
    parser.add_argument("--inputs", nargs="+", choices=["synthetic", "fashion_mnist"], default=None)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 16 px, batch 8, 3 steps: a CPU check")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    if args.quick:
        args.presets, args.sizes, args.batch_size, args.steps, args.warmup = ["tiny"], [16], 8, 3, 1
    inputs = args.inputs or ["synthetic", "fashion_mnist"]
    out = args.out or RESULTS / ("train_throughput_quick.json" if args.quick else "train_throughput.json")

    rows = []
    for preset, size in itertools.product(args.presets, args.sizes):
        config = TrainConfig(model=preset, image_size=size, batch_size=args.batch_size, dtype=args.dtype)
        compiled = compile_cloudjax(config, args.delta)
        for framework, source in itertools.product(args.frameworks, inputs):
            try:
                feed = batches(source, config, args.data_dir)
                if framework == "cloudjax":
                    result = run_cloudjax(compiled, feed, args.steps, args.warmup)
                else:
                    result = run_pytorch(config, args.delta, feed, args.steps, args.warmup)
            except (ImportError, ValueError) as e:  # no torch / diffusers, no Fashion-MNIST files
                print(json.dumps({"skipped": f"{framework} {preset} {size}px {source}: {e}"}), flush=True)
                continue
            peak, flops = peak_flops(result["device"]), compiled["flops"]
            row = dict(
                device=result["device"],
                framework=framework,
                preset=preset,
                image_size=size,
                batch_size=args.batch_size,
                dtype=args.dtype,
                input=source,
                noise=f"cloud delta={args.delta}" if args.delta > 0 else "white",
                params=result["params"],
                step_ms=round(1000 * result["seconds_per_step"], 3),
                images_per_second=round(args.batch_size / result["seconds_per_step"], 1),
                flops_per_step=flops,
                mfu=None if not (peak and flops) else round(flops / result["seconds_per_step"] / peak, 4),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
