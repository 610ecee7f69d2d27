"""Config dataclasses: each setting described once, in its field (default, help, choices), and checked when made.

A field made with :func:`setting` carries its help text and choices in ``metadata``; the ``cloudjax`` command
generates its flags from them (:mod:`cloudjax.cli._flags`) and :func:`check_fields` refuses a value of the wrong
type, a non-finite number or a name outside the choices, so a hand-edited run.json is refused like a bad flag.
Imports nothing from cloudjax and no JAX.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

_TYPES = {"int": numbers.Integral, "float": numbers.Real, "str": str, "bool": bool}


def setting(default, help: str, choices: Sequence | None = None):
    """A dataclass field with ``default`` whose ``help`` and ``choices`` the command line and the checks read."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def type_name(field: dataclasses.Field) -> str:
    """The field's annotation as written (``"int"``, ``"float | None"``), whether or not annotations are strings."""
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def check_fields(config) -> None:
    """``ValueError`` naming the first field of dataclass ``config`` whose value is not of its annotated type
    (``"int"``, ``"float | None"``, ...), not finite, or not one of its ``choices``; other annotations are skipped."""
    for f in dataclasses.fields(config):
        value, (kind, _, optional) = getattr(config, f.name), type_name(f).partition(" | ")
        if kind not in _TYPES or value is None and optional:
            continue
        if not isinstance(value, _TYPES[kind]) or (isinstance(value, bool) and kind != "bool"):
            raise ValueError(f"{f.name} must be of type {f.type}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN and inf pass every comparison
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        choices = f.metadata.get("choices")  # a field made without setting() has none
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")


def fill(config, **defaults) -> None:
    """Set the fields of frozen dataclass ``config`` among ``defaults`` that are None (in ``__post_init__``)."""
    for name, value in defaults.items():
        if getattr(config, name) is None:
            object.__setattr__(config, name, value)


def refuse(config, what: str, **applies: bool) -> None:
    """``ValueError`` "NAME does not apply to WHAT" for the first field named in ``applies`` that is given (not
    None) where it does not apply."""
    for name, ok in applies.items():
        if not ok and getattr(config, name) is not None:
            raise ValueError(f"{name} does not apply to {what}")
