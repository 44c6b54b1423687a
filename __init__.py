"""AHM-SSM: Adaptive Hierarchical Memory for State Space Models.

Subpackages (ARCHITECTURE.md, "Layout"); dependencies point one way:
``kernels`` <- ``backbone`` <- ``envs`` / ``rewards`` <- ``agents`` <- scripts.

* :mod:`ahm.kernels`  - compute kernels (selective scan, memory retrieval)
* :mod:`ahm.backbone` - the Mamba-style selective SSM and, later, the hierarchical memory
* :mod:`ahm.envs`     - task streams and the ``AHMMemory-v0`` Gymnasium environments
* :mod:`ahm.rewards`  - reward terms and how they combine
* :mod:`ahm.agents`   - memory controllers and their benchmark
"""

__version__ = "0.1.0"
