"""Checkpoints that are safe to load: safetensors weights and a JSON sidecar.

Loading never executes code from the checkpoint (no pickle). Writes are atomic:
each file is written beside its target and moved into place with ``os.replace``,
so a crash mid-write leaves the previous checkpoint intact.

Every checkpoint format of the project (the model here, the memory in
:mod:`ahm.backbone.memory_io`, the trainer in :mod:`ahm.training.checkpoint`, a learned
controller in :mod:`ahm.agents.controller_checkpoint`) is a *bundle*: one JSON file
that starts with ``{"format": ..., "version": ...}`` and, beside it, zero or more
safetensors files. :func:`write_bundle_meta` and :func:`read_bundle_meta` are the one
place that writes and checks that header.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .ahm_model import AHMConfig, AHMModel
from .config import MambaConfig
from .mamba import MambaLM

__all__ = ["atomic_write_bytes", "atomic_save_tensors", "state_dict_for_saving", "save_lm_checkpoint",
           "load_lm_checkpoint", "write_bundle_meta", "read_bundle_meta", "read_tensors", "save_ahm_checkpoint",
           "load_ahm_checkpoint", "load_ahm_config", "AHM_WEIGHTS", "AHM_META"]

WEIGHTS = "model.safetensors"
META = "checkpoint.json"
"""The two files of a saved :class:`MambaLM` (an older layout than the bundles below: its JSON has no format field)."""
_LM_HINT = "save one with save_lm_checkpoint"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` on the CPU, contiguous, with tied weights once (the first name).

    Tied weights share storage, which safetensors refuses; empty tensors all report data
    pointer 0, so they are always kept.
    """
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as a safetensors file at ``path``, atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(Path(path), save(tensors))


def save_lm_checkpoint(directory: str | Path, model: MambaLM, extra: dict[str, Any] | None = None) -> None:
    """Save ``model`` (weights + config) and ``extra`` JSON metadata into ``directory``."""
    directory = Path(directory)
    atomic_save_tensors(directory / WEIGHTS, state_dict_for_saving(model))
    meta = {"model": "MambaLM", "config": model.config.to_dict(), "extra": extra or {}}
    atomic_write_bytes(directory / META, json.dumps(meta, indent=1).encode())


def load_lm_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[MambaLM, dict[str, Any]]:
    """Load a :class:`MambaLM` saved by :func:`save_lm_checkpoint`; returns it and ``extra``.

    Raises:
        FileNotFoundError: a file of the checkpoint is missing.
        ValueError: the checkpoint is corrupted or does not match its config.
    """
    directory = Path(directory)
    for name in (META, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {str(directory)!r} has no {name}")
    try:
        meta = json.loads((directory / META).read_text())
        config = MambaConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {str(directory)!r}: {META} is corrupted ({err})") from err
    weights = read_tensors(directory / WEIGHTS, f"checkpoint {str(directory)!r}", _LM_HINT, map_location)
    model = MambaLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The tied head is saved once, under the embedding's name.
    missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(directory)!r} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return model, meta.get("extra", {})


# ====================================================================== bundles: a JSON header + safetensors files
def write_bundle_meta(path: Path, format: str, version: int, meta: dict[str, Any]) -> None:
    """Write ``{"format": format, "version": version, **meta}`` as JSON at ``path``, atomically.

    Write the bundle's tensor files first: a reader finds the JSON only once they are in place.
    """
    atomic_write_bytes(Path(path), json.dumps({"format": format, "version": version, **meta}, indent=1).encode())


def read_bundle_meta(path: Path, format: str, version: int, what: str, not_a: str, hint: str) -> dict[str, Any]:
    """The JSON header of a bundle at ``path``, checked to be ``format`` / ``version``.

    ``what`` names the checkpoint in errors (e.g. ``"AHM checkpoint 'dir'"``), ``not_a`` says what the file
    should have been (``"a saved AHMModel"``) and ``hint`` how to make one (``"save one with ..."``).

    Raises:
        FileNotFoundError: the file is missing. ValueError: it is not JSON, not an object, or of another
        format or version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} has no {path.name} ({hint})")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != format or meta.get("version") != version:
            raise ValueError(f"expected format {format!r} version {version}, got format {meta.get('format')!r} "
                             f"version {meta.get('version')!r}")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{what}: {path.name} is not {not_a} ({err})") from err
    return meta


def read_tensors(path: Path, what: str, hint: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file at ``path``; errors name ``what`` (see :func:`read_bundle_meta`).

    Raises:
        FileNotFoundError: the file is missing. ValueError: it is corrupted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} has no {path.name} ({hint})")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{what}: {path.name} is corrupted ({err})") from err


# ====================================================================== the AHM model
AHM_WEIGHTS, AHM_META = "model.safetensors", "ahm_model.json"
"""The two files of a saved :class:`AHMModel`."""
_AHM_FORMAT, _AHM_VERSION = "ahm-model", 1
_AHM_HINT = "save one with save_ahm_checkpoint"


def save_ahm_checkpoint(directory: str | Path, model: AHMModel, extra: dict[str, Any] | None = None) -> None:
    """Save an :class:`AHMModel` (weights, codec parameters and config) as safetensors + JSON, atomically."""
    directory = Path(directory)
    atomic_save_tensors(directory / AHM_WEIGHTS, state_dict_for_saving(model))
    write_bundle_meta(directory / AHM_META, _AHM_FORMAT, _AHM_VERSION,
                      {"config": model.config.to_dict(), "extra": extra or {}})


def _read_ahm_meta(directory: Path) -> tuple[AHMConfig, dict[str, Any]]:
    what = f"AHM checkpoint {str(directory)!r}"
    meta = read_bundle_meta(directory / AHM_META, _AHM_FORMAT, _AHM_VERSION, what, "a saved AHMModel", _AHM_HINT)
    try:
        return AHMConfig.from_dict(meta["config"]), meta
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{what}: {AHM_META} is not a saved AHMModel ({err})") from err


def load_ahm_config(directory: str | Path) -> AHMConfig:
    """The :class:`AHMConfig` of a checkpoint saved by :func:`save_ahm_checkpoint` (reads its JSON only).

    Raises:
        FileNotFoundError: the JSON is missing. ValueError: it is corrupted.
    """
    return _read_ahm_meta(Path(directory))[0]


def load_ahm_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[AHMModel, dict[str, Any]]:
    """Load an :class:`AHMModel` saved by :func:`save_ahm_checkpoint` (never executes code); returns it and ``extra``.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupted or does not match its config.
    """
    directory = Path(directory)
    what = f"AHM checkpoint {str(directory)!r}"
    config, meta = _read_ahm_meta(directory)
    weights = read_tensors(directory / AHM_WEIGHTS, what, _AHM_HINT, map_location)
    model = AHMModel(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not (config.backbone.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{what} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(map_location).eval().requires_grad_(False), meta.get("extra", {})
