"""Learned controllers' checkpoints: data only, never code, when loaded.

* :func:`save_controller` - an SB3 model as a directory of ``controller.safetensors`` (the policy's weights)
  and ``controller.json`` (a bundle header ``{"format": "ahm-controller", "version": 1}`` written by
  :func:`ahm.backbone.checkpoint.write_bundle_meta`, then the algorithm, the policy's arguments, the spaces,
  the hyperparameters, the training env's description and the weights' SHA-256).
* :func:`load_controller` - the :class:`~ahm.agents.sb3_controllers.SB3Controller` of such a directory
  (the header checked by :func:`ahm.backbone.checkpoint.read_bundle_meta`).
* :func:`save_mlp_policy` / :func:`load_mlp_policy` - a plain-torch policy (an MLP over the concatenated
  observation: linear layers, layer norms and activations) as a ``TorchPolicyController``, without SB3 and
  without its Python class: the JSON lists the layers, so a policy trained by any RL code (e.g.
  ``examples/reinforce.py``) loads wherever a checkpoint path is accepted (the benchmark CLI).
* :func:`checkpoint_meta`, :func:`recorded_backbone` - a checkpoint's JSON header (either format) and the
  backbone directory its training env used (the benchmark evaluates the controller on it).
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
from ahm.agents.sb3_controllers import ALGORITHMS, AlgoSpec, SB3Controller, TorchPolicyController, algo_name
from ahm.backbone.checkpoint import (
    atomic_write_bytes,
    check_finite,
    read_bundle_meta,
    state_dict_for_saving,
    write_bundle_meta,
)
from ahm.backbone.errors import CheckpointError, first_non_finite

__all__ = ["save_controller", "load_controller", "save_mlp_policy", "load_mlp_policy", "read_mlp_policy", "MLPPolicy",
           "checkpoint_meta",
           "checkpoint_files", "recorded_backbone", "CONTROLLER_FORMAT", "MLP_POLICY_FORMAT"]

_FORMAT, _VERSION = "ahm-controller", 1
CONTROLLER_FORMAT = _FORMAT
"""The ``format`` of an SB3 controller checkpoint's JSON (:func:`save_controller`)."""
MLP_POLICY_FORMAT, _MLP_VERSION = "ahm-torch-policy", 1
"""The ``format`` of a plain-torch MLP policy's JSON (:func:`save_mlp_policy`)."""
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


MAX_LAYER_WIDTH, MAX_LAYERS = 2**14, 64
"""Largest ``net_arch`` a controller JSON may ask for: far above any policy here (64-256 wide, 2 layers), small
enough that a corrupted file cannot make the loader allocate gigabytes before the weights are checked."""


def _check_policy_fields(spec: AlgoSpec, policy_kwargs: Mapping[str, Any], hyper: Mapping[str, Any],
                         what: str) -> None:
    """Refuse, naming the field, a ``net_arch`` that is not lists of positive ints within the bounds above, a
    policy keyword the policy class does not take, or a hyperparameter that is not a number."""
    arch = policy_kwargs.get("net_arch")
    if arch is not None:
        nets = arch.items() if isinstance(arch, Mapping) else [("", arch)]
        for key, layers in nets:
            field = f"policy_kwargs.net_arch{'.' + key if key else ''}"
            if (not isinstance(layers, list) or len(layers) > MAX_LAYERS
                    or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_LAYER_WIDTH
                               for w in layers)):
                raise CheckpointError(f"{what}: {field} must be a list of at most {MAX_LAYERS} layer widths, each "
                                      f"an int in [1, {MAX_LAYER_WIDTH}], got {layers!r:.80}; save the controller "
                                      "again")
    policy = spec.cls.policy_aliases.get(spec.policy, spec.policy) if isinstance(spec.policy, str) else spec.policy
    params = inspect.signature(policy.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(policy_kwargs) - set(params))
        if unknown:
            raise CheckpointError(f"{what}: policy_kwargs {unknown} are not arguments of {policy.__name__} (it takes "
                                  f"{sorted(k for k in params if k != 'self')}); save the controller again")
    for key, value in hyper.items():
        if key in _HYPERPARAMETERS and value is not None and not isinstance(value, (int, float)):
            raise CheckpointError(f"{what}: hyperparameters.{key} must be a number, got {type(value).__name__} "
                                  f"{value!r:.60}; save the controller again")


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
    check_finite(weights.items(), f"save_controller({str(path)!r})")  # never save a diverged policy
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
        raise CheckpointError(f"{what}: {_META} is not a saved controller ({err})") from err
    _check_policy_fields(ALGORITHMS[algo], policy_kwargs, hyper, f"{what}: {_META}")
    blob = (directory / _WEIGHTS).read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise ValueError(f"{what}: {_WEIGHTS} is corrupted (its SHA-256 differs from the one "
                         f"recorded in {_META}); save the controller again")
    try:
        weights = load_safetensors_bytes(blob)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{what}: {_WEIGHTS} is corrupted ({err})") from err
    bad = first_non_finite(weights.items())
    if bad is not None:
        raise CheckpointError(f"{what}: tensor {bad[0]!r} has {bad[1]} of {bad[2]} values NaN or infinite (a "
                              "diverged policy was saved); train it again")
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


# ====================================================================== plain-torch MLP policies
_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU,
                                            "sigmoid": nn.Sigmoid, "identity": nn.Identity}
"""Parameter-free layers an MLP policy checkpoint may hold, by the name its JSON uses."""
_MLP_HINT = "write one with ahm.agents.controller_checkpoint.save_mlp_policy"


class MLPPolicy(nn.Module):
    """The policy of an MLP checkpoint: observation ``{key: (b, ...)}`` -> logits ``(b, sum(nvec))``.

    The observation's ``keys`` are flattened and concatenated in order, ``(b, F)``, then go through ``layers``.
    """

    def __init__(self, keys: list[str], layers: nn.Sequential) -> None:
        super().__init__()
        self.keys, self.layers = list(keys), layers

    def forward(self, observation: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.keys if k not in observation]
        if missing:
            raise ValueError(f"the MLP policy reads observation keys {missing}, which this env does not have")
        x = torch.cat([observation[k].reshape(len(observation[k]), -1).float() for k in self.keys], dim=1)  # (b, F)
        first = next((m for m in self.layers if isinstance(m, nn.Linear)), None)
        if first is not None and x.shape[1] != first.in_features:
            raise ValueError(f"the MLP policy expects {first.in_features} observation features, the env gives "
                             f"{x.shape[1]}: evaluate it on an env with the spaces it was trained on")
        return self.layers(x)


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(JSON, weights) of a checkpoint: a directory holds ``controller.json`` and ``controller.safetensors``; a
    file ``X.safetensors`` (or ``X.json``) has its other half beside it."""
    path = Path(path)
    if path.is_dir():
        return path / _META, path / _WEIGHTS
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    return path.with_suffix(".json"), path


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON header of a controller checkpoint of either format (its ``format`` says which)."""
    meta_path, _ = checkpoint_files(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved controller: no {meta_path.name} "
                                f"({_HINT}, or save_mlp_policy for a plain-torch policy)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not a saved controller's JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") not in (_FORMAT, MLP_POLICY_FORMAT):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path} has format {found!r}; a controller checkpoint has format {_FORMAT!r} "
                         f"(save_controller) or {MLP_POLICY_FORMAT!r} (save_mlp_policy)")
    return meta


def recorded_backbone(path: str | Path) -> str | None:
    """The backbone directory recorded in a checkpoint's ``env_spec`` (``env_kwargs.backbone``), or None when it
    records none or only a model object's class name (``"<AHMModel object>"``: not recoverable)."""
    spec = checkpoint_meta(path).get("env_spec") or {}
    backbone = (spec.get("env_kwargs") or {}).get("backbone") if isinstance(spec, Mapping) else None
    if not isinstance(backbone, str) or backbone.startswith("<"):
        return None
    return backbone


def _mlp_layers(module: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name in names:
        sub = module.get_submodule(name) if name else module
        if isinstance(sub, nn.Sequential):
            out += _mlp_layers(module, [f"{name}.{i}" if name else str(i) for i in range(len(sub))])
        else:
            out.append((name, sub))
    return out


def _layer_spec(name: str, layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, nn.Linear):
        return {"type": "linear", "name": name}
    if isinstance(layer, nn.LayerNorm):
        return {"type": "layer_norm", "name": name, "eps": float(layer.eps)}
    kinds = {cls: kind for kind, cls in _ACTIVATIONS.items()}
    if type(layer) in kinds and not (isinstance(layer, nn.GELU) and layer.approximate != "none"):
        return {"type": kinds[type(layer)]}
    raise ValueError(f"layer {name!r} is a {type(layer).__name__}; an MLP policy checkpoint holds nn.Linear, "
                     f"nn.LayerNorm and {[c.__name__ for c in _ACTIVATIONS.values()]} only (for other modules, "
                     "evaluate a TorchPolicyController from Python or name it as module:attr on the command line)")


def save_mlp_policy(path: str | Path, module: nn.Module, layers: list[str], observation_keys: list[str],
                    nvec: Any, name: str | None = None, env_spec: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Save a plain-torch MLP policy so that :func:`load_mlp_policy` (and the benchmark) runs it; returns ``path``.

    The policy's logits are ``layers`` applied in order to the observation's ``observation_keys``, flattened and
    concatenated: ``(b, F) -> (b, sum(nvec))``. Each name in ``layers`` is a submodule of ``module``
    (``module.get_submodule``; an ``nn.Sequential`` stands for its children): ``nn.Linear``, ``nn.LayerNorm`` or a
    parameter-free activation. Heads that do not act (a value head) are left out of ``layers`` but kept in the
    weights file, which is the whole ``module.state_dict()`` (so your own code can rebuild ``module`` from it).

    ``path`` is ``X.safetensors`` (the JSON goes to ``X.json``) or a directory (``controller.safetensors`` and
    ``controller.json``). ``env_spec`` describes the training env as :func:`save_controller`'s does (its
    ``env_kwargs.backbone``, a directory, is the backbone the benchmark evaluates on); ``extra`` is any JSON-able
    data of yours, stored under ``"extra"``.
    """
    specs = [_layer_spec(n, m) for n, m in _mlp_layers(module, list(layers))]
    linear = [m for _, m in _mlp_layers(module, list(layers)) if isinstance(m, nn.Linear)]
    nvec = [int(n) for n in np.asarray(nvec).reshape(-1)]
    if not linear or linear[-1].out_features != sum(nvec):
        raise ValueError(f"the last linear layer of {layers} must output sum(nvec) = {sum(nvec)} logits, got "
                         f"{linear[-1].out_features if linear else 'no linear layer'}")
    state = state_dict_for_saving(module)
    check_finite(state.items(), f"save_mlp_policy({str(path)!r})")  # never save a diverged policy
    blob = save_safetensors_bytes(state)
    try:
        tail = json.loads(json.dumps({"env_spec": dict(env_spec or {}), "extra": dict(extra or {})}, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"env_spec and extra must be JSON-able: {err}") from err
    meta_path, weights_path = checkpoint_files(path)
    if Path(path).suffix not in (".safetensors", ".json"):
        Path(path).mkdir(parents=True, exist_ok=True)
        meta_path, weights_path = checkpoint_files(path)
    atomic_write_bytes(weights_path, blob)
    write_bundle_meta(meta_path, MLP_POLICY_FORMAT, _MLP_VERSION, {
        "name": name or (Path(path).stem if Path(path).suffix else Path(path).name),
        "observation_keys": list(observation_keys), "nvec": nvec, "layers": specs,
        "weights_sha256": hashlib.sha256(blob).hexdigest(), **tail})
    return Path(path)


def read_mlp_policy(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked JSON and the weights of a :func:`save_mlp_policy` checkpoint (the SHA-256 recorded in the JSON
    must match the weights file), for code that rebuilds its own module from them.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupted.
    """
    meta_path, weights_path = checkpoint_files(path)
    what = f"MLP policy checkpoint {str(path)!r}"
    meta = read_bundle_meta(meta_path, MLP_POLICY_FORMAT, _MLP_VERSION, what, "a saved MLP policy", _MLP_HINT)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{what} has no {weights_path.name} ({_MLP_HINT})")
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ValueError(f"{what}: {weights_path.name} is corrupted (its SHA-256 differs from the one recorded in "
                         f"{meta_path.name}); save the policy again")
    weights = load_safetensors_bytes(blob)
    bad = first_non_finite(weights.items())
    if bad is not None:
        raise CheckpointError(f"{what}: tensor {bad[0]!r} has {bad[1]} of {bad[2]} values NaN or infinite (a "
                              "diverged policy was saved); train it again")
    return meta, weights


def load_mlp_policy(path: str | Path, name: str | None = None, device: str = "cpu") -> TorchPolicyController:
    """The :class:`~ahm.agents.sb3_controllers.TorchPolicyController` of a :func:`save_mlp_policy` checkpoint
    (masked argmax per component); the network is rebuilt from the JSON's layer list, no code is loaded.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupted or the weights do not fit the layers.
    """
    meta, weights = read_mlp_policy(path)
    meta_path, _ = checkpoint_files(path)
    what = f"MLP policy checkpoint {str(path)!r}"
    modules: list[nn.Module] = []
    width = None
    try:
        for spec in meta["layers"]:
            kind = spec["type"]
            if kind == "linear":
                w, b = weights[f"{spec['name']}.weight"], weights.get(f"{spec['name']}.bias")
                if width is not None and w.shape[1] != width:
                    raise ValueError(f"layer {spec['name']!r} takes {w.shape[1]} inputs after a layer of {width}")
                layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                layer.load_state_dict({"weight": w, **({"bias": b} if b is not None else {})})
                width = w.shape[0]
            elif kind == "layer_norm":
                w, b = weights[f"{spec['name']}.weight"], weights[f"{spec['name']}.bias"]
                layer = nn.LayerNorm(w.shape[0], eps=float(spec["eps"]))
                layer.load_state_dict({"weight": w, "bias": b})
            elif kind in _ACTIVATIONS:
                layer = _ACTIVATIONS[kind]()
            else:
                raise ValueError(f"unknown layer type {kind!r}")
            modules.append(layer)
        nvec = [int(n) for n in meta["nvec"]]
        if width != sum(nvec):
            raise ValueError(f"the layers output {width} logits, nvec {nvec} needs {sum(nvec)}")
        policy = MLPPolicy(list(meta["observation_keys"]), nn.Sequential(*modules)).to(device).eval()
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{what}: the weights do not fit the layers in {meta_path.name} ({err!r})") from err
    return TorchPolicyController(policy, nvec=nvec, name=name or str(meta.get("name") or Path(path).stem))
