"""Sampling speed: ``cj.sample`` (DDIM) against diffusers' ``DDIMPipeline`` with a UNet of equal size, side by side.

    python benchmarks/sampling.py           # tiny (batch 32) and small (batch 16) at 32 px, 50 steps, one core
    python benchmarks/sampling.py --quick   # tiny at 16 px, batch 4, 5 steps: a smoke run (CI-sized)

Both sides run the same network layout (``benchmarks/train_throughput.py``'s ``torch_unet``: diffusers'
``UNet2DModel`` with the preset's widths, blocks, attention and GroupNorm; equal parameter counts, recorded per
row) for ``--steps`` deterministic DDIM steps from white noise, float32, random weights (the cost does not depend
on them). cloudjax: the whole loop is one jitted ``lax.fori_loop``, ``steps + 1`` network evaluations (the last
returns x̂0). diffusers: ``DDIMPipeline`` under ``torch.inference_mode``, ``steps`` evaluations, output as numpy.
Each framework runs in processes of its own, the two taking turns over ``--turns`` rounds (``--one-process``: in
turns inside one process); rows give the median images/s (see ``benchmarks/_harness.py``; ``--merge`` as in
``train_throughput.py``). Writes ``results/sampling_<device>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import _harness as H  # benchmarks/_harness.py

BATCH = {"tiny": 32, "small": 16, "base": 8}


def cloudjax_sampler(cfg, shape: tuple[int, ...], steps: int) -> tuple:
    """``(run, sync, params)``: ``run()`` draws ``shape[0]`` samples with ``cj.sample`` (DDIM)."""
    import jax

    import cloudjax as cj
    from cloudjax.generate import _denoiser
    from cloudjax.models import init

    graphdef, params = init(cfg, jax.random.key(0))
    denoise = jax.tree_util.Partial(_denoiser(graphdef), params)
    diffusion, key = cj.GaussianDiffusion(cj.WhiteNoise(), prediction="eps"), jax.random.key(1)
    run = lambda: cj.sample(denoise, diffusion, key, shape, steps=steps, method="ddim")
    return run, jax.block_until_ready, sum(x.size for x in jax.tree.leaves(params))


def diffusers_sampler(cfg, shape: tuple[int, ...], steps: int) -> tuple:
    """The same for diffusers' ``DDIMPipeline`` (η = 0) around the equal ``UNet2DModel``."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler
    from train_throughput import torch_device, torch_unet

    torch.manual_seed(0)
    unet = torch_unet(cfg, shape[1]).to(torch_device()).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.inference_mode():
            generator = torch.Generator(torch_device()).manual_seed(1)
            return pipe(batch_size=shape[0], num_inference_steps=steps, generator=generator, output_type="np").images

    return run, lambda images: images, sum(p.numel() for p in unet.parameters())


def worker(args) -> None:
    from cloudjax.models import preset

    if args.cores == ["1"] and args.frameworks != ["cloudjax"]:  # torch only where it runs
        import torch

        torch.set_num_threads(1)
    builders = {"cloudjax": cloudjax_sampler, "diffusers": diffusers_sampler}
    for name, size in itertools.product(args.presets, args.sizes):
        cfg = preset(name, channels=1, dropout=0.0)
        batch = args.batch_size or BATCH[name]
        shape = (batch, size, size, 1)
        candidates, info = {}, {}
        for framework in args.frameworks:
            try:
                run, sync, params = builders[framework](cfg, shape, args.steps)
            except ImportError as e:
                print(json.dumps({"skipped": f"{framework} {name} {size}px: {e}"}), flush=True)
                continue
            tic = time.perf_counter()
            sync(run())
            info[framework] = dict(params=int(params), warmup_seconds=round(time.perf_counter() - tic, 2))
            candidates[framework] = H.timed(run, 1, sync)
        times = H.interleaved(candidates, args.turns)
        for framework, seconds in times.items():
            row = dict(
                framework=framework,
                preset=name,
                image_size=size,
                batch_size=batch,
                steps=args.steps,
                dtype="float32",
                cores=args.cores[0],
                threads=H.threads(),
                device="cpu" if not _cuda() else "cuda",
                **info[framework],
                images_per_second=round(batch / H.median(seconds), 3),
                turns_images_per_second=[round(batch / s, 3) for s in seconds],
                load_average=round(os.getloadavg()[0], 2),
                xla_flags=os.environ.get("XLA_FLAGS", ""),
            )
            print(json.dumps(row), flush=True)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch-size", type=int, default=None, help="default: tiny 32, small 16, base 8")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--quick", action="store_true", help="tiny at 16 px, batch 4, 5 steps: a smoke run")
    H.options(parser, ["cloudjax", "diffusers"])
    args = parser.parse_args()
    if min(args.steps, args.turns) < 1:
        parser.error("--steps and --turns must be >= 1")
    if args.quick:
        args.presets, args.sizes, args.batch_size, args.steps, args.turns = ["tiny"], [16], 4, 5, 2
    if args.worker:
        return worker(args)
    argv = ["--steps", str(args.steps)] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    configs = [["--presets", p, "--sizes", str(s)] for p, s in itertools.product(args.presets, args.sizes)]
    meta = dict(H.machine(), load_average_start=os.getloadavg())
    rows = H.compare(__file__, configs, args, argv, "images_per_second")
    meta["load_average_end"] = os.getloadavg()
    device = rows[0]["device"] if rows else "cpu"
    out = args.out or H.RESULTS / f"sampling_{device}{'_quick' if args.quick else ''}.json"
    summary = H.ratios(rows, H.CONFIG, "images_per_second")
    H.write(out, meta, rows, summary, merge=H.CONFIG if args.merge else ())


if __name__ == "__main__":
    main()
