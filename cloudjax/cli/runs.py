"""`cloudjax stats`, `train` and `demo`: measure data, train a run, the demo."""

from __future__ import annotations

import argparse
import sys

from cloudjax import registry
from cloudjax.cli._common import UsageError, _add_data_args, _open_data, _seed, _writable_folder


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


def _train_config(args: argparse.Namespace):
    """A :class:`~cloudjax.train.TrainConfig` from the flags named like its fields (unset flags keep defaults)."""
    import dataclasses

    from cloudjax.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    except ValueError as e:
        raise UsageError(str(e)) from None


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
    source = _open_data(args, channels=config.channels)
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
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey (default), 3 RGB")
    p.add_argument("--noise", choices=registry.NOISES, default=None, help="noise model (default white)")
    p.add_argument("--delta", type=float, default=None, help="cloud noise exponent Δ (default: fitted on the data)")
    p.add_argument("--model", choices=registry.MODELS, default=None, help="UNet preset (default small)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: the preset's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="computation dtype")
    p.add_argument("--steps", type=int, default=None, help="total steps to reach (resumes below it)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (divides --batch-size)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 500)")
    p.add_argument("--decay", choices=("cosine", "linear", "constant"), default=None, help="lr decay after warm-up")
    p.add_argument("--decay-steps", type=int, default=None, help="lr schedule horizon (default --steps)")
    p.add_argument("--final-lr-ratio", type=float, default=None, help="final lr / peak lr (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    p.add_argument("--clip-norm", type=float, default=None, help="global gradient-norm clip (default 1)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default 0.999)")
    p.add_argument(
        "--schedule",
        choices=registry.SCHEDULES,
        default=None,
        help="noise schedule (calibrated: cosine with the SNR matched to white noise on the data)",
    )
    p.add_argument("--prediction", choices=registry.PREDICTIONS, default=None, help="network target (default eps)")
    losses = dict.fromkeys(name for names in registry.LOSSES.values() for name in names)
    p.add_argument(
        "--loss-weighting",
        choices=losses,
        default=None,
        help="loss: a norm (l2 = pixel, mahalanobis; l1 for cold), +min_snr for a time weight (default pixel; cold l1)",
    )
    p.add_argument("--process", choices=registry.PROCESSES, default=None, help="forward process (default gaussian)")
    p.add_argument(
        "--degradation", choices=registry.DEGRADATIONS, default=None, help="cold: what D(x0, t) does (default blur)"
    )
    p.add_argument(
        "--degradation-steps",
        type=int,
        default=None,
        help="cold: T (defaults, the reference code's: blur 20, mask 50, downsample log2(size/4), decolor 20)",
    )
    p.add_argument("--blur-routine", choices=registry.BLUR_ROUTINES, default=None, help="blur stds per step")
    p.add_argument("--blur-std", type=float, default=None, help="blur std in px (default 7·size/28, constant)")
    p.add_argument("--blur-kernel", type=int, default=None, help="blur kernel side (default ≈ 11·size/28, odd)")
    p.add_argument("--blur-padding", choices=("circular", "reflect"), default=None, help="blur padding")
    p.add_argument("--mask-std", type=float, default=None, help="mask: σ_i = std·(i + initial) (default 0.1·size/32)")
    p.add_argument("--mask-initial", type=float, default=None, help="mask: initial of σ_i (default 11)")
    p.add_argument(
        "--generation",
        action="store_true",
        default=None,
        help="cold blur: last step to the per-channel mean, fit a Gaussian mixture to the means to generate",
    )
    p.add_argument("--gmm-components", type=int, default=None, help="generation: mixture components (default 1)")
    p.add_argument("--levels", type=int, default=None, help="scale_space: resolution levels (default 4)")
    p.add_argument(
        "--blur-sigma-max", type=float, default=None, help="blurring: blur std in px at t = 1 (default 20·size/32)"
    )
    p.add_argument(
        "--blur-basis",
        choices=registry.BLUR_BASES,
        default=None,
        help="blurring: dct (the paper's, reflecting boundaries; white noise) or fourier (periodic; default for cloud)",
    )
    p.add_argument(
        "--blur-schedule",
        choices=registry.BLUR_SCHEDULES,
        default=None,
        help="blurring: σ_B(t) ∝ sin² (default) or sin",
    )
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint interval in steps (default 1000)")
    p.add_argument("--keep", type=int, default=None, help="checkpoints kept (default 3)")
    p.add_argument("--sample-every", type=int, default=None, help="EMA sample grid interval (default 0: never)")
    p.add_argument("--log-every", type=int, default=None, help="metrics interval in steps (default 50)")
    p.add_argument("--coordinator", default=None, help="multi-process: coordinator host:port")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's index")


def register(sub) -> None:
    """Add this module's subcommands to the ``cloudjax`` parser's subparsers ``sub``."""
    p = sub.add_parser("stats", help="dataset statistics and the power-law fit (Δ) of its Fourier spectrum")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output folder for stats.json, fit.png and noise.png")
    p.add_argument("--num", type=int, default=None, help="use only the first NUM images (default: all)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey, 3 RGB (default: the data's)")
    p.set_defaults(func=_cmd_stats)
    p = sub.add_parser("train", help="train a diffusion model (resumes from the newest checkpoint in --workdir)")
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("demo", help="white vs cloud on natural patches in a few minutes on a laptop CPU")
    p.add_argument("--out", default="cloudjax-demo", help="report folder")
    p.add_argument("--minutes", type=float, default=7.0, help="time budget of the whole demo (training stops early)")
    p.add_argument("--steps", type=int, default=20_000, help="training steps per model (stops early at --minutes)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (8 px, a few steps)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
