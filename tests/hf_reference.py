"""Hugging Face ``transformers``, imported for the parity tests (the reference implementations we test against)."""

from __future__ import annotations

import importlib
import os
import sys

import pytest


def import_transformers(*names: str) -> tuple:
    """``names`` from Hugging Face ``transformers``, or the test skipped where it cannot be imported.

    transformers >= 5 imports the PyPI package ``kernels``, which the repository's own top-level
    ``kernels/`` folder shadows when the repository root is on sys.path (``python -m pytest`` from the
    root): import it with the root left off.
    """
    pytest.importorskip("transformers")
    import ahm

    root = os.path.dirname(os.path.abspath(ahm.__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        module = importlib.import_module("transformers")
        return tuple(getattr(module, name) for name in names)
    except ImportError as err:
        pytest.skip(f"transformers cannot be imported here: {err}")
    finally:
        sys.path[:] = saved
