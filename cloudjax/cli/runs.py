"""`cloudjax stats`, `train` and `demo`: measure data, train a run, the demo."""

from __future__ import annotations

import argparse
import functools
import sys

from cloudjax.cli._common import DATA_FLAGS, UsageError, _add_config_flags, _open_data, _seed, _writable_folder


def _cmd_stats(args: argparse.Namespace) -> int:
    """Stream the data once; write stats.json (Δ, A, r, moments, Mahalanobis table), fit.png and noise.png."""
    import numpy as np

    from cloudjax._progress import Progress
    from cloudjax.stats_report import write_stats_report

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    source = _open_data(args, channels=args.channels)
    _writable_folder(args.out, "--out")
    total = source.num_examples if args.num is None else min(args.num, source.num_examples)
    if total < 2:
        raise UsageError(f"stats needs at least 2 images, the data has {total}")
    starts = range(0, total, args.batch_size)
    batches = (source.get(np.arange(i, min(i + args.batch_size, total))) for i in starts)
    try:
        with Progress(total, "stats") as bar:
            report = write_stats_report(batches, args.out, seed=args.seed, progress=bar)
    except ValueError as e:  # e.g. constant images: no spectrum to fit
        raise UsageError(f"cannot measure the data's statistics: {e}") from None
    d = report["mahalanobis"]
    print(
        f"Δ = {report['delta']:.3f}  A = {report['amplitude']:.4g}  r = {report['r_value']:.3f}  "
        f"d(white, images) = {d['white-images']:.2f}  d(cloud, images) = {d['cloud-images']:.2f}  "
        f"→ {args.out}/stats.json, fit.png, noise.png"
    )
    return 0


_NOT_SETTINGS = (
    "command",
    "func",
    "workdir",
    "config",
    "coordinator",
    "num_processes",
    "process_id",
    "no_compile_cache",
)


def _config_file(path: str) -> dict:
    """The flat settings of a ``--config`` file: a JSON object of what the flags set (``{"noise": "cloud", "steps":
    4000, ...}``; an ``"about"`` string documents it and is not a setting)."""
    import json
    from pathlib import Path

    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {path}: {e}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: a JSON object of settings is expected")
    settings.pop("about", None)
    return settings


def _train_config(args: argparse.Namespace):
    """The :class:`~cloudjax.train.TrainConfig` of the ``--config`` file's settings and the flags given, which take
    precedence (:meth:`~cloudjax.train.TrainConfig.from_flat`)."""
    from cloudjax.train import TrainConfig

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    try:
        return TrainConfig.from_flat({**(_config_file(args.config) if args.config else {}), **flags})
    except (TypeError, ValueError) as e:
        raise UsageError(f"{e}" + (f" (with --config {args.config})" if args.config else "")) from None


def _cmd_train(args: argparse.Namespace) -> int:
    """Train or resume the run in --workdir up to --steps; exit 1 on divergence, 143 after SIGTERM."""
    from cloudjax._files import WorkdirLockError
    from cloudjax.train import TrainingDiverged, check_workdir, initialize_distributed, train

    config = _train_config(args)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        check_workdir(config, args.workdir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    source = _open_data(config, channels=config.channels)
    try:
        summary = train(config, args.workdir, source=source)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, WorkdirLockError) as e:  # a different run or data, a damaged run.json, a busy workdir, ...
        raise UsageError(str(e)) from None
    except OSError as e:  # a full disk, a lost mount
        print(f"error: {e.filename or args.workdir}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"step {summary['step']}: checkpoint {summary['last_checkpoint']} in {args.workdir}")
    return 143 if summary["preempted"] else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Fit Δ on natural patches, train a white and a cloud tiny model, sample both, write a report folder."""
    from cloudjax.demo import run_demo

    if args.minutes <= 0 or args.steps < 1:
        raise UsageError(f"--minutes must be > 0 and --steps >= 1, got {args.minutes} and {args.steps}")
    summary = run_demo(args.out, steps=args.steps, minutes=args.minutes, quick=args.quick, seed=args.seed)
    steps = f"{summary['white']['steps']} white / {summary['cloud']['steps']} cloud steps"
    print(f"report → {args.out}/summary.md (Δ = {summary['delta']:.3f}, {steps})")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run folder: run.json, checkpoints/, metrics.jsonl, samples/")
    p.add_argument(
        "--config",
        default=None,
        help="JSON file of settings (e.g. experiments/configs/*.json); flags given override it",
    )
    _add_config_flags(p)
    p.add_argument("--coordinator", default=None, help="multi-process: coordinator host:port")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's index")


def register(sub) -> None:
    """Add this module's subcommands to the ``cloudjax`` parser's subparsers ``sub``."""
    data_flags = functools.partial(_add_config_flags, names=DATA_FLAGS, defaults=True)  # added when parsed
    p = sub.add_parser(
        "stats", help="dataset statistics and the power-law fit (Δ) of its Fourier spectrum", flags=data_flags
    )
    p.add_argument("--out", required=True, help="output folder for stats.json, fit.png and noise.png")
    p.add_argument("--num", type=int, default=None, help="use only the first NUM images (default: all)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey, 3 RGB (default: the data's)")
    p.set_defaults(func=_cmd_stats)
    p = sub.add_parser(
        "train", help="train a diffusion model (resumes from the newest checkpoint in --workdir)", flags=_add_train_args
    )
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("demo", help="white vs cloud on natural patches in a few minutes on a laptop CPU")
    p.add_argument("--out", default="cloudjax-demo", help="report folder")
    p.add_argument("--minutes", type=float, default=7.0, help="time budget of the whole demo (training stops early)")
    p.add_argument("--steps", type=int, default=20_000, help="training steps per model (stops early at --minutes)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (8 px, a few steps)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
