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
from .errors import CheckpointError, NonFiniteError, first_non_finite, require_memory
from .mamba import MambaLM

__all__ = ["atomic_write_bytes", "atomic_save_tensors", "state_dict_for_saving", "save_lm_checkpoint",
           "load_lm_checkpoint", "write_bundle_meta", "read_bundle_meta", "read_tensors", "save_ahm_checkpoint",
           "load_ahm_checkpoint", "load_ahm_config", "AHM_WEIGHTS", "AHM_META", "check_finite", "check_config_sizes",
           "estimate_model_bytes", "SIZE_BOUNDS"]

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


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the half-written files that :func:`atomic_write_bytes` leaves when its process is killed mid-write
    (``.<name>.<random>.tmp``, anywhere under ``directory``); returns them. Call it only where no other process
    is writing (a run that starts or resumes in its own output directory)."""
    root = Path(directory)
    stale = [p for p in root.rglob(".*.tmp") if p.is_file()] if root.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
    tensors = state_dict_for_saving(model)
    check_finite(tensors.items(), f"refusing to save a MambaLM to {str(directory)!r}")
    atomic_save_tensors(directory / WEIGHTS, tensors)
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
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {META} is corrupted ({err})") from err
    what = f"checkpoint {str(directory)!r}"
    check_config_sizes(config, None, f"{what}: {META}")
    weights = read_tensors(directory / WEIGHTS, what, _LM_HINT, map_location)
    _check_weights(weights, directory / WEIGHTS)
    model = MambaLM(config)
    _check_shapes(model, weights, directory / WEIGHTS)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The tied head is saved once, under the embedding's name.
    missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise CheckpointError(f"{what}: {path.name} is not {not_a} ({err})") from err
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
        raise CheckpointError(f"{what}: {path.name} is corrupted ({err})") from err


# ====================================================================== the AHM model
AHM_WEIGHTS, AHM_META = "model.safetensors", "ahm_model.json"
"""The two files of a saved :class:`AHMModel`."""
_AHM_FORMAT, _AHM_VERSION = "ahm-model", 1
_AHM_HINT = "save one with save_ahm_checkpoint"


def save_ahm_checkpoint(directory: str | Path, model: AHMModel, extra: dict[str, Any] | None = None) -> None:
    """Save an :class:`AHMModel` (weights, codec parameters and config) as safetensors + JSON, atomically."""
    directory = Path(directory)
    tensors = state_dict_for_saving(model)
    check_finite(tensors.items(), f"refusing to save an AHMModel to {str(directory)!r}")
    atomic_save_tensors(directory / AHM_WEIGHTS, tensors)
    write_bundle_meta(directory / AHM_META, _AHM_FORMAT, _AHM_VERSION,
                      {"config": model.config.to_dict(), "extra": extra or {}})


def _read_ahm_meta(directory: Path) -> tuple[AHMConfig, dict[str, Any]]:
    what = f"AHM checkpoint {str(directory)!r}"
    meta = read_bundle_meta(directory / AHM_META, _AHM_FORMAT, _AHM_VERSION, what, "a saved AHMModel", _AHM_HINT)
    try:
        config = AHMConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: {AHM_META} is not a saved AHMModel ({err})") from err
    check_config_sizes(config.backbone, config, f"{what}: {AHM_META}")
    return config, meta


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
    _check_weights(weights, directory / AHM_WEIGHTS)
    model = AHMModel(config)
    _check_shapes(model, weights, directory / AHM_WEIGHTS)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not (config.backbone.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{what} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(map_location).eval().requires_grad_(False), meta.get("extra", {})


# ====================================================================== what a checkpoint is trusted with
SIZE_BOUNDS: dict[str, int] = {
    "vocab_size": 2**24, "d_model": 2**16, "n_layer": 2**10, "d_state": 2**12, "d_conv": 2**10, "expand": 2**6,
    "dt_rank": 2**16, "chunk_size": 2**24, "wm_slots": 2**20, "ltm_capacity": 2**30, "key_dim": 2**16,
    "value_dim": 2**16, "ltm_read_k": 2**16, "obs_topk": 2**16,
}
"""Largest value a checkpoint's JSON may give each size. Each is far above any model this project trains
(the shipped backbones: d_model 64-128, 2 layers, ltm_capacity <= 4096) and small enough that the check below
runs before anything is allocated; larger ones come from a corrupted or hostile file."""


def estimate_model_bytes(backbone: MambaConfig, config: AHMConfig | None = None) -> int:
    """Bytes of float32 weights of a model of these sizes (the Mamba blocks of Gu & Dao 2023, Sec. 3.4, plus the
    AHM projections), and, for an :class:`AHMModel`, the memory of one sequence (K slots + M LTM entries).

    An estimate made before allocating anything, so an absurd size is refused before it is tried.
    """
    d, di, n = backbone.d_model, backbone.d_inner, backbone.d_state
    r = backbone.resolved_dt_rank
    per_layer = d * 2 * di + di * (backbone.d_conv + 1) + di * (r + 2 * n) + (r + 1) * di + di * n + di + di * d + d
    params = backbone.vocab_size * d * (1 if backbone.tie_embeddings else 2) + backbone.n_layer * per_layer + d
    if config is not None:
        dk, dv = config.key_dim, config.resolved_value_dim
        params += d * (2 * dk + dv) + 4 * d * 2 * dv  # key / query / value projections, integration (both kinds)
        params += (config.wm_slots + config.ltm_capacity) * (dk + dv)  # one sequence's memory
    return 4 * params


def check_config_sizes(backbone: MambaConfig, config: AHMConfig | None, what: str) -> None:
    """Refuse sizes beyond :data:`SIZE_BOUNDS` or beyond this machine's memory, before allocating.

    Raises:
        CheckpointError: a size is beyond its bound (names the field). ResourceError: the model would not fit.
    """
    sizes = {name: getattr(backbone, name) for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv",
                                                         "expand", "dt_rank")}
    if config is not None:
        sizes.update({name: getattr(config, name) for name in ("chunk_size", "wm_slots", "ltm_capacity", "key_dim",
                                                               "value_dim", "ltm_read_k", "obs_topk")})
    for name, value in sizes.items():
        if value is not None and value > SIZE_BOUNDS[name]:
            raise CheckpointError(f"{what}: {name} = {value} is beyond the sane bound {SIZE_BOUNDS[name]}; the file "
                                  "is corrupted or not from this project (re-export the model)")
    need = estimate_model_bytes(backbone, config)
    require_memory(2 * need, what, "(weights loaded twice: the file's tensors and the model's); use a machine with "
                   "more memory, or a smaller model")


def check_finite(tensors: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor of ``tensors`` ((name, tensor) pairs) holding NaN or
    inf; ``what`` says what was being done."""
    bad = first_non_finite(tensors)
    if bad is not None:
        name, count, numel = bad
        raise NonFiniteError(f"{what}: tensor {name!r} has {count} of {numel} values NaN or infinite (the training "
                             "diverged: lower the learning rate, or the loss weights / initialisation scales)")


def _check_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a weights file holding NaN / inf (a saved divergence): :class:`CheckpointError` naming the tensor."""
    bad = first_non_finite(weights.items())
    if bad is not None:
        name, count, numel = bad
        raise CheckpointError(f"{str(path)!r}: tensor {name!r} has {count} of {numel} values NaN or infinite; "
                              "the checkpoint is of a diverged run: load an earlier one or retrain")


def _check_shapes(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a weights file whose tensors have other shapes than ``model``'s (a checkpoint of another size)."""
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has shape {tuple(tensor.shape)} but the model its "
                                  f"JSON describes needs {tuple(own[name].shape)}; the two files are of different "
                                  "models (save them together)")

