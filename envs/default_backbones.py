"""The environments' default backbones: the task-trained checkpoints the package ships, else a small random model.

:func:`resolve_backbone` turns the env's ``backbone`` argument into the frozen
:class:`~ahm.backbone.AHMModel` it runs (see :class:`~ahm.envs.memory_env.AHMMemoryEnv`,
"Description"): the task's shipped checkpoint (:func:`shipped_backbone_path`), the
random-initialised :func:`random_backbone` of shape :data:`DEFAULT_BACKBONE`, a model,
or a checkpoint directory (:func:`~ahm.backbone.checkpoint.load_ahm_checkpoint`).
:func:`keep_torch_threads` wraps the env's calls of the backbone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ahm.backbone import AHMConfig, AHMModel, MambaConfig
from ahm.backbone.checkpoint import AHM_META, AHM_WEIGHTS, load_ahm_checkpoint, load_ahm_config
from ahm.envs.streams import TaskStream

__all__ = ["BackboneShape", "DEFAULT_BACKBONE", "random_backbone", "SHIPPED_BACKBONES", "SHIPPED_FOLDER",
           "shipped_backbone_path", "resolve_backbone", "keep_torch_threads"]


@dataclass(frozen=True)
class BackboneShape:
    """Sizes of the random-initialised default backbone (vocabulary comes from the task)."""

    d_model: int = 32
    n_layer: int = 2
    d_state: int = 8
    key_dim: int = 16
    seed: int = 0
    """Torch seed of the initialisation: every default backbone of a task is the same model."""


DEFAULT_BACKBONE = BackboneShape()
"""The backbone of tasks without a shipped checkpoint (and of ``backbone="random"``): a small **random** model
(d_model 32, 2 layers, d_state 8, keys of 16, values of 32: F = 48 state features). Its answers are at chance
level; it exists so the environment, its rewards and the controllers run end to end."""


def random_backbone(vocab_size: int, ltm_codec: str = "int8", integration: str = "readout",
                    shape: BackboneShape = DEFAULT_BACKBONE) -> AHMModel:
    """The default backbone: a small random-initialised :class:`AHMModel` in eval mode, deterministic in its seed.

    Unlike a fresh ``AHMModel``, whose integration projection starts at zero (so memory
    has no effect until trained), the integration weights are random too, so that
    retrieval changes the readout and every reward term is exercised.
    """
    config = AHMConfig(MambaConfig(vocab_size=vocab_size, d_model=shape.d_model, n_layer=shape.n_layer,
                                   d_state=shape.d_state), key_dim=shape.key_dim, ltm_codec=ltm_codec,
                       integration=integration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = AHMModel(config)
        with torch.no_grad():
            model.integration.proj.weight.normal_(0.0, 1.0 / math.sqrt(model.integration.proj.in_features))
    return model.eval().requires_grad_(False)


SHIPPED_BACKBONES = Path(__file__).parent / "checkpoints"
"""Task-trained default backbones shipped with the package, one folder per task family (``<task>/``, or the
shared folder :data:`SHIPPED_FOLDER` names), each made by the ``train_lm.py`` command in its ``ahm_model.json``
(``extra.command``) and in the README."""

SHIPPED_FOLDER = {"mqar": "recall", "forget": "recall", "decoy": "recall"}
"""Task families that share one shipped backbone: the three 8,192-token key-value recall tasks have one vocabulary
layout and one fact format up to the decoy's kind marker, and one model is trained on a mix of the three."""


def shipped_backbone_path(task: str) -> Path | None:
    """The folder of the task-trained default backbone for ``task``, or None if the package ships none."""
    path = SHIPPED_BACKBONES / SHIPPED_FOLDER.get(task, task)
    return path if (path / AHM_META).is_file() and (path / AHM_WEIGHTS).is_file() else None


def resolve_backbone(backbone: AHMModel | str | Path | None, vocab_size: int, ltm_codec: str | None,
                     integration: str | None, calibration: TaskStream, task: str = "") -> AHMModel:
    """The env's model from its ``backbone`` argument; checks it against the task and the memory arguments.

    None: the task's shipped task-trained backbone (:func:`shipped_backbone_path`) when there is one and
    ``ltm_codec`` / ``integration`` are None or equal its own; otherwise (or with ``"random"``) the
    random-initialised :func:`random_backbone`.
    """
    if backbone is None:
        shipped = shipped_backbone_path(task)
        if shipped is not None:
            saved = load_ahm_config(shipped)
            if ltm_codec in (None, saved.ltm_codec) and integration in (None, saved.integration):
                backbone = shipped
    if backbone is None or backbone == "random":
        model = random_backbone(vocab_size, ltm_codec or "int8", integration or "readout")
        if not (model.key_codec.is_fitted and model.value_codec.is_fitted):  # pq: fit on a sample of the task
            sample = torch.from_numpy(calibration.tokens(0, min(calibration.seq_len, 8192)))[None]
            with torch.no_grad():
                model.calibrate_codecs(sample, torch.Generator().manual_seed(0))
        return model
    if isinstance(backbone, (str, Path)):
        model, _ = load_ahm_checkpoint(backbone)
    elif isinstance(backbone, AHMModel):
        model = backbone
    else:
        raise ValueError(f"backbone must be None (the random default), an AHMModel, or a checkpoint directory; "
                         f"got {type(backbone).__name__}")
    c = model.config
    if c.backbone.vocab_size < vocab_size:
        raise ValueError(f"backbone vocabulary {c.backbone.vocab_size} is smaller than the task's {vocab_size}")
    for name, want, have in (("ltm_codec", ltm_codec, c.ltm_codec), ("integration", integration, c.integration)):
        if want is not None and want != have:
            raise ValueError(f"{name}={want!r} but the backbone was built with {have!r}; leave {name} as None to use "
                             "the backbone's, or pass a backbone built with it")
    if not (model.key_codec.is_fitted and model.value_codec.is_fitted):
        raise ValueError("the backbone's LTM codecs are not fitted; call model.calibrate_codecs(tokens) first")
    return model


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's thread count after backbone calls.

    The numba scan kernel (ahm.kernels.scan_cpu) sets numba's thread count and back;
    with the OpenMP threading layer that also resets torch's, undoing a caller's
    ``torch.set_num_threads(1)`` (measured: memory steps of 64 episodes then take
    ~100 ms instead of ~2 ms on a loaded 2-core machine).
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
