"""ahm.backbone.working_memory: reads against brute force, bookkeeping invariants, errors, gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.backbone import WorkingMemory
from ahm.kernels.retrieval import topk_similarity_ref

B, K, DK, DV = 3, 4, 3, 2


def random_memory(seed: int, b: int = 4, k: int = 6, dk: int = 5, dv: int = 3) -> WorkingMemory:
    g = torch.Generator().manual_seed(seed)
    wm = WorkingMemory(b, k, dk, dv)
    for _ in range(2 * k):
        slot = torch.randint(-1, k, (b,), generator=g)
        wm.write(slot, torch.randn(b, dk, generator=g), torch.randn(b, dv, generator=g))
    # Every sequence holds at least one entry.
    wm.write(torch.where(wm.occupied.any(1), -1, 0), torch.randn(b, dk, generator=g), torch.randn(b, dv, generator=g))
    return wm


@pytest.mark.parametrize("seed", range(5))
def test_top1_read_equals_brute_force(seed):
    wm = random_memory(seed)
    q = torch.randn(wm.batch, wm.key_dim, generator=torch.Generator().manual_seed(100 + seed))
    _, ref = topk_similarity_ref(q[:, None], wm.keys, 1, wm.occupied)  # (b, 1, 1)
    read = wm.read(q, mode="top1")
    assert torch.equal(read.slot, ref[:, 0, 0])
    assert torch.equal(read.value, wm.values[torch.arange(wm.batch), ref[:, 0, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_soft_read_is_softmax_attention_over_occupied_slots(seed):
    wm = random_memory(seed)
    q = torch.randn(wm.batch, wm.key_dim, generator=torch.Generator().manual_seed(seed))
    read = wm.read(q, mode="soft", inv_temperature=2.5)
    logits = (torch.einsum("bkd,bd->bk", wm.keys, q) * 2.5).masked_fill(~wm.occupied, float("-inf"))
    weights = torch.softmax(logits, 1)
    torch.testing.assert_close(read.weights, weights)
    torch.testing.assert_close(read.value, torch.einsum("bk,bkd->bd", weights, wm.values))
    assert read.weights[~wm.occupied].eq(0).all()


def test_inactive_sequences_read_nothing_and_keep_their_bookkeeping():
    wm = random_memory(0)
    uses = wm.uses.clone()
    active = torch.tensor([True, False, True, False])
    read = wm.read(torch.randn(4, 5), mode="soft", active=active)
    assert read.value[~active].eq(0).all() and read.weights[~active].eq(0).all()
    assert read.slot[~active].eq(-1).all()
    assert torch.equal(wm.uses[~active], uses[~active])
    assert torch.equal(wm.uses[active].sum(1), uses[active].sum(1) + 1)


# ---------------------------------------------------------------- invariants against a reference model
class RefWM:
    """Plain-Python working memory of one sequence: slot -> [key, value, write_step, uses, last_read]."""

    def __init__(self) -> None:
        self.slots: dict[int, list] = {}
        self.clock = 0


def check_against(wm: WorkingMemory, refs: list[RefWM]) -> None:
    assert wm.count.le(K).all() and wm.age.ge(0).all()
    for i, ref in enumerate(refs):
        assert int(wm.clock[i]) == ref.clock
        for s in range(K):
            if s in ref.slots:
                key, value, ws, uses, last = ref.slots[s]
                assert bool(wm.occupied[i, s])
                assert wm.keys[i, s].tolist() == key and wm.values[i, s].tolist() == value
                assert (int(wm.write_step[i, s]), int(wm.uses[i, s]), int(wm.last_read[i, s])) == (ws, uses, last)
                assert int(wm.age[i, s]) == ref.clock - ws
            else:  # an empty slot holds nothing and has reset bookkeeping
                assert not bool(wm.occupied[i, s])
                assert wm.keys[i, s].eq(0).all() and wm.values[i, s].eq(0).all()
                assert (int(wm.write_step[i, s]), int(wm.uses[i, s]), int(wm.last_read[i, s])) == (-1, 0, -1)
                assert int(wm.age[i, s]) == 0


OP = st.tuples(st.sampled_from(["write", "forget", "evict", "read", "tick"]),
               st.lists(st.integers(-1, K - 1), min_size=B, max_size=B),
               st.lists(st.integers(-4, 4), min_size=DK + DV, max_size=DK + DV))


@given(ops=st.lists(OP, min_size=20, max_size=80))
@settings(max_examples=100)
def test_bookkeeping_matches_a_reference_under_random_operations(ops):
    """About 4,000 batched operations in all (100 examples, 20 to 80 ops each, on 3 sequences)."""
    wm, refs = WorkingMemory(B, K, DK, DV), [RefWM() for _ in range(B)]
    for kind, slots, numbers in ops:
        slot = torch.tensor(slots)
        key = torch.tensor([[float(v + i) for v in numbers[:DK]] for i in range(B)])
        value = torch.tensor([[float(v - i) for v in numbers[DK:]] for i in range(B)])
        if kind == "write":
            wm.write(slot, key, value)
            for i, s in enumerate(slots):
                if s >= 0:
                    refs[i].slots[s] = [key[i].tolist(), value[i].tolist(), refs[i].clock, 0, -1]
        elif kind in ("forget", "evict"):
            # Name only occupied slots (naming an empty one is an error, tested below).
            slot = torch.tensor([s if s in refs[i].slots else -1 for i, s in enumerate(slots)])
            if kind == "forget":
                wm.forget(slot)
            else:
                entry = wm.evict(slot)
            for i, s in enumerate(slot.tolist()):
                if s < 0:
                    continue
                key_s, value_s, ws, uses, _ = refs[i].slots.pop(s)
                if kind == "evict":
                    assert bool(entry.valid[i]) and entry.key[i].tolist() == key_s
                    assert entry.value[i].tolist() == value_s and (int(entry.write_step[i]), int(entry.uses[i])) == (
                        ws, uses)
            if kind == "evict":
                assert torch.equal(entry.valid, slot >= 0)
        elif kind == "read":
            active = torch.tensor([bool(r.slots) and s >= 0 for r, s in zip(refs, slots)])
            q = key
            read = wm.read(q, mode="top1", active=active)
            for i, ref in enumerate(refs):
                if not bool(active[i]):
                    assert int(read.slot[i]) == -1
                    continue
                scores = {s: sum(a * b for a, b in zip(e[0], q[i].tolist())) for s, e in ref.slots.items()}
                best = max(scores.values())
                assert scores[int(read.slot[i])] == best  # ties may pick any best slot
                ref.slots[int(read.slot[i])][3] += 1
                ref.slots[int(read.slot[i])][4] = ref.clock
        else:
            wm.tick()
            for ref in refs:
                ref.clock += 1
        check_against(wm, refs)


# ---------------------------------------------------------------- errors, gradients, accounting
def test_invalid_operations_raise_clear_errors():
    wm = WorkingMemory(2, 3, 4, 5)
    with pytest.raises(IndexError, match="out of range for a working memory with 3 slots"):
        wm.write(torch.tensor([3, 0]), torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(IndexError, match="out of range"):
        wm.write(torch.tensor([-2, 0]), torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="empty working memory"):
        wm.read(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="are empty"):
        wm.forget(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="are empty"):
        wm.evict(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        wm.write(torch.tensor([0, 0]), torch.zeros(2, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="int64"):
        wm.write(torch.tensor([0.0, 1.0]), torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mode"):
        wm.read(torch.zeros(2, 4), mode="best")
    assert not wm.occupied.any()  # nothing was written by the failed calls


def test_gradients_flow_from_a_read_to_what_was_written():
    wm = WorkingMemory(1, 2, 3, 2)
    key = torch.randn(1, 3, requires_grad=True)
    value = torch.randn(1, 2, requires_grad=True)
    wm.write(torch.tensor([1]), key, value)
    wm.write(torch.tensor([0]), torch.randn(1, 3), torch.randn(1, 2))
    query = torch.randn(1, 3, requires_grad=True)
    wm.read(query, mode="soft").value.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    assert key.grad is not None and query.grad is not None
    wm.detach_()
    assert not wm.keys.requires_grad and not wm.values.requires_grad


def test_nbytes_counts_occupied_entries_and_reset_empties():
    wm = WorkingMemory(3, 4, 8, 16)
    wm.write(torch.tensor([0, 1, -1]), torch.ones(3, 8), torch.ones(3, 16))
    wm.write(torch.tensor([2, 1, -1]), torch.ones(3, 8), torch.ones(3, 16))
    assert wm.nbytes().tolist() == [2 * 24 * 4, 1 * 24 * 4, 0]
    wm.tick(5)
    wm.reset(torch.tensor([True, False, False]))
    assert wm.nbytes().tolist() == [0, 96, 0] and wm.clock.tolist() == [0, 5, 5]

