"""What the subcommands share: the one-line usage error, argument types, the data flags and opening the data."""

from __future__ import annotations

import argparse
import os


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
