"""Command lines from typed config dataclasses (one per entry point, as in CleanRL).

Each field becomes ``--field-name``; its type converts the value; the string
literal written under the field in the class body (its attribute docstring) is
the ``--help`` text, so the documentation lives in one place.

Field types: ``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``),
``X | None`` (the value ``None``), and sequences ``tuple[X, ...]`` of the scalar
types, written comma-separated (``--lengths 4K,16K``; an empty string is the empty
tuple). An ``int`` may carry a binary suffix: ``4K`` = 4096, ``1M`` = 1048576.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     steps: int = 10
    ...     '''How many steps.'''
    ...     fast: bool = False
    >>> parse_config(Demo, ["--steps", "3", "--fast"])
    Demo(steps=3, fast=True)
    >>> @dataclass
    ... class Grid:
    ...     lengths: tuple[int, ...] = (1024,)
    ...     names: tuple[str, ...] = ()
    >>> parse_config(Grid, ["--lengths", "4K,16K", "--names", "a, b"])
    Grid(lengths=(4096, 16384), names=('a', 'b'))
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from ahm.backbone.config import parse_int  # re-exported: the lowest config module is its home

T = TypeVar("T")

__all__ = ["field_docs", "parse_config", "parse_int"]



def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _field_type(annotation: Any) -> tuple[type, bool]:
    """The concrete element type of a field annotation and whether it is a sequence:
    ``int | None`` -> (int, False), ``tuple[str, ...]`` -> (str, True)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _field_type(args[0])
        raise TypeError(f"unsupported config field type {annotation!r}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0], True
        raise TypeError(f"unsupported config field type {annotation!r}: sequences are tuple[X, ...] of int, float "
                        "or str")
    if annotation in (int, float, str, bool):
        return annotation, False
    raise TypeError(f"unsupported config field type {annotation!r}")


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


_SEQUENCE_OF = {int: "integers", float: "numbers", str: "strings"}
"""How a sequence field's error names its elements (``--lengths must be comma-separated integers``)."""


def _converter(kind: type, optional: bool, sequence: bool, flag: str):
    scalar = parse_int if kind is int else kind

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        if sequence:
            try:
                return tuple(scalar(part.strip()) for part in text.split(",") if part.strip())
            except ValueError as err:  # argparse prints this message as it is: say which flag and what it takes
                raise argparse.ArgumentTypeError(f"{flag} must be comma-separated {_SEQUENCE_OF[kind]}, got "
                                                 f"{text!r} ({err})") from err
        return scalar(text)

    convert.__name__ = f"comma-separated {kind.__name__}s" if sequence else kind.__name__  # argparse names it in errors
    return convert


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``argv`` into an instance of the dataclass ``cls``.

    Validation in ``cls.__post_init__`` runs as usual; a ``ValueError`` there ends
    the program with argparse's usage message and exit status 2.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    parser = argparse.ArgumentParser(
        description=description or inspect.getdoc(cls),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, sequence = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, " ").replace("%", "%%")  # argparse %-formats help strings
        if sequence:
            default = ",".join(str(x) for x in default) if isinstance(default, tuple) else default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(
                flag, type=_converter(kind, _optional(hints[f.name]), sequence, flag), default=default,
                help=help_text, metavar=(kind.__name__.upper() + ",...") if sequence else kind.__name__.upper(),
            )
    namespace = parser.parse_args(argv)
    try:
        return cls(**vars(namespace))
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
