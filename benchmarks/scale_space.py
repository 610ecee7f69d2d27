"""Scale Space Diffusion vs DDPM (1 level) and blurring diffusion: speed, FLOPs, training step time, quality.

One network family for every process: a Flexi-UNet (the UNet's blocks, 4 levels, a 1×1 adapter into and out of
each), entered at the state's resolution. For each image size:

* sampling seconds per image and FLOPs per sample at equal NFE (ancestral sampling, ``--nfe`` network calls;
  the FLOPs are XLA's cost analysis of one call per (level, up-sampling) summed over the step grid), and their
  ratios to DDPM — all in one run, the processes timed in turns (``--turns``, the median), so the machine's load
  is shared;
* training step time (forward + backward, ``--batch``) per level, and the expected step time of each process
  (levels weighted by how often the one-resolution-per-batch loss draws them) over DDPM's;
* quality at a tiny budget (``--quality-steps`` Adam steps at the smallest size, same seed): spectral distance
  and sliced Wasserstein distance (``cloudjax.metrics``) of ``--quality-samples`` samples to held data, on
  natural patches and Fashion-MNIST. At this budget it ranks nothing reliably; it shows the pipeline works.

``nice python benchmarks/scale_space.py`` writes results/scale_space_<backend>.json (after each part, so an
interrupted run keeps what it measured) and .png with the machine named; the same command runs on a GPU. On the
2-core CPU the speed part takes ~10 minutes and the quality part ~30; ``--parts speed`` or ``--parts quality``
runs one and keeps the other's rows from the existing JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import _harness as H  # benchmarks/_harness.py
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.tree_util import Partial

import cloudjax as cj
from cloudjax.models import UNetConfig
from cloudjax.models.flexi_unet import FlexiUNet, flops_per_level, init, parameter_count

PROCESSES = ("ddpm", "ss2", "ss3", "ss4", "blurring")


CONFIG = UNetConfig(
    channels=1, base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(2,), norm_groups=8,
    dropout=0.0,
)  # fmt: skip


def network(size: int, abstract: bool = False) -> FlexiUNet:
    """The benchmark's Flexi-UNet at ``size`` px (shapes only when ``abstract``: enough for XLA's FLOP count)."""
    if abstract:
        return nnx.eval_shape(lambda: FlexiUNet(CONFIG, size, rngs=nnx.Rngs(0)))
    graphdef, state = init(CONFIG, size, jax.random.key(0))
    return nnx.merge(graphdef, state)


def flops_only(size: int, nfe: int) -> list[dict]:
    """FLOPs per sample at equal NFE and their ratios to DDPM, from XLA's cost analysis alone (no compile)."""
    flops = flops_per_level(network(size, abstract=True))
    rows = [dict(size=size, process=n, nfe=nfe, gflops_per_sample=flops_per_sample(process(n, size), flops, nfe) / 1e9)
            for n in PROCESSES]  # fmt: skip
    for row in rows:
        row["flops_ratio_vs_ddpm"] = row["gflops_per_sample"] / rows[0]["gflops_per_sample"]
        print(json.dumps(row), flush=True)
    return rows


def process(name: str, size: int):
    if name == "blurring":
        return cj.BlurringDiffusion(schedule="linear")  # the paper's DCT blur, σ_B,max = 20·size/32
    return cj.ScaleSpaceDiffusion(image_size=size, levels=1 if name == "ddpm" else int(name[2:]), schedule="linear")


def apply(graphdef, params, x, t, **kw):
    return nnx.merge(graphdef, params)(x, t, **kw)


def flops_per_sample(proc, flops: dict, nfe: int) -> float:
    """Σ over the grid's network calls of XLA's FLOPs for that call's (level, up-sampling)."""
    if not isinstance(proc, cj.ScaleSpaceDiffusion):
        return nfe * flops["0"]
    ts = np.concatenate(proc.stages(nfe - 1))
    levels = proc.level(ts)
    calls = [f"{a}↑" if b < a else str(a) for a, b in zip(levels[:-1], levels[1:], strict=True)]
    return sum(flops[c] for c in calls) + flops[str(levels[-1])]


def bench_sampling(model, size: int, nfe: int, batch: int, turns: int) -> list[dict]:
    """Seconds per image of each process's ancestral sampler: every program compiled first, then timed in turns
    (ddpm ss2 … blurring, ddpm ss2 …), the median per process, so no process gets the machine's quieter moments."""
    graphdef, params = nnx.split(model)
    denoise = Partial(lambda p, x, t, **kw: apply(graphdef, p, x, t, **kw), params)
    flops = flops_per_level(model)
    procs = {name: process(name, size) for name in PROCESSES}
    runs = {}
    for name, proc in procs.items():
        runs[name] = lambda proc=proc: cj.sample(
            denoise, proc, jax.random.key(1), (batch, size, size, 1), steps=nfe - 1, method="ddpm"
        )
        runs[name]().block_until_ready()  # compile
    times = H.interleaved({name: H.timed(run, 1, jax.block_until_ready) for name, run in runs.items()}, turns)
    rows = [dict(size=size, process=name, nfe=nfe, batch=batch, turns=turns,
                 seconds_per_image=H.median(times[name]) / batch,
                 gflops_per_sample=flops_per_sample(proc, flops, nfe) / 1e9)
            for name, proc in procs.items()]  # fmt: skip
    base = rows[0]
    for row in rows:
        row["speedup_vs_ddpm"] = base["seconds_per_image"] / row["seconds_per_image"]
        row["flops_ratio_vs_ddpm"] = row["gflops_per_sample"] / base["gflops_per_sample"]
        print(json.dumps(row), flush=True)
    return rows


def bench_training(model, size: int, batch: int, turns: int) -> dict:
    """Seconds per forward + backward at each (level, up-sampling), and each process's expected step time."""
    graphdef, params = nnx.split(model)
    x0 = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
    seconds = {}
    for level in range(4):
        for up in (False, True) if level else (False,):
            x = x0[:, :: 2**level, :: 2**level]
            t = jnp.full((batch,), 0.5)
            loss = lambda p, x=x, t=t, up=up: jnp.mean(apply(graphdef, p, x, t, upsample=up) ** 2)
            step = jax.jit(jax.value_and_grad(loss))
            jax.block_until_ready(step(params))
            times = []
            for _ in range(turns):
                start = time.perf_counter()
                jax.block_until_ready(step(params))
                times.append(time.perf_counter() - start)
            seconds[f"{level}↑" if up else str(level)] = min(times)
    expected = {}
    for name in PROCESSES[:4]:
        proc = process(name, size)
        levels, changes = proc.step_levels, set(cj.resolution.change_steps(proc.step_levels).tolist())
        keys = [f"{lv}↑" if i in changes else str(lv) for i, lv in enumerate(levels)]
        expected[name] = float(np.mean([seconds[k] for k in keys]))
    row = dict(size=size, batch=batch, seconds_per_level=seconds, expected_step_seconds=expected,
               step_time_ratio_vs_ddpm={k: v / expected["ddpm"] for k, v in expected.items()})  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def bench_quality(data: str, size: int, steps: int, num: int, nfe: int) -> list[dict]:
    """Train each process ``steps`` Adam steps (same seed, same batches), sample, compare with held data."""
    from cloudjax.data import open_source

    source = open_source(data, size, 1, seed=0)
    n = min(source.num_examples, 4096)
    images = np.asarray(source.get(np.arange(n)), np.float32)
    mean, std = images.mean(), images.std()
    images = (images - mean) / std
    train, held = images[: n // 2], images[n // 2 :]
    rows = []
    for name in PROCESSES:
        proc = process(name, size)
        model = network(size)
        graphdef, params = nnx.split(model)
        opt = optax.adam(1e-3)
        opt_state = opt.init(params)

        @functools.partial(jax.jit, static_argnames="branch")  # one program per loss branch, as cloudjax trains
        def step(params, opt_state, batch, key, branch, proc=proc, graphdef=graphdef, opt=opt):
            where = {} if branch is None else {"branch": branch}
            loss, grads = jax.value_and_grad(
                lambda p: proc.loss(lambda x, t, **kw: apply(graphdef, p, x, t, **kw), key, batch, **where)
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        rng = np.random.default_rng(0)
        weights = getattr(proc, "loss_branches", None)
        start = time.perf_counter()
        for i in range(steps):
            batch = jnp.asarray(train[rng.integers(0, len(train), 32)])
            key = jax.random.key(i)
            branch = None if weights is None else cj.process.loss_branch(weights, key)
            params, opt_state, loss = step(params, opt_state, batch, key, branch)
        train_seconds = time.perf_counter() - start
        denoise = Partial(lambda p, x, t, g=graphdef, **kw: apply(g, p, x, t, **kw), params)
        samples = cj.sample(denoise, proc, jax.random.key(123), (num, size, size, 1), steps=nfe - 1, method="ddpm")
        ref = jnp.asarray(held[:num])
        swd = cj.sliced_wasserstein(samples, ref, jax.random.key(7), num_patches=4096, num_projections=128)
        row = dict(data=data, size=size, process=name, train_steps=steps, train_seconds=train_seconds,
                   final_loss=float(loss), spectral_distance=float(cj.spectral_distance(samples, ref)),
                   swd_mean=swd["mean"])  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plot(results: dict, path: Path) -> None:
    from cloudjax.plots import new_figure

    quality = results.get("quality", [])
    fig = new_figure(figsize=(15 if quality else 10, 3.6))
    axes = fig.subplots(1, 3 if quality else 2)
    for size in sorted({r["size"] for r in results.get("flops", [])}):
        rows = [r for r in results["flops"] if r["size"] == size]
        names = [r["process"] for r in rows]
        axes[0].plot(names, [1 / r["flops_ratio_vs_ddpm"] for r in rows], "s--", label=f"{size} px: 1 / FLOPs")
        timed = [r for r in results["sampling"] if r["size"] == size]
        if timed:
            axes[0].plot(names, [r["speedup_vs_ddpm"] for r in timed], "o-", label=f"{size} px: time")
    axes[0].axhline(1.58, color="grey", lw=0.8, ls=":", label="paper 1.58× (64 px, 4 levels)")
    axes[0].set_ylabel("speed-up over DDPM at equal NFE")
    axes[0].legend(fontsize=7)
    for size, per_level in results.get("gflops_per_level", {}).items():
        axes[1].bar([f"{size}:{k}" for k in per_level], [v / per_level["0"] for v in per_level.values()], alpha=0.6)
    axes[1].set_ylabel("FLOPs per call / full network's")
    axes[1].set_xlabel("size:level (↑ = up-sampling)")
    axes[1].tick_params(axis="x", labelsize=6, rotation=60)
    for data in dict.fromkeys(r["data"] for r in quality):
        rows = [r for r in quality if r["data"] == data]
        axes[2].plot([r["process"] for r in rows], [r["swd_mean"] for r in rows], "o-", label=data)
    if quality:
        axes[2].set_ylabel(f"sliced Wasserstein distance to held data\n({quality[0]['train_steps']} train steps)")
        axes[2].legend(fontsize=7)
    env = results.get("environment") or results["quality_environment"]  # a quality-only run has no speed part
    fig.suptitle(f"Scale Space Diffusion, {env['device']} ({env['cpu_model']}), load {env['load_average_1min']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sides (default 32 64)")
    parser.add_argument("--nfe", type=int, default=20, help="network calls per sample (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="images per sampling call / training step")
    parser.add_argument("--turns", type=int, default=3,
                        help="timed turns: sampling takes the median over the processes timed in turns, training "
                        "the fastest per level")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=["speed", "quality"], default=["speed", "quality"],
                        help="what to run; the other part's rows are kept from --out if it exists")  # fmt: skip
    parser.add_argument("--quality-steps", type=int, default=150, help="training steps for quality")
    parser.add_argument("--quality-samples", type=int, default=128, help="samples for the quality metrics")
    parser.add_argument("--quality-data", nargs="+", default=["patches", "fashion_mnist"], help="datasets")
    parser.add_argument("--flops-only", action="store_true", help="only the FLOP counts (seconds, no compile)")
    parser.add_argument("--out", default=None, help="JSON file (default results/scale_space_<backend>.json)")
    args = parser.parse_args()

    device = jax.devices()[0]
    env = dict(backend=jax.default_backend(), device=device.device_kind, cpu_model=H.cpu_model(), jax=jax.__version__,
               cpu_count=os.cpu_count(), load_average_1min=round(os.getloadavg()[0], 2))  # fmt: skip
    out = Path(args.out or Path(__file__).parent / "results" / f"scale_space_{env['backend']}.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    parts = {"speed"} if args.flops_only else set(args.parts)

    def save() -> None:  # after every part: an interrupted run keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")

    if "speed" in parts:
        results.update(environment=env, sampling=[], training=[], flops=[], gflops_per_level={})
        for size in args.sizes:
            results["parameters"] = parameter_count(network(size, abstract=True))
            per_level = flops_per_level(network(size, abstract=True))
            results["gflops_per_level"][str(size)] = {k: v / 1e9 for k, v in per_level.items()}
            results["flops"] += flops_only(size, args.nfe)
            if not args.flops_only:
                model = network(size)
                results["sampling"] += bench_sampling(model, size, args.nfe, args.batch, args.turns)
                results["training"].append(bench_training(model, size, args.batch, args.turns))
            save()
        env["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    if "quality" in parts:
        results["quality_environment"] = qenv = dict(env, steps=args.quality_steps, samples=args.quality_samples)
        results["quality"] = []
        for data in args.quality_data:
            results["quality"] += bench_quality(data, min(args.sizes), args.quality_steps, args.quality_samples, 50)
            save()
        qenv["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    save()
    plot(results, out.with_suffix(".png"))
    print(f"→ {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
