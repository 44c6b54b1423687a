"""The layering is enforced by import-linter (pyproject.toml, ``[tool.importlinter]``): the contracts hold on the
tree as it is, and break on a copy of the tree with one import that crosses a layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("backbone", "kernels", "envs", "rewards", "agents", "training")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install .[dev])")


def _lint(config: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=config.parent)


def _copy_tree(dest: Path) -> Path:
    """The ``ahm`` package as a plain folder (the repository root is the package: pyproject's package-dir)."""
    pkg = dest / "ahm"
    pkg.mkdir()
    for file in ROOT.glob("*.py"):
        shutil.copy(file, pkg / file.name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return pkg


def test_the_contracts_hold():
    done = _lint(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("backbone/mamba.py", "import ahm.envs.memory_env  # noqa", "Layers"),
    ("envs/streams.py", "import stable_baselines3  # noqa", "do not import Stable-Baselines3"),
    ("backbone/config.py", "import gymnasium  # noqa", "knows nothing of RL"),
    ("agents/base.py", "import ahm.cli  # noqa", "Layers"),
])
def test_an_import_across_a_layer_breaks_them(tmp_path, module, line, broken):
    pkg = _copy_tree(tmp_path)
    clean = _lint(tmp_path / "pyproject.toml", pythonpath=tmp_path)
    assert clean.returncode == 0, "the unmodified copy must pass: " + clean.stdout
    target = pkg / module
    target.write_text(target.read_text() + f"\n{line}\n")
    done = _lint(tmp_path / "pyproject.toml", pythonpath=tmp_path)
    assert done.returncode != 0, done.stdout
    assert broken in done.stdout and "BROKEN" in done.stdout, done.stdout
