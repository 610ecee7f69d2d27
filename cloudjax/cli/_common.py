"""What the subcommands share: the one-line usage error, argument types, the data flags and opening the data."""

from __future__ import annotations

import argparse
import os


class UsageError(Exception):
    """A user mistake: printed as one line by :func:`main`, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (:class:`UsageError`) and whose arguments may be added
    late: ``flags(parser)`` runs when the parser first parses, so ``cloudjax --help`` imports no subcommand's
    dependencies (its config classes import JAX)."""

    def __init__(self, *args, flags=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._flags = flags

    def parse_known_args(self, args=None, namespace=None):
        if self._flags is not None:
            flags, self._flags = self._flags, None
            flags(self)
        return super().parse_known_args(args, namespace)

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


DATA_FLAGS = ("data", "data_dir", "drop_letterbox", "image_size", "batch_size", "seed")  # TrainConfig's data fields


def _add_config_flags(p: argparse.ArgumentParser, names=None, defaults: bool = False) -> None:
    """A flag per field of :class:`~cloudjax.train.TrainConfig` (only ``names`` if given), and without ``names``
    ``--process`` and a flag per setting of every registered process, generated from the fields (type, choices,
    help, default: :func:`cloudjax._config.setting`). A setting some processes have is marked with their names.
    The flags default to None (the config's defaults apply, and the help names them) unless ``defaults``."""
    import dataclasses

    from cloudjax import registry
    from cloudjax.train import TrainConfig

    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "process" and (names is None or f.name in names)]
    for f in fields:
        _add_flag(p, f, f.metadata["choices"], f.metadata["help"], [f.default], defaults)
    if names is not None:
        return
    p.add_argument("--process", choices=registry.PROCESSES, default=None, help="forward process (default gaussian)")
    settings = {}  # name → [(process, field)]
    for kind in registry.PROCESSES:
        for f in dataclasses.fields(registry.process_spec(kind)):
            settings.setdefault(f.name, []).append((kind, f))
    for owners in settings.values():
        kinds, f = [kind for kind, _ in owners], owners[0][1]
        choices = dict.fromkeys(c for _, g in owners for c in g.metadata.get("choices") or ()) or None
        help = f.metadata.get("help", f.name.replace("_", " "))
        help = help if len(kinds) == len(registry.PROCESSES) else f"{', '.join(kinds)}: {help}"
        _add_flag(p, f, choices, help, [g.default for _, g in owners], defaults)


def _add_flag(p, field, choices, help: str, defaults: list, keep_default: bool) -> None:
    """``--NAME`` (dashes for underscores) of a dataclass ``field`` of type int, float, str or bool (or None)."""
    from cloudjax._config import type_name

    name, annotation = field.name, type_name(field)
    flag, default = "--" + name.replace("_", "-"), defaults[0] if keep_default else None
    if len(set(map(repr, defaults))) == 1 and defaults[0] is not None and defaults[0] is not False:
        help += f" (default {defaults[0]})"
    elif len(set(map(repr, defaults))) > 1:
        help += " (default: the process's)"
    if annotation.startswith("bool"):
        p.add_argument(flag, action="store_true", default=default, help=help)
        return
    kind = _STRICTER.get(name) or {"int": int, "float": float, "str": str}[annotation.partition(" | ")[0]]
    p.add_argument(flag, type=kind, choices=choices, default=default, help=help)


_STRICTER = {"seed": _seed}  # argument types that check more than the field's type


def _open_data(args, channels: int | None = None):
    """The source that the data flags (:data:`DATA_FLAGS`) of ``args`` (or a config's fields) name
    (:func:`cloudjax.data.open_source`); bad data → UsageError."""
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
