"""Save and load a :class:`HierarchicalMemory`: safetensors for tensors, JSON for the config.

A saved memory is a directory with ``memory.safetensors`` (every state tensor of
the working and long-term memory, and the parameters / buffers of both codecs,
so the stored codes can always be decoded) and ``memory.json`` (format version,
batch size, :class:`MemoryConfig`, caller's ``extra``): a bundle of
:mod:`ahm.backbone.checkpoint`, whose header that module writes and checks. Both files
are written atomically (:func:`ahm.backbone.checkpoint.atomic_write_bytes`); loading never
executes code. A round trip reproduces every tensor exactly. The faiss index of
approximate search is a cache and is rebuilt after loading.

Tensor names: ``wm.<name>`` (:attr:`WorkingMemory.TENSORS`), ``ltm.<name>``
(:attr:`LongTermMemory.TENSORS`), ``ltm.key_codes.<field>``,
``ltm.value_codes.<field>``, ``codec.key.<param>``, ``codec.value.<param>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from .checkpoint import atomic_write_bytes, read_bundle_meta, read_tensors, write_bundle_meta
from .codecs import VectorCodec, make_codec
from .hierarchical_memory import HierarchicalMemory, MemoryConfig

__all__ = ["memory_tensors", "save_memory", "load_memory", "MEMORY_TENSORS", "MEMORY_META"]

MEMORY_TENSORS = "memory.safetensors"
MEMORY_META = "memory.json"
_FORMAT, _VERSION = "ahm-hierarchical-memory", 1
_HINT = "save one with save_memory"


def memory_tensors(memory: HierarchicalMemory) -> dict[str, Tensor]:
    """Every tensor of the memory's state, by its saved name (detached, contiguous, on the CPU)."""
    out: dict[str, Tensor] = {}
    for name in memory.wm.TENSORS:
        out[f"wm.{name}"] = getattr(memory.wm, name)
    ltm = memory.ltm
    for name in ltm.TENSORS:
        out[f"ltm.{name}"] = getattr(ltm, name)
    for f, t in zip(ltm.key_codec.fields, ltm.key_codes):
        out[f"ltm.key_codes.{f.name}"] = t
    for f, t in zip(ltm.value_codec.fields, ltm.value_codes):
        out[f"ltm.value_codes.{f.name}"] = t
    for which, codec in (("key", ltm.key_codec), ("value", ltm.value_codec)):
        for name, t in codec.state_dict().items():
            out[f"codec.{which}.{name}"] = t
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_memory(directory: str | Path, memory: HierarchicalMemory, extra: dict[str, Any] | None = None) -> None:
    """Save the whole memory state (and ``extra`` JSON metadata) into ``directory``."""
    directory = Path(directory)
    atomic_write_bytes(directory / MEMORY_TENSORS, save_safetensors(memory_tensors(memory)))
    write_bundle_meta(directory / MEMORY_META, _FORMAT, _VERSION,
                      {"batch": memory.batch, "config": memory.config.to_dict(), "extra": extra or {}})


def _codec_from(saved: dict[str, Tensor], which: str, name: str, dim: int, options, given: VectorCodec | None,
                where: str) -> VectorCodec:
    prefix = f"codec.{which}."
    state = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    if given is None:
        codec = make_codec(name, dim, options)
        try:
            codec.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"memory {where}: the saved {which} codec does not match its config ({err})") from err
        return codec
    mine = given.state_dict()
    if given.name != name or given.dim != dim or set(mine) != set(state) or not all(
            torch.equal(mine[k].detach().cpu(), state[k]) for k in state):
        raise ValueError(
            f"memory {where}: it was encoded with other {which}-codec parameters than the codec passed in; "
            "load the model checkpoint saved with this memory, or load the memory without codecs"
        )
    return given


def load_memory(directory: str | Path, key_codec: VectorCodec | None = None, value_codec: VectorCodec | None = None,
                device: torch.device | str = "cpu") -> tuple[HierarchicalMemory, dict[str, Any]]:
    """Load a memory saved by :func:`save_memory`; returns it and the saved ``extra``.

    Args:
        key_codec, value_codec: codecs to share (e.g. an :class:`AHMModel`'s); they must hold the
            saved parameters exactly. None builds new codecs from the saved parameters.
        device: where the memory lives.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupted, or does not match
        its config or the given codecs.
    """
    directory = Path(directory)
    where = repr(str(directory))
    for name in (MEMORY_META, MEMORY_TENSORS):  # both files first: a half-copied memory says what it lacks
        if not (directory / name).is_file():
            raise FileNotFoundError(f"memory {where} has no {name}")
    what, not_a = f"memory {where}", "a saved AHM memory"
    meta = read_bundle_meta(directory / MEMORY_META, _FORMAT, _VERSION, what, not_a, _HINT)
    try:
        config, batch = MemoryConfig.from_dict(meta["config"]), int(meta["batch"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{what}: {MEMORY_META} is not {not_a} ({err})") from err
    saved = read_tensors(directory / MEMORY_TENSORS, what, _HINT)
    ltm_cfg = config.ltm
    key_codec = _codec_from(saved, "key", ltm_cfg.codec, ltm_cfg.key_dim, ltm_cfg.codec_options, key_codec, where)
    value_codec = _codec_from(saved, "value", ltm_cfg.codec, ltm_cfg.value_dim, ltm_cfg.codec_options, value_codec,
                              where)
    memory = HierarchicalMemory(batch, config, key_codec, value_codec, device=device)
    expected = memory_tensors(memory)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"memory {where} does not match its config: missing {missing}, unexpected {unexpected}")
    for name, want in expected.items():
        got = saved[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"memory {where}: tensor {name} is {got.dtype} {tuple(got.shape)}, the config needs "
                             f"{want.dtype} {tuple(want.shape)}")
    for name in memory.wm.TENSORS:
        setattr(memory.wm, name, saved[f"wm.{name}"].to(device))
    ltm = memory.ltm
    for name in ltm.TENSORS:
        setattr(ltm, name, saved[f"ltm.{name}"].to(device))
    ltm.key_codes = tuple(saved[f"ltm.key_codes.{f.name}"].to(device) for f in key_codec.fields)
    ltm.value_codes = tuple(saved[f"ltm.value_codes.{f.name}"].to(device) for f in value_codec.fields)
    ltm.rebuild_caches()
    return memory, meta.get("extra", {})
