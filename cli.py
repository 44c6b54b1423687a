"""Command lines from typed config dataclasses (one per entry point, as in CleanRL).

Each field becomes ``--field-name``; its type converts the value; the string
literal written under the field in the class body (its attribute docstring) is
the ``--help`` text, so the documentation lives in one place.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     steps: int = 10
    ...     '''How many steps.'''
    ...     fast: bool = False
    >>> parse_config(Demo, ["--steps", "3", "--fast"])
    Demo(steps=3, fast=True)
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

T = TypeVar("T")

__all__ = ["field_docs", "parse_config"]


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


def _scalar_type(annotation: Any) -> type:
    """The concrete type of a field annotation (``int | None`` -> int)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar_type(args[0])
        raise TypeError(f"unsupported config field type {annotation!r}")
    if annotation in (int, float, str, bool):
        return annotation
    raise TypeError(f"unsupported config field type {annotation!r}")


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _converter(kind: type, optional: bool):
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        return kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its errors
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
        kind = _scalar_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, " ").replace("%", "%%")  # argparse %-formats help strings
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(
                flag, type=_converter(kind, _optional(hints[f.name])), default=default,
                help=help_text, metavar=kind.__name__.upper(),
            )
    namespace = parser.parse_args(argv)
    try:
        return cls(**vars(namespace))
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
