"""Learned controllers' checkpoints: data only, never code, when loaded.

* :func:`save_controller` - an SB3 model as a directory of ``controller.safetensors`` (the policy's weights)
  and ``controller.json`` (a bundle header ``{"format": "ahm-controller", "version": 1}`` written by
  :func:`ahm.backbone.checkpoint.write_bundle_meta`, then the algorithm, the policy's arguments, the spaces,
  the hyperparameters, the training env's description and the weights' SHA-256).
* :func:`load_controller` - the :class:`~ahm.agents.sb3_controllers.SB3Controller` of such a directory
  (the header checked by :func:`ahm.backbone.checkpoint.read_bundle_meta`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from stable_baselines3.common import torch_layers
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import nn

from ahm.agents.policies import FEATURE_EXTRACTORS
from ahm.agents.sb3_controllers import ALGORITHMS, AlgoSpec, SB3Controller, algo_name
from ahm.backbone.checkpoint import atomic_write_bytes, read_bundle_meta, write_bundle_meta

__all__ = ["save_controller", "load_controller"]

_FORMAT, _VERSION = "ahm-controller", 1
_WEIGHTS, _META = "controller.safetensors", "controller.json"
_HINT = "write one with save_controller"

_CLASS_KWARGS: dict[str, tuple[Any, type]] = {
    "activation_fn": (nn, nn.Module),
    "optimizer_class": (torch.optim, torch.optim.Optimizer),
    "features_extractor_class": (FEATURE_EXTRACTORS, torch_layers.BaseFeaturesExtractor),
}
"""Policy arguments that are classes, saved by name and looked up only in these modules on load."""

_HYPERPARAMETERS = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                    "ent_coef", "vf_coef", "max_grad_norm", "normalize_advantage", "use_rms_prop", "rms_prop_eps",
                    "target_kl")
"""Algorithm arguments stored with a controller so a loaded model trains on as it did (schedules: their start)."""


def _encode_policy_kwargs(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in policy_kwargs.items():
        if key in _CLASS_KWARGS:
            module, base = _CLASS_KWARGS[key]
            if not (isinstance(value, type) and getattr(module, value.__name__, None) is value):
                raise ValueError(f"policy_kwargs[{key!r}] = {value!r} cannot be saved: use a class of "
                                 f"{module.__name__} (it is stored by name and looked up there on load)")
            out[key] = {"class": value.__name__}
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"policy_kwargs[{key!r}] = {value!r} is not JSON-able and cannot be saved "
                             f"({err})") from err
        out[key] = value
    return out


def _decode_policy_kwargs(encoded: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in encoded.items():
        if key in _CLASS_KWARGS:
            module, base = _CLASS_KWARGS[key]
            name = value.get("class") if isinstance(value, Mapping) else None
            cls = getattr(module, name, None) if isinstance(name, str) else None
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ValueError(f"policy_kwargs[{key!r}] names {value!r}, not a {base.__name__} of {module.__name__}")
            out[key] = cls
        else:
            out[key] = value
    return out


def _describe_space(space: spaces.Space, what: str) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "keys": list(space.spaces),
                "spaces": {k: _describe_space(s, f"{what}[{k!r}]") for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.astype(np.float64).tolist(), "high": space.high.astype(np.float64).tolist()}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).astype(int).tolist()}
    raise ValueError(f"cannot save a controller whose {what} space is a {type(space).__name__}")


def _build_space(desc: Mapping[str, Any]) -> spaces.Space:
    kind = desc["type"]
    if kind == "Dict":
        if list(desc["spaces"]) != list(desc["keys"]):
            raise ValueError("Dict keys and spaces disagree")
        # Key order is the order CombinedExtractor concatenates features in: keep it exactly.
        return spaces.Dict(OrderedDict((k, _build_space(desc["spaces"][k])) for k in desc["keys"]))
    if kind == "Box":
        shape = tuple(int(s) for s in desc["shape"])
        low = np.asarray(desc["low"], dtype=desc["dtype"]).reshape(shape)
        high = np.asarray(desc["high"], dtype=desc["dtype"]).reshape(shape)
        return spaces.Box(low, high, shape=shape, dtype=np.dtype(desc["dtype"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(desc["nvec"], dtype=np.int64))
    raise ValueError(f"unknown space type {kind!r}")


def _hyperparameters(model: OnPolicyAlgorithm, spec: AlgoSpec) -> dict[str, Any]:
    accepted = inspect.signature(spec.cls.__init__).parameters
    out: dict[str, Any] = {}
    for name in _HYPERPARAMETERS:
        if name not in accepted or not hasattr(model, name):
            continue
        value = getattr(model, name)
        if callable(value):
            value = value(1.0)  # a schedule: its value at the start of training
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float)):
            out[name] = value
    return out


def save_controller(path: str | Path, model: OnPolicyAlgorithm | SB3Controller,
                    env_spec: Mapping[str, Any] | None = None) -> Path:
    """Save a trained SB3 model as a controller checkpoint directory; returns the directory.

    Files (each written atomically: a temporary file, then ``os.replace``):

    * ``controller.safetensors``: the policy's ``state_dict``;
    * ``controller.json``: format and version, ``algo``, the policy's arguments
      (``policy_kwargs``; classes by name), the observation space (keys in order, shapes,
      dtypes, bounds) and action space (``nvec``), the algorithm's hyperparameters,
      ``env_spec`` (a JSON-able description of the training env, e.g. :func:`~ahm.agents.learned.env_spec_of`),
      and the SHA-256 of the weights file.

    SB3's own ``save`` writes a zip whose loading unpickles with cloudpickle, which can
    run code from the file; this format holds data only.
    """
    if isinstance(model, SB3Controller):
        model = model.model
    algo = algo_name(model)
    spec = ALGORITHMS[algo]
    try:
        env_json = json.loads(json.dumps(dict(env_spec or {}), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"env_spec must be JSON-able (see env_spec_of): {err}") from err
    # clone: tensors that share storage (a shared extractor) cannot be saved by safetensors
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.policy.state_dict().items()}
    blob = save_safetensors_bytes(weights)
    meta = {
        "algo": algo, "policy": spec.policy,
        "policy_kwargs": _encode_policy_kwargs(model.policy_kwargs or {}),
        "observation_space": _describe_space(model.observation_space, "observation"),
        "action_space": _describe_space(model.action_space, "action"),
        "hyperparameters": _hyperparameters(model, spec),
        "num_timesteps": int(model.num_timesteps),
        "env_spec": env_json,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / _WEIGHTS, blob)
    write_bundle_meta(directory / _META, _FORMAT, _VERSION, meta)
    return directory


def load_controller(path: str | Path, deterministic: bool = True, device: str = "cpu", num_envs: int = 1,
                    name: str | None = None) -> SB3Controller:
    """Load a controller saved by :func:`save_controller` (never executes code from the files).

    The model is rebuilt from the JSON (algorithm, policy arguments, spaces) without an
    env, and the policy's weights are loaded strictly. ``controller.model`` is a complete
    SB3 model: pass it to :func:`~ahm.agents.learned.train_controller` (with ``num_envs`` equal to the config's)
    to train on; its optimizer state starts afresh.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: a file is corrupted, of another format, or does not match the policy it describes.
    """
    directory = Path(path)
    what = f"controller checkpoint {str(directory)!r}"
    for file in (_META, _WEIGHTS):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{what} has no {file} ({_HINT})")
    meta = read_bundle_meta(directory / _META, _FORMAT, _VERSION, what, "a saved controller", _HINT)
    try:
        algo = meta["algo"]
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {algo!r}")
        policy_kwargs = _decode_policy_kwargs(meta["policy_kwargs"])
        observation_space = _build_space(meta["observation_space"])
        action_space = _build_space(meta["action_space"])
        hyper = dict(meta.get("hyperparameters", {}))
        expected_sha = str(meta["weights_sha256"])
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{what}: {_META} is not a saved controller ({err})") from err
    blob = (directory / _WEIGHTS).read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise ValueError(f"{what}: {_WEIGHTS} is corrupted (its SHA-256 differs from the one "
                         f"recorded in {_META}); save the controller again")
    try:
        weights = load_safetensors_bytes(blob)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{what}: {_WEIGHTS} is corrupted ({err})") from err
    spec = ALGORITHMS[algo]
    accepted = inspect.signature(spec.cls.__init__).parameters
    hyper = {k: v for k, v in hyper.items() if k in accepted}
    # SB3 models need spaces, not an env: build without one, then set them up as SB3's own load does.
    model = spec.cls(spec.policy, env=None, device=device, policy_kwargs=policy_kwargs or None,
                     _init_setup_model=False, **hyper)
    model.observation_space, model.action_space, model.n_envs = observation_space, action_space, num_envs
    model._setup_model()
    try:
        model.policy.load_state_dict({k: v.to(model.device) for k, v in weights.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{what}: weights do not match the policy described in {_META} "
                         f"({err})") from err
    model.num_timesteps = int(meta.get("num_timesteps", 0))
    model.policy.set_training_mode(False)
    return SB3Controller(model, deterministic=deterministic, name=name)
