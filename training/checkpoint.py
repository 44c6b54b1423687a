"""Training checkpoints that resume exactly, survive a crash at any moment, and are safe to load.

A training checkpoint is a folder ``out_dir`` holding

* ``step_<N>/``: the state after step N:
  ``model.safetensors`` + ``ahm_model.json`` (the :class:`~ahm.backbone.AHMModel` in the format of
  :func:`ahm.envs.save_ahm_checkpoint`, so the env and the benchmark load ``step_<N>/`` directly)
  and ``optimizer.safetensors`` (every tensor of the optimizer's state, named ``<param index>.<name>``);
* ``trainer.json``: which ``step_<N>/`` is current, the optimizer's param groups, the data
  generator's state (numpy's ``bit_generator.state`` is plain JSON), the curriculum, the config
  and the loss history.

A save writes a new ``step_<N>/`` completely, then replaces ``trainer.json`` atomically
(``os.replace``), and only then deletes the previous ``step_<M>/``. A crash (even SIGKILL)
at any moment therefore leaves a ``trainer.json`` that names a complete folder whose files
all belong to the same step. Loading reads safetensors and JSON only: it never executes
code from the checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ahm.backbone import AHMModel
from ahm.backbone.checkpoint import (
    atomic_save_tensors,
    check_finite,
    load_ahm_checkpoint,
    read_bundle_meta,
    read_tensors,
    save_ahm_checkpoint,
    write_bundle_meta,
)
from ahm.backbone.errors import CheckpointError, first_non_finite

__all__ = ["TRAINER_STATE", "save_training_checkpoint", "load_training_checkpoint", "has_training_checkpoint",
           "current_model_dir"]

TRAINER_STATE = "trainer.json"
OPTIMIZER = "optimizer.safetensors"
_FORMAT, _VERSION = "ahm-training", 1


def has_training_checkpoint(directory: str | Path) -> bool:
    """True if ``directory`` holds a training checkpoint (its ``trainer.json``)."""
    return (Path(directory) / TRAINER_STATE).is_file()


def current_model_dir(directory: str | Path) -> Path:
    """The ``step_<N>/`` folder the training checkpoint in ``directory`` names (its model loads from there)."""
    meta = _read_meta(Path(directory))
    return Path(directory) / meta["checkpoint"]


def save_training_checkpoint(directory: str | Path, model: AHMModel, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Save model, optimizer and the JSON-able trainer ``state`` (with its ``step``) into ``directory``
    (module doc: a new ``step_<N>/``, then ``trainer.json``, then the old folder goes); returns ``step_<N>/``."""
    directory = Path(directory)
    name = f"step_{int(state['step']):09d}"
    folder = directory / name
    save_ahm_checkpoint(folder, model, extra=extra)
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    check_finite(tensors.items(), f"refusing to save the optimizer state to {str(folder)!r}")
    atomic_save_tensors(folder / OPTIMIZER, tensors)
    write_bundle_meta(directory / TRAINER_STATE, _FORMAT, _VERSION, {
        "checkpoint": name, "param_groups": opt["param_groups"], "optimizer_scalars": scalars, "state": state})
    for old in directory.glob("step_*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _read_meta(directory: Path) -> dict[str, Any]:
    where = repr(str(directory))
    if not (directory / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"no training checkpoint in {where} (no {TRAINER_STATE}); start without --resume")
    try:
        meta = read_bundle_meta(directory / TRAINER_STATE, _FORMAT, _VERSION, f"training checkpoint {where}",
                                "a training checkpoint", "start without --resume")
        check_fields(meta, _META_FIELDS, "")
        if not meta["checkpoint"].startswith("step_") or "/" in meta["checkpoint"] or "\\" in meta["checkpoint"]:
            raise ValueError(f"field 'checkpoint' is a bad folder name {meta['checkpoint']!r}")
        check_fields(meta["state"], {"step": int}, "state.")
    except (KeyError, TypeError, ValueError) as err:  # "is corrupted": the words train_lm.py's users look for
        reason = err.__cause__ or err  # read_bundle_meta's own reason (bad JSON, another format), not its wording
        raise CheckpointError(f"training checkpoint {where}: {TRAINER_STATE} is corrupted ({reason}); start without "
                              "--resume, or in another --out-dir") from err
    return meta


_META_FIELDS: dict[str, type | tuple[type, ...]] = {"checkpoint": str, "param_groups": list, "state": dict}


def check_fields(obj: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], prefix: str) -> None:
    """Raise ValueError naming the first of ``fields`` (name -> type(s)) missing from ``obj`` or of another type
    (``prefix`` + name: ``state.rng``); a bool is not an int."""
    for name, kind in fields.items():
        if name not in obj:
            raise ValueError(f"field {prefix + name!r} is missing")
        value = obj[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"field {prefix + name!r} must be {names}, got {type(value).__name__} {value!r:.60}")


def load_training_checkpoint(directory: str | Path, model: AHMModel, optimizer: torch.optim.Optimizer | None = None,
                             state_fields: Mapping[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """Load the weights into ``model`` and (if given) the optimizer's state, in place; returns the trainer state.

    ``model`` must have the checkpoint's configuration (the trainer builds it from the saved config);
    ``state_fields`` (name -> type) are the trainer state's fields the caller needs, checked before anything loads.

    Raises:
        FileNotFoundError: a file is missing. CheckpointError (a ValueError): a file is corrupted, holds non-finite
        values, or does not fit.
    """
    directory = Path(directory)
    where = repr(str(directory))
    meta = _read_meta(directory)
    state = meta["state"]
    try:
        check_fields(state, state_fields or {}, "state.")
        if not all(isinstance(g, dict) for g in meta["param_groups"]):
            raise ValueError("field 'param_groups' must be a list of objects")
        if not isinstance(meta.get("optimizer_scalars", {}), dict):
            raise ValueError("field 'optimizer_scalars' must be an object")
    except ValueError as err:
        raise CheckpointError(f"training checkpoint {where}: {TRAINER_STATE} is corrupted ({err}); start without "
                              "--resume, or in another --out-dir") from err
    folder = directory / meta["checkpoint"]
    saved, _ = load_ahm_checkpoint(folder)
    if saved.config != model.config:
        raise CheckpointError(f"training checkpoint {where} was made with a different model configuration; resume with "
                         "the same model settings, or use another --out-dir")
    with torch.no_grad():
        model.load_state_dict(saved.state_dict())
    if optimizer is not None:
        tensors = read_tensors(folder / OPTIMIZER, f"training checkpoint {where}", "start without --resume")
        bad = first_non_finite(tensors.items())
        if bad is not None:
            raise CheckpointError(f"{str(folder / OPTIMIZER)!r}: tensor {bad[0]!r} has {bad[1]} of {bad[2]} values NaN "
                                  "or infinite; the run diverged: start without --resume")
        per_param: dict[int, dict[str, Any]] = {}
        try:
            for key, value in tensors.items():
                index, name = key.split(".", 1)
                per_param.setdefault(int(index), {})[name] = value
            for index, values in meta.get("optimizer_scalars", {}).items():
                per_param.setdefault(int(index), {}).update(values)
            optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"training checkpoint {where}: the optimizer state does not fit ({err})") from err
    return state
