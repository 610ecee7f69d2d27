"""`cloudjax sample`: samples of a trained run (PNG grid + .npz), or a cold run's restorations."""

from __future__ import annotations

import argparse

from cloudjax import registry
from cloudjax.cli._common import UsageError, _seed, _start_time, _writable_folder


def _write_npz(path, batches, shape: tuple[int, ...], info: dict) -> None:
    """An .npz (``np.load``-able) with ``images`` of ``shape`` float32 streamed from ``batches`` (memory: one
    batch) and the scalars ``info``, written whole (:func:`cloudjax._files.atomic_output`)."""
    import zipfile

    import numpy as np

    from cloudjax._files import atomic_output

    with atomic_output(path) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
            np.lib.format.write_array_header_2_0(f, {**header, "shape": shape})
            for batch in batches:
                f.write(np.ascontiguousarray(batch, "<f4").tobytes())
        for name, value in info.items():
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))


def _cmd_sample(args: argparse.Namespace) -> int:
    """EMA samples of the newest (or --checkpoint) checkpoint in --workdir → OUT.png grid + OUT.npz.

    Samples are drawn ``--batch-size`` at a time (batch i with key ``fold_in(key(seed), i)``) and streamed to
    the .npz, so memory does not grow with ``--num``; the PNG shows the first :data:`GRID_MAX`.
    """
    from pathlib import Path

    import jax
    import numpy as np

    from cloudjax.generate import class_labels, generate
    from cloudjax.plots import save_image_grid
    from cloudjax.train import load_run

    if args.num < 1 or (args.steps is not None and args.steps < 1) or args.batch_size < 1:
        raise UsageError(
            f"--num, --steps and --batch-size must be >= 1, got {args.num}, {args.steps} and {args.batch_size}"
        )
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix in (".png", ".npz") else out
    _writable_folder(stem.parent, "--out")
    try:
        run, graphdef, state = load_run(args.workdir, step=args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    if args.restore or not run.config.process.generates:
        return _sample_restorations(args, run, graphdef, state)
    if args.data:
        raise UsageError("--data applies to restorations (--restore)")
    stem.parent.mkdir(parents=True, exist_ok=True)
    c = run.config
    t_start = 1.0 if args.t_start is None else args.t_start
    batch = min(args.batch_size, args.num)
    try:  # sample i has label i mod len(--labels); the last batch is drawn whole and cut
        labels = class_labels(run, args.num + batch, args.labels)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.guidance and labels is None:
        raise UsageError("--guidance needs a class-conditional run (train it with --class-conditional)")
    grid = []

    def batches():
        for i, start in enumerate(range(0, args.num, batch)):
            key = jax.random.fold_in(jax.random.key(args.seed), i)
            kw = {} if labels is None else dict(labels=labels[start : start + batch], guidance=args.guidance)
            try:
                x = generate(run, graphdef, state.ema, key, batch, args.steps, args.method, t_start=t_start, **kw)
            except ValueError as e:
                raise UsageError(str(e)) from None
            x = x[: args.num - start]
            if sum(map(len, grid)) < GRID_MAX:
                grid.append(x[: GRID_MAX - sum(map(len, grid))])
            yield x

    method, steps = args.method or c.process.sampler, args.steps or c.process.sampler_steps
    info = dict(step=int(state.step), seed=args.seed, method=method, steps=steps, t_start=t_start)
    if labels is not None:
        info.update(labels=labels[: args.num], guidance=args.guidance)
    _write_npz(stem.with_suffix(".npz"), batches(), (args.num, c.image_size, c.image_size, c.channels), info)
    images, ncols = np.concatenate(grid), None
    if labels is not None:  # one row per requested class
        classes = list(dict.fromkeys(labels[: len(images)].tolist()))
        ncols = max(1, len(images) // len(classes))
        images = np.concatenate([images[labels[: len(images)] == k][:ncols] for k in classes])
    save_image_grid(images, stem.with_suffix(".png"), ncols=ncols)
    print(f"{args.num} samples of step {info['step']} → {stem}.png, {stem}.npz")
    return 0


def _labels(text: str) -> list[int | str]:
    """``--labels 0,3,7`` (or class names): class indices as ints, names as they are."""
    return [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in text.split(",")]


GRID_MAX = 256  # images in the PNG grid of `sample`


def _sample_restorations(args: argparse.Namespace, run, graphdef, state) -> int:
    """A run of a deterministic degradation (cold): --num images of --data (default the run's; pass held-out data)
    degraded and restored → OUT.png, one row per image: degraded | direct | Algorithm 1 | Algorithm 2 | original
    (:func:`cloudjax.generate.restore`); OUT.npz by name."""
    from pathlib import Path

    import numpy as np

    from cloudjax._files import atomic_output
    from cloudjax.data import open_source
    from cloudjax.generate import restore
    from cloudjax.plots import save_image_grid
    from cloudjax.process import Degradation

    c = run.config
    if not isinstance(run.diffusion, Degradation):
        what = f"runs that degrade deterministically (cold), not {c.process.kind}"
        raise UsageError(f"--restore and --data apply to {what}")
    if args.method is not None:
        raise UsageError("--method does not apply to restorations (they show direct, Algorithm 1 and Algorithm 2)")
    if args.t_start is not None:
        raise UsageError("--t-start does not apply to restorations (they restore D(x, T), the most degraded images)")
    try:
        source = open_source(args.data or c.data, c.image_size, c.channels, c.data_dir, c.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    num = min(args.num, source.num_examples)
    idx = np.sort(np.random.default_rng(args.seed).permutation(source.num_examples)[:num])
    T = run.diffusion.steps
    if args.steps is not None and args.steps > T:
        raise UsageError(f"--steps must be in 1 … {T} for this run's restorations (T = {T}), got {args.steps}")
    try:
        out = restore(run, graphdef, state.ema, source.get(idx), args.steps)
    except ValueError as e:
        raise UsageError(str(e)) from None
    stem = Path(args.out).with_suffix("") if Path(args.out).suffix in (".png", ".npz") else Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(
        np.stack(list(out.values()), axis=1).reshape(-1, *out["original"].shape[1:]),
        stem.with_suffix(".png"),
        ncols=len(out),
    )
    with atomic_output(stem.with_suffix(".npz")) as f:
        np.savez(f, step=int(state.step), seed=args.seed, **out)
    print(f"{num} images restored by step {int(state.step)} ({' | '.join(out)}) → {stem}.png, {stem}.npz")
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the ``cloudjax`` parser's subparsers ``sub``."""
    p = sub.add_parser("sample", help="sample a trained run: PNG grid + .npz")
    p.add_argument("--workdir", required=True, help="the run folder written by train")
    p.add_argument("--out", required=True, help="output path; writes OUT.png and OUT.npz")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50; cold: T)")
    p.add_argument("--method", choices=registry.SAMPLERS, default=None, help="sampler (default ddim; cold: cold)")
    p.add_argument(
        "--labels",
        type=_labels,
        default=None,
        help="class-conditional runs: classes to sample, indices or names, e.g. 0,3,7 (repeated to fill --num; "
        "default every class); the grid has one row per class",
    )
    p.add_argument(
        "--guidance", type=float, default=0.0, help="classifier-free guidance w >= 0 (class-conditional runs)"
    )
    p.add_argument(
        "--restore",
        action="store_true",
        help="cold runs: restore --num degraded images of --data instead of generating (always, for runs that do "
        "not generate): OUT.png rows degraded | direct | Algorithm 1 | Algorithm 2 | original",
    )
    p.add_argument("--data", default=None, help="images to restore (default: the run's data; pass held-out data)")
    p.add_argument(
        "--t-start", type=_start_time, default=None, help="start time in (0, 1], default 1 (the author: 0.95 for cloud)"
    )
    p.add_argument("--checkpoint", type=int, default=None, help="checkpoint step (default: the newest that verifies)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (memory does not grow with --num)")
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (same seed and batch size, same samples)")
    p.set_defaults(func=_cmd_sample)
