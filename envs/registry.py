"""The one registry of environment ids: it drives Gymnasium registration, the tests and the README's list.

:data:`ENV_SPECS` maps each id to an :class:`EnvEntry` (the task, the registered
keyword arguments on top of :class:`~ahm.envs.memory_env.AHMMemoryEnv`'s defaults,
a one-line description, and small overrides that make the env fast for tests).
:func:`register_envs` registers every id with its single-env ``entry_point`` and
its native ``vector_entry_point``; ``tests/test_envs.py`` parametrises over the
dict; :func:`env_list_markdown` renders the README's list. Entry points are
strings, so importing this module imports neither torch nor the environments
(nor gymnasium, until :func:`register_envs` runs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["EnvEntry", "ENV_SPECS", "BINDING_LTM_CAPACITY", "ENTRY_POINT", "VECTOR_ENTRY_POINT", "register_envs",
           "env_list_markdown"]

ENTRY_POINT = "ahm.envs.memory_env:AHMMemoryEnv"
VECTOR_ENTRY_POINT = "ahm.envs.vector_env:AHMMemoryVectorEnv"


class EnvEntry(NamedTuple):
    """One registered environment id."""

    task: str
    """The task family (a key of ``ahm.envs.TASKS``)."""
    description: str
    """One line for the README's list."""
    kwargs: dict[str, Any]
    """Registered keyword arguments (on top of ``AHMMemoryEnv``'s defaults: 100K tokens, chunks of 256, 8 WM slots,
    512 LTM entries); ``gymnasium.make`` overrides any of them."""
    test_kwargs: dict[str, Any]
    """Overrides that make an episode small and fast for the test suite (a few thousand tokens)."""


_SMALL = {"seq_len": 2048, "chunk_size": 64}

BINDING_LTM_CAPACITY = 64
"""LTM entries of the ``*Bind`` ids. At 100K tokens (chunk 256: ~400 chunks) a policy that writes every chunk
overflows 64 entries (+ 8 WM slots) about 6x, and the ~100 filler chunks between the last fact and the first query
alone push every fact out of such a memory; the ~50 target facts still fit, so the oracle keeps its accuracy
(0.93 on Decoy, 0.90 on Forget) while every hand-written rule falls to 0.50 (``update``, Decoy) or below 0.10
(Forget). Measured on the benchmark's evaluation streams and fixed before any controller was trained
(docs/behaviour.md, "Tasks where memory binds")."""

ENV_SPECS: dict[str, EnvEntry] = {
    "AHMMemory-v0": EnvEntry(
        "passkey", "the default: needle retrieval (passkey) at 100K tokens with a working memory of 8 slots",
        {"task": "passkey"}, dict(_SMALL)),
    "AHMMemory-Passkey-v0": EnvEntry(
        "passkey", "passkey / single needle (RULER S-NIAH), byte-level, needle at mid depth",
        {"task": "passkey"}, dict(_SMALL)),
    "AHMMemory-MQAR-v0": EnvEntry(
        "mqar", "multi-query associative recall (Zoology): key-value facts, then a query per key",
        {"task": "mqar"}, dict(_SMALL)),
    "AHMMemory-Forget-v0": EnvEntry(
        "forget", "associative recall with keys re-assigned later: stale entries must be forgotten",
        {"task": "forget"}, dict(_SMALL)),
    "AHMMemory-Copy-v0": EnvEntry(
        "copy", "selective copying (Mamba paper): data tokens in noise, reproduced in order after markers",
        {"task": "copy"}, dict(_SMALL)),
    "AHMMemory-Decoy-v0": EnvEntry(
        "decoy", "associative recall with decoy facts and noise bursts: store selectively",
        {"task": "decoy"}, {"seq_len": 4096, "chunk_size": 64}),
    "AHMMemory-Text-v0": EnvEntry(
        "text", "byte-level text (the built-in corpus): next-byte prediction at every boundary, no queries",
        {"task": "text"}, {**_SMALL, "task_kwargs": {"max_documents": 20}}),
    # Memory that binds: the tasks of Decoy / Forget with the LTM cut from 512 entries to BINDING_LTM_CAPACITY.
    "AHMMemory-DecoyBind-v0": EnvEntry(
        "decoy", "decoy where memory binds: at 100K tokens writing every chunk overflows the LTM ~6x; targets fit",
        {"task": "decoy", "ltm_capacity": BINDING_LTM_CAPACITY},
        {"seq_len": 4096, "chunk_size": 64, "ltm_capacity": 8}),
    "AHMMemory-ForgetBind-v0": EnvEntry(
        "forget", "forget where memory binds: at 100K tokens writing every chunk overflows the LTM ~6x; targets fit",
        {"task": "forget", "ltm_capacity": BINDING_LTM_CAPACITY}, {**_SMALL, "ltm_capacity": 8}),
}
"""Environment id -> :class:`EnvEntry`; the first is the default, ``AHMMemory-v0``."""


def register_envs() -> None:
    """Register every id of :data:`ENV_SPECS` with Gymnasium (idempotent)."""
    # Imported here: `import ahm` registers through this function only once gymnasium is loaded (see ahm/__init__).
    from gymnasium.envs.registration import register, registry

    for env_id, entry in ENV_SPECS.items():
        if env_id in registry:
            continue
        register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                 kwargs=dict(entry.kwargs))


def env_list_markdown() -> str:
    """The README's list of environment ids, one markdown bullet per id, from :data:`ENV_SPECS`."""
    lines = []
    for env_id, entry in ENV_SPECS.items():
        extra = ", ".join(f"{k}={v!r}" for k, v in entry.kwargs.items() if k != "task")
        lines.append(f"* `{env_id}` (task `{entry.task}`{', ' + extra if extra else ''}): {entry.description}")
    return "\n".join(lines)
