"""Checkpoints that are safe to load: safetensors weights and a JSON sidecar.

Loading never executes code from the checkpoint (no pickle). Writes are atomic:
each file is written beside its target and moved into place with ``os.replace``,
so a crash mid-write leaves the previous checkpoint intact.
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

from .config import MambaConfig
from .mamba import MambaLM

__all__ = ["atomic_write_bytes", "atomic_save_tensors", "state_dict_for_saving", "save_lm_checkpoint",
           "load_lm_checkpoint"]

WEIGHTS = "model.safetensors"
META = "checkpoint.json"


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
    try:
        weights = load_file(str(directory / WEIGHTS), device=map_location)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {str(directory)!r}: {WEIGHTS} is corrupted ({err})") from err
    model = MambaLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The tied head is saved once, under the embedding's name.
    missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(directory)!r} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return model, meta.get("extra", {})
