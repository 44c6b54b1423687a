"""ahm.cli: typed configs on the command line."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import ahm.cli
from ahm.cli import field_docs, parse_config


@dataclass
class Example:
    steps: int = 10
    """How many steps to run."""
    rate: float = 0.5
    name: str = "x"
    """A name (100% of it)."""
    limit: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


def test_defaults_and_overrides():
    assert parse_config(Example, []) == Example()
    cfg = parse_config(Example, ["--steps", "3", "--rate", "1e-3", "--limit", "7", "--verbose"])
    assert cfg == Example(steps=3, rate=1e-3, limit=7, verbose=True)
    assert parse_config(Example, ["--limit", "None"]).limit is None


def test_field_docstrings_become_help(capsys):
    assert field_docs(Example) == {"steps": "How many steps to run.", "name": "A name (100% of it)."}
    with pytest.raises(SystemExit) as info:
        parse_config(Example, ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "How many steps to run." in out and "A name (100% of it)." in out


@pytest.mark.parametrize("script", ["train_lm.py", "train_rl.py"])
def test_scripts_print_every_field_in_help(script):
    """``--help`` of the real configs: argparse %-formats help text, so a literal % must not break it."""
    import subprocess
    import sys
    from pathlib import Path

    from ahm.training.alternation import TrainRLConfig
    from ahm.training.supervised import TrainLMConfig

    root = Path(ahm.cli.__file__).resolve().parent
    done = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cls = TrainLMConfig if script == "train_lm.py" else TrainRLConfig
    for name in field_docs(cls):
        assert "--" + name.replace("_", "-") in done.stdout


@pytest.mark.parametrize("argv, message", [(["--steps", "x"], "invalid int value"),
                                           (["--steps", "-1"], "steps must be >= 0"),
                                           (["--nope", "1"], "unrecognized arguments")])
def test_bad_values_exit_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse_config(Example, argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_docstring_example_runs():
    import doctest

    assert doctest.testmod(ahm.cli).failed == 0
