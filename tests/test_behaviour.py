"""``ahm.agents.behaviour``: operations by kind of chunk and the memory timeline, on small episodes whose answer is
known by construction (a controller that writes exactly the fact chunks, and ``none``).

The envs are AHMMemory-DecoyBind-v0's ``test_kwargs`` (64 chunks of 64 tokens: 8 targets, 8 decoys, 8 noise
bursts, 8 queries) on the random backbone: what is counted does not depend on the backbone's weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from ahm.agents.behaviour import (
    CHUNK_KINDS,
    chunk_kinds,
    memory_timeline,
    ops_by_chunk_kind,
    ops_table,
    plot_memory_timeline,
)
from ahm.agents.evaluation import evaluation_stream_seeds
from ahm.agents.heuristics import choose_write, component_masks
from ahm.envs import ENV_SPECS
from ahm.envs.streams import make_task

torch.set_num_threads(1)

ENV_ID = "AHMMemory-DecoyBind-v0"
KW = {**ENV_SPECS[ENV_ID].test_kwargs, "backbone": "random"}
SEQ = KW.pop("seq_len")
SEEDS = (0, 1)


class FactWriter:
    """Writes every chunk at which a fact ends (ground truth: target, decoy or stale), into a free slot else the
    oldest, moving the displaced entry to LTM; never reads or forgets."""

    name = "fact_writer"

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        occupied = observation["wm_occupied"] > 0.5
        b, k = occupied.shape
        fact = np.asarray(info["ground_truth"]["fact_id"]) >= 0
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = choose_write(occupied, observation["wm_age"].astype(np.float64), component_masks(None, b, k)[0],
                                 fact)
        out[:, 1] = (out[:, 0] > 0).astype(np.int64)
        return out


def _streams(seeds=SEEDS):
    return [make_task(ENV_SPECS[ENV_ID].task, SEQ, KW["chunk_size"], s) for s in
            (x for seed in seeds for x in evaluation_stream_seeds(seed, 1))]


def test_chunk_kinds_count_the_streams_annotations():
    for stream in _streams():
        kinds = chunk_kinds(stream)
        count = {k: int((kinds == i).sum()) for i, k in enumerate(CHUNK_KINDS)}
        assert count["target"] == stream.num_pairs and count["decoy"] == sum(f.kind == "decoy" for f in stream.facts)
        assert count["query"] == stream.num_queries and count["noise"] == len(stream.noise_chunks) > 0
        assert count["stale"] == 0 and sum(count.values()) == stream.n_chunks


def test_fact_writer_writes_facts_only_and_none_does_nothing():
    fact = ops_by_chunk_kind(FactWriter(), ENV_ID, SEQ, SEEDS, **KW)
    none = ops_by_chunk_kind("none", ENV_ID, SEQ, SEEDS, **KW)
    streams = _streams()
    steps = sum(s.last_query_chunk + 1 for s in streams)  # the episode terminates after its last query's chunk
    chunk = KW["chunk_size"]
    for result in (fact, none):
        assert list(result) == list(CHUNK_KINDS)
        assert sum(r.chunks for r in result.values()) == steps
        assert sum(r.tokens for r in result.values()) == steps * chunk
    # `none`: zero everywhere.
    assert all(getattr(r, op) == 0 for r in none.values() for op in ("writes", "moves_to_ltm", "forgets",
                                                                     "retrievals"))
    # The fact writer: every fact chunk written once (1000 / C writes per 1K tokens), nothing else.
    for kind in ("target", "decoy"):
        assert fact[kind].chunks > 0 and fact[kind].writes == fact[kind].chunks
        assert fact[kind].per_1k("writes") == pytest.approx(1000 / chunk)
        assert fact[kind].per_chunk("writes") == 1.0
    for kind in ("query", "noise", "filler"):
        assert fact[kind].chunks > 0 and fact[kind].writes == 0 and fact[kind].per_1k("writes") == 0
    assert all(r.forgets == 0 and r.retrievals == 0 for r in fact.values())
    # Each episode's writes past the K = 8 free slots displace an entry, which moves to the LTM.
    k = 8
    assert sum(r.moves_to_ltm for r in fact.values()) == sum(max(0, len(s.facts) - k) for s in streams)
    assert np.isnan(fact["stale"].per_1k("writes"))  # decoy MQAR has no stale facts

    table = ops_table({"fact_writer": fact, "none": none})
    assert "| fact_writer | target |" in table and "| none | filler |" in table
    assert "| stale |" not in table  # kinds without a chunk are left out
    assert f"| fact_writer | decoy | {fact['decoy'].chunks} | 100% | {1000 / chunk:.2f} |" in table


def test_memory_timeline_holds_what_was_written():
    # An LTM larger than the facts: nothing is evicted, so after step t the memory holds exactly the facts of
    # chunks 0..t, by kind.
    tl = memory_timeline(FactWriter(), ENV_ID, SEQ, seed=0, **{**KW, "ltm_capacity": 64})
    stream = _streams((0,))[0]
    assert tl.stream_seed == evaluation_stream_seeds(0, 1)[0]
    assert tl.wm.shape == (stream.last_query_chunk + 1, 8) and tl.ltm.shape[1] == 64
    for kind in ("target", "decoy"):
        written = np.cumsum(tl.chunk_kinds == CHUNK_KINDS.index(kind))[: len(tl.wm)]
        assert np.array_equal(tl.held(kind), written)
    assert all(not tl.held(k).any() for k in ("query", "noise", "filler", "stale"))
    # An LTM of 4 entries, less than the 16 facts: the memory fills up to K + M entries and stays full of facts.
    small = memory_timeline(FactWriter(), ENV_ID, SEQ, seed=0, **{**KW, "ltm_capacity": 4})
    entries = (small.wm >= 0).sum(1) + (small.ltm >= 0).sum(1)
    assert entries.max() == entries[-1] == 8 + 4 < len(stream.facts)
    assert small.held("target")[-1] + small.held("decoy")[-1] == 8 + 4


def test_plot_memory_timeline_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    tl = memory_timeline(FactWriter(), ENV_ID, SEQ, seed=0, **KW)
    path = plot_memory_timeline([("fact_writer", tl), ("again", tl)], tmp_path / "timeline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        plot_memory_timeline([], tmp_path / "none.png")
