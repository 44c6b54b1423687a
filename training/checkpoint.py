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
from pathlib import Path
from typing import Any

import torch

from ahm.backbone import AHMModel
from ahm.backbone.checkpoint import (
    atomic_save_tensors,
    load_ahm_checkpoint,
    read_bundle_meta,
    read_tensors,
    save_ahm_checkpoint,
    write_bundle_meta,
)

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
        if not str(meta["checkpoint"]).startswith("step_") or "/" in meta["checkpoint"]:
            raise ValueError(f"bad checkpoint folder name {meta['checkpoint']!r}")
        meta["state"]["step"]
    except (KeyError, TypeError, ValueError) as err:  # "is corrupted": the words train_lm.py's users look for
        reason = err.__cause__ or err  # read_bundle_meta's own reason (bad JSON, another format), not its wording
        raise ValueError(f"training checkpoint {where}: {TRAINER_STATE} is corrupted ({reason})") from err
    return meta


def load_training_checkpoint(directory: str | Path, model: AHMModel,
                             optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load the weights into ``model`` and (if given) the optimizer's state, in place; returns the trainer state.

    ``model`` must have the checkpoint's configuration (the trainer builds it from the saved config).

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupted or does not fit.
    """
    directory = Path(directory)
    where = repr(str(directory))
    meta = _read_meta(directory)
    state = meta["state"]
    folder = directory / meta["checkpoint"]
    saved, _ = load_ahm_checkpoint(folder)
    if saved.config != model.config:
        raise ValueError(f"training checkpoint {where} was made with a different model configuration; resume with "
                         "the same model settings, or use another --out-dir")
    with torch.no_grad():
        model.load_state_dict(saved.state_dict())
    if optimizer is not None:
        tensors = read_tensors(folder / OPTIMIZER, f"training checkpoint {where}", "start without --resume")
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        for index, values in meta.get("optimizer_scalars", {}).items():
            per_param.setdefault(int(index), {}).update(values)
        try:
            optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        except (KeyError, ValueError) as err:
            raise ValueError(f"training checkpoint {where}: the optimizer state does not fit ({err})") from err
    return state
