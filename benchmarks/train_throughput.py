"""Training throughput: cloudjax's train step against PyTorch / diffusers at equal model size, side by side.

    python benchmarks/train_throughput.py            # tiny and small, 16 and 32 px, float32, one pinned core
    python benchmarks/train_throughput.py --quick    # tiny at 16 px, a few steps: a smoke run (CI-sized)
    python benchmarks/train_throughput.py --cores all --presets small --sizes 32 --dtype bfloat16   # on a GPU

For each preset and image size, one row per framework:

* ``cloudjax``: the trainer's own jitted step (``cloudjax.train.make_train_step``: loss with the noise drawn on
  the device, clipping, AdamW, EMA), the batch placed with ``make_array_from_process_local_data``.
* ``torch_eager`` and ``torch_compile``: diffusers' ``UNet2DModel`` with the same widths, blocks, attention
  levels, GroupNorm and dropout (the parameter counts are equal for every preset; each row has its own), eager
  or with ``torch.compile``, bf16 autocast when ``--dtype bfloat16``, a cosine schedule, the same noise (cloud
  noise from the same spectrum), clipping, AdamW (fused on CUDA) and EMA.

Each framework runs in processes of its own (``benchmarks/_harness.py``): per preset and size the frameworks take
turns as whole processes, A B A B over ``--turns`` rounds, each building its trainer, ``--warmup`` untimed steps
(compilation; the rounds share a fresh compilation cache) and ``--steps`` timed ones, pinned to one core
(``--cores 1``, the default; ``all``: every core). Rows give the median images/s over the rounds and each round's
value, ``ratios`` cloudjax over the faster PyTorch variant; the load average is recorded per round.
``--one-process`` times the frameworks in turns inside one process instead (the earlier form; on one core it
handicaps JAX, see README "Benchmarks"). ``--merge`` keeps the rows of other configurations already in ``--out``,
so a long comparison can run in parts. torch and diffusers are optional benchmark dependencies
(``pip install torch diffusers``); without them the PyTorch rows are skipped with a note. Writes
``results/train_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import _harness as H  # benchmarks/_harness.py
import numpy as np


def batches(source: str, config, data_dir: str | None):
    """Endless host batches ``(B, H, W, C)`` in [0, 1]: one fixed random batch, or Fashion-MNIST."""
    from cloudjax.data import BatchIterator, open_source

    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    if source == "synthetic":
        return itertools.repeat(np.random.default_rng(0).uniform(size=shape).astype(np.float32))
    data = open_source("fashion_mnist", config.image_size, config.channels, data_dir)
    return BatchIterator(data, config.batch_size, seed=0)


def noise_model(delta: float):
    import cloudjax as cj

    return cj.PowerLawNoise(delta) if delta > 0 else cj.WhiteNoise()


# ---------------------------------------------------------------------------------------------- cloudjax


def cloudjax_trainer(config, delta: float, feed) -> tuple:
    """``(step, params)``: ``step()`` runs one train step of the trainer's compiled program on the next batch and
    returns its metrics (the state, donated each step, is carried in the closure)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import cloudjax as cj
    from cloudjax.train import init_state, make_mesh, make_optimizer, make_train_step

    mesh = make_mesh()
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, state = init_state(config, replicated)
    diffusion = cj.GaussianDiffusion(noise_model(delta))
    train_step = make_train_step(graphdef, diffusion, make_optimizer(config), ema_decay=config.ema_decay, mesh=mesh)
    box, key, count = [state], jax.random.key(0), itertools.count()

    def step():
        batch = jax.make_array_from_process_local_data(data, next(feed))
        box[0], metrics = train_step(box[0], batch, jax.random.fold_in(key, next(count)))
        return metrics

    params = sum(x.size for x in jax.tree.leaves(state.params))
    return step, lambda metrics: float(metrics["loss"]), int(params), jax.devices()[0].device_kind


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

    import cloudjax as cj

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


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_trainer(config, delta: float, feed, compiled: bool) -> tuple:
    """Like :func:`cloudjax_trainer` for diffusers' UNet, eager or ``torch.compile``-d."""
    import torch

    torch.manual_seed(0)
    device = torch_device()
    cfg = config.unet_config()
    model = torch_unet(cfg, config.image_size).to(device).train()
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device == "cuda")
    noise = torch_noise(delta, (config.batch_size, cfg.channels, config.image_size, config.image_size), device)

    def loss_fn(x0, eps):
        t = torch.rand(x0.shape[0], device=device)
        alpha, sigma = torch.cos(t * torch.pi / 2).view(-1, 1, 1, 1), torch.sin(t * torch.pi / 2).view(-1, 1, 1, 1)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16"):
            pred = model(alpha * x0 + sigma * eps, t * 1000).sample
        return torch.mean((pred.float() - eps) ** 2)

    if compiled:  # the noise is drawn outside: inductor generates no code for complex (FFT) products
        loss_fn = torch.compile(loss_fn)

    def step():
        x0 = torch.from_numpy(np.ascontiguousarray(next(feed).transpose(0, 3, 1, 2))).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x0, noise())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - config.ema_decay)
        return loss

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return step, lambda loss: loss.item(), sum(p.numel() for p in params), name


# ---------------------------------------------------------------------------------------------- main


def worker(args) -> None:
    """One core setting: every (preset, size), the given frameworks timed in turns; one JSON row per framework."""
    from cloudjax.train import TrainConfig

    if args.cores == ["1"] and args.frameworks != ["cloudjax"]:  # torch only where it runs
        import torch

        torch.set_num_threads(1)
    every = {
        "cloudjax": lambda c, f: cloudjax_trainer(c, args.delta, f),
        "torch_eager": lambda c, f: torch_trainer(c, args.delta, f, compiled=False),
        "torch_compile": lambda c, f: torch_trainer(c, args.delta, f, compiled=True),
    }
    builders = {name: every[name] for name in args.frameworks}
    for preset, size in itertools.product(args.presets, args.sizes):
        config = TrainConfig(model=preset, image_size=size, batch_size=args.batch_size, dtype=args.dtype)
        candidates, info = {}, {}
        for name, build in builders.items():
            try:
                step, sync, params, device = build(config, batches(args.input, config, args.data_dir))
            except (ImportError, ValueError) as e:  # no torch / diffusers, no Fashion-MNIST files
                print(json.dumps({"skipped": f"{name} {preset} {size}px: {e}"}), flush=True)
                continue
            tic = time.perf_counter()
            for _ in range(args.warmup):
                sync(step())
            info[name] = dict(params=params, device=device, warmup_seconds=round(time.perf_counter() - tic, 2))
            candidates[name] = H.timed(step, args.steps, sync)
        times = H.interleaved(candidates, args.turns)
        for name, seconds in times.items():
            row = dict(
                framework=name,
                preset=preset,
                image_size=size,
                batch_size=args.batch_size,
                dtype=args.dtype,
                cores=args.cores[0],
                threads=H.threads(),
                input=args.input,
                noise=f"cloud delta={args.delta}" if args.delta > 0 else "white",
                **info[name],
                images_per_second=round(args.batch_size / H.median(seconds), 2),
                turns_images_per_second=[round(args.batch_size / s, 2) for s in seconds],
                load_average=round(os.getloadavg()[0], 2),
                xla_flags=os.environ.get("XLA_FLAGS", ""),
            )
            print(json.dumps(row), flush=True)


OPTIONS = ("batch_size", "dtype", "delta", "input", "steps", "warmup", "data_dir")  # passed on to the workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--delta", type=float, default=0.0, help="cloud noise Δ (0: white noise)")
    parser.add_argument("--input", choices=["synthetic", "fashion_mnist"], default="synthetic")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--quick", action="store_true", help="tiny at 16 px, batch 8: a smoke run")
    H.options(parser, ["cloudjax", "torch_eager"])
    args = parser.parse_args()
    if min(args.steps, args.turns, args.warmup) < 1:
        parser.error("--steps, --turns and --warmup must be >= 1")
    if args.quick:
        args.presets, args.sizes, args.batch_size, args.steps, args.turns, args.warmup = ["tiny"], [16], 8, 1, 1, 1
        args.frameworks = [f for f in args.frameworks if f != "torch_compile"]  # compiling takes minutes on a CPU
    if args.worker:
        return worker(args)
    argv = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in OPTIONS if getattr(args, k) is not None]
    configs = [["--presets", p, "--sizes", str(s)] for p, s in itertools.product(args.presets, args.sizes)]
    meta = dict(H.machine(), load_average_start=os.getloadavg())
    rows = H.compare(__file__, configs, args, argv, "images_per_second")
    meta["load_average_end"] = os.getloadavg()
    device = "cpu" if all(r["device"] == "cpu" for r in rows) else rows[0]["device"].replace(" ", "_")
    out = args.out or H.RESULTS / f"train_throughput_{device}{'_quick' if args.quick else ''}.json"
    summary = H.ratios(rows, H.CONFIG, "images_per_second")
    H.write(out, meta, rows, summary, merge=H.CONFIG if args.merge else ())


if __name__ == "__main__":
    main()
