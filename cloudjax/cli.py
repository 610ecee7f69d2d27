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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cloudjax", description="Diffusion with scale-invariant (cloud) noise.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
