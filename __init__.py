"""AHM-SSM: Adaptive Hierarchical Memory for State Space Models.

Subpackages (ARCHITECTURE.md, "Layout"); dependencies point one way:
``kernels`` <- ``backbone`` <- ``envs`` / ``rewards`` <- ``agents`` <- scripts.

* :mod:`ahm.kernels`  - compute kernels (selective scan, memory retrieval)
* :mod:`ahm.backbone` - the Mamba-style selective SSM and, later, the hierarchical memory
* :mod:`ahm.envs`     - task streams and the ``AHMMemory-v0`` Gymnasium environments
* :mod:`ahm.rewards`  - reward terms and how they combine
* :mod:`ahm.agents`   - memory controllers and their benchmark
"""

__version__ = "0.1.0"

_ERRORS = ("AHMError", "AHMConfigError", "CheckpointError", "NonFiniteError", "ResourceError")
"""The error families (:mod:`ahm.errors`), importable as ``ahm.CheckpointError``; loaded on first use, so that
``import ahm`` stays light."""


def __getattr__(name: str):
    if name in _ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'ahm' has no attribute {name!r}")


# ---------------------------------------------------------------- registration of the AHMMemory-* Gymnasium ids
# `import ahm` registers them, and gymnasium.make("ahm:AHMMemory-v0") works without importing ahm first. `import
# ahm` must not import gymnasium itself (ahm.backbone knows nothing of RL: tests/test_ahm_model.py), so the ids are
# registered now if gymnasium is already loaded, else right after its first import (a one-shot import hook).
import importlib.abc as _abc  # noqa: E402
import importlib.util as _util  # noqa: E402
import sys as _sys  # noqa: E402


def _register_envs() -> None:
    from .envs.registry import register_envs

    register_envs()


class _RegisterAfterGymnasiumImport(_abc.MetaPathFinder):
    """Finds ``gymnasium`` with the other finders and registers the ids once its module has executed.

    A plain ``importlib.util.find_spec("gymnasium")`` (torchrl does one at import) asks this finder too without
    importing anything, so the finder stays installed until gymnasium's module actually executes.
    """

    _finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium" or self._finding:
            return None
        self._finding = True  # the find_spec below asks every finder again, this one included
        try:
            spec = _util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module
            finder = self

            def exec_and_register(module):
                if finder in _sys.meta_path:
                    _sys.meta_path.remove(finder)
                exec_module(module)
                _register_envs()

            spec.loader.exec_module = exec_and_register
        return spec


if "gymnasium" in _sys.modules:
    _register_envs()
elif not any(isinstance(f, _RegisterAfterGymnasiumImport) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterAfterGymnasiumImport())
