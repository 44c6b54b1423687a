"""Memory controllers and their benchmark.

Owns (ARCHITECTURE.md): the ``Controller`` protocol, heuristic controllers
(FIFO, LRU, random, surprise, oracle), Stable-Baselines3 adapters and training,
the bridge for custom RL algorithms, and the benchmark that compares them.
Depends on :mod:`ahm.envs` and :mod:`ahm.rewards`. Filled by the controllers issue.
"""
