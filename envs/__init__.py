"""Task streams and the ``AHMMemory-v0`` Gymnasium environments.

Owns (ARCHITECTURE.md): task streams (passkey, associative recall / MQAR,
selective copying, forgetting, text), ``AHMMemoryEnv`` and its native vector
env, and the registration of ``AHMMemory-v0`` and its variants. Depends on
:mod:`ahm.backbone` and :mod:`ahm.rewards`; nothing below it knows about
Gymnasium. Filled by the environment-suite issue.
"""
