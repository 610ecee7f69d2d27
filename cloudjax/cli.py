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
    p.add_argument("--data", default="patches", help="dataset: patches (embedded default), ...")
    p.add_argument("--data-dir", default=None, help="where the dataset's files are (if it has any)")
    p.add_argument("--image-size", type=int, default=32, help="image height and width in pixels")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--seed", type=int, default=0, help="random seed")


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
