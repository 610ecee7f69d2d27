"""The ``cloudjax`` command: ``stats``, ``train``, ``sample``, ``demo``.

Each subcommand is a ``_cmd_<name>(args)`` function registered in :func:`build_parser`. User mistakes
(bad flags, missing data, bad values) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A user mistake: printed as one line by :func:`main`, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


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
    p.add_argument("--seed", type=int, default=0, help="random seed")


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
    total = source.num_examples if args.num is None else min(args.num, source.num_examples)
    if total < 2:
        raise UsageError(f"stats needs at least 2 images, the data has {total}")
    starts = range(0, total, args.batch_size)
    batches = (source.get(np.arange(i, min(i + args.batch_size, total))) for i in starts)
    with Progress(total, "stats") as bar:
        report = write_stats_report(batches, args.out, seed=args.seed, progress=bar)
    d = report["mahalanobis"]
    print(
        f"Δ = {report['delta']:.3f}  A = {report['amplitude']:.4g}  r = {report['r_value']:.3f}  "
        f"d(white, images) = {d['white-images']:.2f}  d(cloud, images) = {d['cloud-images']:.2f}  "
        f"→ {args.out}/stats.json, fit.png, noise.png"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cloudjax", description="Diffusion with scale-invariant (cloud) noise.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("stats", help="dataset statistics and the power-law fit (Δ) of its Fourier spectrum")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output folder for stats.json, fit.png and noise.png")
    p.add_argument("--num", type=int, default=None, help="use only the first NUM images (default: all)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey, 3 RGB (default: the data's)")
    p.set_defaults(func=_cmd_stats)
    del sub  # subcommands are added below as they land
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
