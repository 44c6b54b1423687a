"""What the controller `make run` learned does differently: operations by kind of chunk and one episode's memory.

Usage (after `python train_rl.py --out-dir RUN`; RUN/round_1 holds the final backbone and controller)::

    python benchmarks/learned_behaviour.py RUN 102400 docs/images/memory_timeline_passkey.png

prints the operations per 1K tokens of the learned controller, `update` and `write_all` on the benchmark's
streams of seeds 0-2 (``ahm.agents.behaviour.ops_by_chunk_kind``) and draws the learned controller's memory over
the first episode of seed 0 above `update`'s.
"""

import sys

import torch

from ahm.agents import make_controller
from ahm.agents.behaviour import memory_timeline, ops_by_chunk_kind, ops_table, plot_memory_timeline

torch.set_num_threads(1)
run, L, png = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bb = f"{run}/round_1/backbone"
learned = make_controller(f"{run}/round_1/controller", name="fast_ppo (learned)")
res = {name: ops_by_chunk_kind(c, "AHMMemory-v0", L, seeds=[0, 1, 2], backbone=bb)
       for name, c in (("fast_ppo (learned)", learned), ("update", "update"), ("write_all", "write_all"))}
print(ops_table(res))
tl = [(n, memory_timeline(c, "AHMMemory-v0", L, seed=0, backbone=bb))
      for n, c in (("fast_ppo (learned)", learned), ("update", "update"))]
plot_memory_timeline(tl, png)
print("wrote", png)
