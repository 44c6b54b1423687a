"""``import ahm`` registers the AHMMemory ids once gymnasium is imported, however gymnasium gets imported."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("probe", [
    "",  # gymnasium imported right after ahm
    "import importlib.util; importlib.util.find_spec('gymnasium')",  # a spec lookup first (torchrl does this)
])
def test_ids_are_registered_after_gymnasium_is_imported(probe):
    code = (f"import sys, ahm\n{probe}\nassert 'gymnasium' not in sys.modules\n"
            "import gymnasium\nprint(sorted(i for i in gymnasium.registry if i.startswith('AHMMemory')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "AHMMemory-v0" in done.stdout and "AHMMemory-Decoy-v0" in done.stdout, done.stdout
