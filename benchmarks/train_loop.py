"""What ``cloudjax.train.train`` costs over its bare jitted step: the loop's images/s against the step's, one process.

    python benchmarks/train_loop.py            # the demo's size: tiny, 16 px, batch 16, natural patches
    python benchmarks/train_loop.py --quick    # 8 px, a few steps: a smoke run

Both sides run the same compiled program (``train`` keeps one step per run in the process) on the same data in
turns, A B A B over ``--turns`` rounds after one untimed round (compilation, the normaliser, the first
checkpoint):

* ``step``: the bare step, ``--steps`` calls on batches already normalised and placed on the devices, one sync at
  the end: the ceiling.
* ``train``: ``train()`` resuming the run for ``--steps`` more steps: host batches read and normalised while the
  step runs, the loss checked, the stop flag, logging. Its rate is the median of the loop's own per-interval
  images/s (``metrics.jsonl``, every ``--steps / 5`` steps) without the first and last interval, which leaves out
  the resume's checkpoint restore and the final save.

Prints and writes ``results/train_loop_<device>.json``: the medians, each round's values, the ratio train / step
and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _harness as H  # benchmarks/_harness.py
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cloudjax.data import BatchIterator, open_source
from cloudjax.train import TrainConfig, load_run, make_mesh, train
from cloudjax.train.step import _cached_train_step


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=250, help="timed steps per turn")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="8 px, batch 8, 10 steps, 2 turns")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.steps, args.turns = 8, 8, 10, 2
    workdir = Path(tempfile.mkdtemp(prefix="train_loop-"))
    spec = "patches:4096"
    interval = max(1, args.steps // 5)
    settings = dict(data=spec, image_size=args.image_size, batch_size=args.batch_size, model=args.model)
    settings |= dict(prediction="v", lr=1e-3, warmup_steps=0, decay="constant", log_every=interval)
    source = open_source(spec, args.image_size, 1)

    def config(steps: int) -> TrainConfig:
        return TrainConfig.from_flat({**settings, "steps": steps, "checkpoint_every": steps})

    done = args.steps  # the untimed round: compiles, measures the normaliser, writes the first checkpoint
    train(config(done), workdir, source=source)
    run, graphdef, state = load_run(workdir)
    mesh = make_mesh()
    step_fn = _cached_train_step(graphdef, run, mesh)  # the program train() uses
    data = NamedSharding(mesh, P("data"))
    iterator = BatchIterator(source, args.batch_size, seed=1)
    placed = [jax.device_put(run.normalize(next(iterator)).astype(np.float32), data) for _ in range(args.steps)]
    key = jax.device_put(jax.random.key(0), NamedSharding(mesh, P()))
    state, _ = step_fn(state, placed[0], key)  # warm: the first call of this step from this state

    rates = {"step": [], "train": []}
    for _ in range(args.turns):
        tic = time.perf_counter()
        for batch in placed:
            state, metrics = step_fn(state, batch, key)
        jax.block_until_ready(metrics)
        rates["step"].append(args.steps * args.batch_size / (time.perf_counter() - tic))

        done += args.steps
        train(config(done), workdir, source=source)
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        turn = [r["images_per_s"] for r in records if done - args.steps < r["step"] <= done]
        rates["train"].append(statistics.median(turn[1:-1] if len(turn) > 2 else turn))  # not the resume, the save

    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "machine": H.machine(),
        "threads": H.threads(),
        "config": dict(vars(args), data=spec, jax=jax.__version__),
        "images_per_s": median,
        "rounds_images_per_s": rates,
        "train_over_step": median["train"] / median["step"],
        "load_average_end": os.getloadavg()[0],
    }
    print(json.dumps(result))
    H.save(result, "train_loop", jax.devices()[0].platform, args.out)
    return result


if __name__ == "__main__":
    main()
