"""Where the train step's time goes: the UNet's parts switched off one at a time and its knobs varied, each
compiled on its own and timed against the full step in turns (A B C … A B C …) in one process.

    python benchmarks/step_profile.py                       # tiny at 32 px batch 32, small at 32 px batch 8
    python benchmarks/step_profile.py --quick               # tiny at 8 px, batch 4: a smoke run

Parts (*ablations*: the same shapes with one part replaced by the identity, so that the step's time without it
is the part's cost; these programs train nothing): ``no_groupnorm`` (every GroupNorm), ``no_attention`` (the
attention blocks), ``no_dropout``, ``forward_only`` (the loss without its gradient, optimizer and EMA).
Knobs (other networks, reported with their FLOPs and FLOP rate, never applied by this script):
``attention_none`` and ``attention_lower`` (one level lower; ``attention_at_1`` for a network without attention),
``norm_groups_1`` and ``norm_groups_<first width>`` (LayerNorm-like and InstanceNorm-like at the first level),
``width_x1.5`` (base channels × 1.5).

Prints and writes ``results/step_profile_<device>.json``: per (model, size) and variant the median step seconds
over ``--rounds``, each round's value, XLA's FLOP count, GFLOP/s and the time relative to the full step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import _harness as H  # benchmarks/_harness.py
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.diffusion import GaussianDiffusion
from cloudjax.models import unet
from cloudjax.train import TrainConfig, init_state, make_mesh, make_optimizer, make_train_step

ABLATIONS = {  # the part replaced by the identity while the step is traced
    "no_groupnorm": (nnx.GroupNorm, "__call__", lambda self, x, *a, **k: x),
    "no_attention": (unet.Attention, "__call__", lambda self, x: x),
    "no_dropout": (nnx.Dropout, "__call__", lambda self, x, *a, **k: x),
}


def knobs(model: str) -> dict[str, dict]:
    """The preset overrides tried for ``model``."""
    base = unet.PRESETS[model]
    widths = [base["base_channels"] * m for m in base["channel_mults"]]
    lower = tuple(min(level + 1, len(widths) - 1) for level in base["attention_levels"])
    out = {f"norm_groups_{n}": dict(norm_groups=n) for n in (1, min(widths))}
    out["width_x1.5"] = dict(base_channels=base["base_channels"] * 3 // 2)
    if base["attention_levels"]:
        out |= {"attention_none": dict(attention_levels=()), "attention_lower": dict(attention_levels=lower)}
    else:
        out["attention_at_1"] = dict(attention_levels=(len(widths) - 1,))
    return out


@contextlib.contextmanager
def variant_of(model: str, variant: str):
    """While tracing: ``model``'s preset with the knob's overrides, or the ablated part replaced by the identity."""
    preset = unet.PRESETS[model]
    owner, name, replacement = ABLATIONS.get(variant, (None, None, None))
    original = owner and getattr(owner, name)
    unet.PRESETS[model] = {**preset, **knobs(model).get(variant, {})}
    if owner:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        unet.PRESETS[model] = preset
        if owner:
            setattr(owner, name, original)


def compiled_step(model: str, size: int, batch: int, variant: str) -> tuple:
    """``(run one step, FLOPs)`` of ``variant``: the full step, an ablation or a knob."""
    config = TrainConfig.from_flat(dict(model=model, image_size=size, batch_size=batch, warmup_steps=0))
    mesh = make_mesh()
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    diffusion = GaussianDiffusion(prediction="v")
    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, size, size, 1), np.float32), data)
    key = jax.random.key(0)
    with variant_of(model, variant):
        graphdef, state = init_state(config, replicated)
        if variant == "forward_only":

            def loss(params, x, key):
                model = nnx.merge(graphdef, params)
                return diffusion.loss(lambda x_t, t, **kw: model(x_t, t, dropout_key=key, **kw), key, x)

            program = jax.jit(loss).lower(state.params, x, key).compile()
            run = lambda: program(state.params, x, key)  # noqa: E731
        else:
            step = make_train_step(graphdef, diffusion, make_optimizer(config), ema_decay=config.ema_decay, mesh=mesh)
            program = step.lower(state, x, key).compile()
            box = [state]

            def run():
                box[0], metrics = program(box[0], x, key)
                return metrics["loss"]

    return run, H.flops(program)


def profile(model: str, size: int, batch: int, steps: int, rounds: int) -> dict:
    variants = ["full", *ABLATIONS, "forward_only", *knobs(model)]
    programs = {v: compiled_step(model, size, batch, v) for v in variants}
    seconds = {v: [] for v in variants}
    for run, _ in programs.values():
        jax.block_until_ready(run())  # warm
    for _ in range(rounds):
        for v, (run, _) in programs.items():
            tic = time.perf_counter()
            for _ in range(steps):
                out = run()
            jax.block_until_ready(out)
            seconds[v].append((time.perf_counter() - tic) / steps)
    median = {v: statistics.median(s) for v, s in seconds.items()}
    rows = {}
    for v, (_, flops) in programs.items():
        rows[v] = dict(
            step_seconds=median[v],
            rounds_seconds=seconds[v],
            relative_to_full=median[v] / median["full"],
            flops=flops,
            gflops_per_s=None if flops is None else flops / median[v] / 1e9,
        )
    return dict(model=model, image_size=size, batch=batch, steps_per_round=steps, variants=rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny:32:32", "small:32:8"], help="MODEL:SIZE:BATCH")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny at 8 px, batch 4, 1 step, 1 round")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.rounds = ["tiny:8:4"], 1, 1
    results = []
    for spec in args.configs:
        model, size, batch = spec.split(":")
        results.append(profile(model, int(size), int(batch), args.steps, args.rounds))
        print(json.dumps(results[-1]), flush=True)
    result = dict(machine=H.machine(), threads=H.threads(), config=vars(args), profiles=results)
    H.save(result, "step_profile", jax.devices()[0].platform, args.out)
    return result


if __name__ == "__main__":
    main()
