"""The ``cloudjax`` command: ``stats``, ``train``, ``sample``, ``fid``, ``fid-stats``, ``fid-convert``, ``demo``.

Each subcommand is a ``_cmd_<name>(args)`` function registered in :func:`build_parser`. User mistakes
(bad flags, missing data, bad values) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from cloudjax import registry


class UsageError(Exception):
    """A user mistake: printed as one line by :func:`main`, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2**63) (what NumPy and JAX both take)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return seed


def _start_time(text: str) -> float:
    """argparse type of ``--t-start``: a number in (0, 1]."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < t <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return t


def _writable_folder(path, flag: str) -> None:
    """``UsageError`` now, before any work, if folder ``path`` (for ``flag``) could not be created or written."""
    import os
    from pathlib import Path

    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside a file ({existing})"
        raise UsageError(f"{flag} {path} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="patches",
        help="dataset: patches[:NUM] (embedded natural-image patches, default), fashion_mnist[:train|test|all], "
        "folder:PATH (PNG/JPEG tree), npz:PATH (key 'images'), tfds:NAME[:SPLIT] (prepared tensorflow-datasets)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the dataset's files are: Fashion-MNIST IDX .gz files (default /usr/share/datasets/fashion-mnist) "
        "or the tensorflow-datasets data_dir (default ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--drop-letterbox",
        action="store_true",
        help="skip images with near-constant bars on an edge (the paper's STL-10 filter; one pass over the data)",
    )
    p.add_argument("--image-size", type=int, default=32, help="image height and width in pixels")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")


def _open_data(args: argparse.Namespace, channels: int | None = None):
    """The source that ``_add_data_args``'s flags name (:func:`cloudjax.data.open_source`); bad data → UsageError."""
    from cloudjax.data import open_source

    try:
        return open_source(
            args.data,
            args.image_size,
            channels=channels,
            data_dir=args.data_dir,
            seed=args.seed,
            drop_letterbox=args.drop_letterbox,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _cmd_stats(args: argparse.Namespace) -> int:
    """Stream the data once; write stats.json (Δ, A, r, moments, Mahalanobis table), fit.png and noise.png."""
    import numpy as np

    from cloudjax._progress import Progress
    from cloudjax.stats import write_stats_report

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

    from cloudjax.generate import generate
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
    if run.config.process == "cold" and (args.restore or not run.config.generation):
        return _sample_restorations(args, run, graphdef, state)
    if args.restore or args.data:
        raise UsageError("--restore and --data apply to cold runs")
    stem.parent.mkdir(parents=True, exist_ok=True)
    c = run.config
    t_start = 1.0 if args.t_start is None else args.t_start
    batch = min(args.batch_size, args.num)
    grid = []

    def batches():
        for i, start in enumerate(range(0, args.num, batch)):
            key = jax.random.fold_in(jax.random.key(args.seed), i)
            try:
                x = generate(run, graphdef, state.ema, key, batch, args.steps, args.method, t_start=t_start)
            except ValueError as e:
                raise UsageError(str(e)) from None
            x = x[: args.num - start]
            if sum(map(len, grid)) < GRID_MAX:
                grid.append(x[: GRID_MAX - sum(map(len, grid))])
            yield x

    process = run.diffusion
    method = args.method or registry.samplers_for(process.kind)[0]
    steps = args.steps or getattr(process, "steps", 50)
    info = dict(step=int(state.step), seed=args.seed, method=method, steps=steps, t_start=t_start)
    _write_npz(stem.with_suffix(".npz"), batches(), (args.num, c.image_size, c.image_size, c.channels), info)
    save_image_grid(np.concatenate(grid), stem.with_suffix(".png"))
    print(f"{args.num} samples of step {info['step']} → {stem}.png, {stem}.npz")
    return 0


GRID_MAX = 256  # images in the PNG grid of `sample`


def _sample_restorations(args: argparse.Namespace, run, graphdef, state) -> int:
    """A cold run: --num images of --data (default the run's; pass held-out data) degraded and restored →
    OUT.png, one row per image: degraded | direct | Algorithm 1 | Algorithm 2 | original; OUT.npz by name."""
    from pathlib import Path

    import numpy as np

    from cloudjax._files import atomic_output
    from cloudjax.data import open_source
    from cloudjax.generate import RESTORATIONS, restore
    from cloudjax.plots import save_image_grid

    c = run.config
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
        np.stack([out[name] for name in RESTORATIONS], axis=1).reshape(-1, *out["original"].shape[1:]),
        stem.with_suffix(".png"),
        ncols=len(RESTORATIONS),
    )
    with atomic_output(stem.with_suffix(".npz")) as f:
        np.savez(f, step=int(state.step), seed=args.seed, **out)
    print(f"{num} images restored by step {int(state.step)} ({' | '.join(RESTORATIONS)}) → {stem}.png, {stem}.npz")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Fit Δ on natural patches, train a white and a cloud tiny model, sample both, write a report folder."""
    from cloudjax.demo import run_demo

    if args.minutes <= 0 or args.steps < 1:
        raise UsageError(f"--minutes must be > 0 and --steps >= 1, got {args.minutes} and {args.steps}")
    summary = run_demo(args.out, steps=args.steps, minutes=args.minutes, quick=args.quick, seed=args.seed)
    steps = f"{summary['white']['steps']} white / {summary['cloud']['steps']} cloud steps"
    print(f"report → {args.out}/summary.md (Δ = {summary['delta']:.3f}, {steps})")
    return 0


def _inception(args: argparse.Namespace):
    """The FID network of ``--inception-weights`` (:func:`cloudjax.fid.load_inception`); a bad file → UsageError."""
    from cloudjax.fid import load_inception

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        return load_inception(args.inception_weights, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


def _source_features(model, get, total: int, args: argparse.Namespace, desc: str):
    """Inception features ``(total, 2048)`` of images ``get(indices)``, ``--batch-size`` at a time."""
    import numpy as np

    from cloudjax._progress import Progress
    from cloudjax.fid import inception_features

    out = []
    with Progress(total, desc) as bar:
        for i in range(0, total, args.batch_size):
            out.append(inception_features(get(np.arange(i, min(i + args.batch_size, total))), model, args.batch_size))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _fid_operand(spec: str, model, args: argparse.Namespace):
    """``("stats", (mu, sigma))`` of a statistics .npz, else ``("features", (N, 2048))`` of a samples .npz
    (key ``images``, clipped to [0, 1]), a folder of images or a --data spec."""
    from pathlib import Path

    import numpy as np

    from cloudjax.fid import load_statistics

    if Path(spec).is_file() and spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as z:
                if "mu" in z.files:
                    return "stats", load_statistics(spec)
                images = z["images"]
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"{spec}: not a statistics (mu, sigma) or samples (images) .npz ({e})") from None
        images = images / 255 if images.dtype == np.uint8 else np.clip(images, 0, 1)
        images = images[:, :, :, None] if images.ndim == 3 else images
        get, total = (lambda idx: images[idx]), len(images)
    else:
        data = f"folder:{spec}" if Path(spec).is_dir() else spec
        source = _open_data(argparse.Namespace(**{**vars(args), "data": data}))
        get, total = source.get, source.num_examples
    total = total if args.num is None else min(args.num, total)
    if total < 2:
        raise UsageError(f"{spec}: FID needs at least 2 images, got {total}")
    return "features", _source_features(model, get, total, args, Path(spec).name)


def _cmd_fid(args: argparse.Namespace) -> int:
    """FID (and with --kid, KID) between A and B: samples .npz, image folders, --data specs or statistics .npz."""
    from cloudjax.fid import feature_statistics, frechet_from_statistics, kernel_inception_distance

    model = _inception(args)
    (kind_a, a), (kind_b, b) = (_fid_operand(spec, model, args) for spec in (args.a, args.b))
    stats = [x if kind == "stats" else feature_statistics(x) for kind, x in ((kind_a, a), (kind_b, b))]
    try:
        line = f"FID = {frechet_from_statistics(*stats[0], *stats[1]):.4f}"
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.kid:
        if "stats" in (kind_a, kind_b):
            raise UsageError("--kid needs images on both sides, not statistics")
        mean, std = kernel_inception_distance(a, b)
        line += f"  KID = {mean:.5f} ± {std:.5f}"
    print(line)
    return 0


def _cmd_fid_stats(args: argparse.Namespace) -> int:
    """Inception statistics (mu, sigma) of a data set → --out (.npz), the reference side of `cloudjax fid`."""
    from cloudjax.fid import save_statistics

    model = _inception(args)
    source = _open_data(args)
    total = source.num_examples if args.num is None else min(args.num, source.num_examples)
    if total < 2:
        raise UsageError(f"fid-stats needs at least 2 images, the data has {total}")
    _writable_folder(os.path.dirname(os.path.abspath(args.out)), "--out")
    path = save_statistics(args.out, _source_features(model, source.get, total, args, "fid-stats"))
    print(f"Inception statistics of {total} images of {args.data} → {path}")
    return 0


def _cmd_fid_convert(args: argparse.Namespace) -> int:
    """pytorch-fid's .pth state dict → an .npz with its keys, which cloudjax reads without torch."""
    from cloudjax.fid import convert_weights

    _writable_folder(os.path.dirname(os.path.abspath(args.dst)), "DST")
    try:
        path = convert_weights(args.src, args.dst)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"{args.src} → {path}")
    return 0


def _add_fid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inception-weights",
        required=True,
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (needs torch) or its .npz from `fid-convert`",
    )
    p.add_argument("--num", type=int, default=None, help="use only the first NUM images of each set (default: all)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="Inception computation dtype")


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


def _compile_cache(off: bool) -> None:
    """JAX's persistent compilation cache (:mod:`cloudjax.compile_cache`); ``off`` also for what this process starts."""
    from cloudjax.compile_cache import ENV_VAR, enable_compile_cache

    if off:
        os.environ[ENV_VAR] = "off"
    enable_compile_cache()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cloudjax", description="Diffusion with scale-invariant (cloud) noise.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    p = sub.add_parser("sample", help="sample a trained run: PNG grid + .npz")
    p.add_argument("--workdir", required=True, help="the run folder written by train")
    p.add_argument("--out", required=True, help="output path; writes OUT.png and OUT.npz")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50; cold: T)")
    p.add_argument("--method", choices=registry.SAMPLERS, default=None, help="sampler (default ddim; cold: cold)")
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
    p = sub.add_parser("fid", help="FID between two image sets (samples .npz, folders, --data specs, statistics)")
    p.add_argument("a", help="samples .npz (key images), folder of images, --data spec or statistics .npz (mu, sigma)")
    p.add_argument("b", help="the same kinds as A")
    _add_fid_args(p)
    p.add_argument("--kid", action="store_true", help="also the kernel Inception distance (images on both sides)")
    p.add_argument("--image-size", type=int, default=32, help="folders and --data specs are read at this size")
    p.add_argument("--data-dir", default=None, help="where the --data specs' files are (as for train)")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the patches data set")
    p.set_defaults(func=_cmd_fid, drop_letterbox=False)
    p = sub.add_parser("fid-stats", help="Inception statistics of a data set (the cached reference side of fid)")
    _add_data_args(p)
    _add_fid_args(p)
    p.add_argument("--out", required=True, help="statistics file (.npz with mu, sigma, num)")
    p.set_defaults(func=_cmd_fid_stats, batch_size=50)
    p = sub.add_parser("fid-convert", help="pytorch-fid's Inception .pth → .npz (read without torch)")
    p.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth (needs torch to read)")
    p.add_argument("dst", help="output .npz")
    p.set_defaults(func=_cmd_fid_convert)
    p = sub.add_parser("demo", help="white vs cloud on natural patches in a few minutes on a laptop CPU")
    p.add_argument("--out", default="cloudjax-demo", help="report folder")
    p.add_argument("--minutes", type=float, default=7.0, help="time budget of the whole demo (training stops early)")
    p.add_argument("--steps", type=int, default=20_000, help="training steps per model (stops early at --minutes)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (8 px, a few steps)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
    for p in sub.choices.values():
        p.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread: the command unwinds as after Ctrl-C (its temporary files removed)."""


def _terminate(signum, frame):
    raise _Terminated


@functools.cache  # once per process
def _quiet_checkpoint_library() -> None:
    """Orbax reports a failed save or read with tracebacks from its threads (absl ERROR records, asyncio's "Future
    exception was never retrieved" for its pending writes, and "Event loop is closed" from their callbacks, through
    ``sys.unraisablehook``). cloudjax reports those failures itself in one line (the error of ``train``, a checkpoint
    skipped or read again), so they are dropped; the command runs no asyncio code of its own."""
    import logging

    logging.getLogger("absl").addFilter(lambda r: r.levelno < logging.ERROR or "orbax" not in r.pathname)
    logging.getLogger("asyncio").addFilter(lambda r: "exception was never retrieved" not in r.getMessage())
    hook = sys.unraisablehook

    def unraisablehook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = unraisablehook


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    _quiet_checkpoint_library()
    parser = build_parser()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None  # `train` takes it over to save
    try:
        args = parser.parse_args(argv)
        _compile_cache(args.no_compile_cache)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except OSError as e:  # a full disk, a lost mount: what the system said, about which file
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (a smaller --batch-size, --num or data set fits)", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
