"""Reward terms for the memory controller and how they combine.

Owns (ARCHITECTURE.md): task outcome, retrieval gain, store-then-use, memory
cost and information gain, each a small weighted term logged separately.
Depends on :mod:`ahm.backbone` only. Filled by the environment-suite issue.
"""
