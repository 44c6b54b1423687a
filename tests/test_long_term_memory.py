"""ahm.backbone.long_term_memory: exact search vs brute force (to 1M entries), eviction and
bookkeeping invariants against a reference, approximate search through faiss, errors."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.backbone import CodecOptions, LongTermMemory, LTMConfig, faiss_available
from ahm.kernels.retrieval import topk_similarity_ref

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="needs faiss (the 'ann' extra)")


def clustered(n: int, d: int, seed: int, clusters: int = 64, spread: float = 0.3) -> torch.Tensor:
    """n unit vectors around `clusters` random centres: the shape ANN indexes are built for."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    x = centres[torch.randint(0, clusters, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("codec", ["none", "int8", "pq", "autoencoder"])
def test_exact_search_equals_brute_force_over_the_decoded_keys(codec):
    cfg = LTMConfig(capacity=500, key_dim=16, value_dim=8, codec=codec,
                    codec_options=CodecOptions(pq_backend="builtin", pq_bits=4, pq_iters=5))
    ltm = LongTermMemory(2, cfg)
    keys, values = clustered(800, 16, 0).view(2, 400, 16), torch.randn(2, 400, 8)
    ltm.fit_codecs(keys.reshape(-1, 16), values.reshape(-1, 8))
    ltm.extend(keys, values)
    ltm.forget(torch.tensor([3, 17]))
    ltm.forget_oldest()
    q = clustered(10, 16, 1).view(2, 5, 16)
    hits = ltm.search(q, 7)
    all_slots = torch.arange(500).expand(2, 500)
    ref_s, ref_i = topk_similarity_ref(q, ltm.decode_keys(all_slots), 7, ltm.occupied)
    torch.testing.assert_close(hits.scores, ref_s, rtol=1e-5, atol=1e-5)
    # Indices: equal where scores are distinct; with ties (pq reconstructions coincide) any tied slot is right,
    # so check each returned slot is live, distinct, and has the reported score.
    assert bool(ltm.occupied.gather(1, hits.indices.flatten(1)).all())
    assert all(len(set(row.tolist())) == 7 for row in hits.indices.flatten(0, 1))
    own = torch.einsum("bqkd,bqd->bqk", ltm.decode_keys(hits.indices), q)
    torch.testing.assert_close(own, hits.scores, rtol=1e-5, atol=1e-5)
    if codec != "pq":
        assert torch.equal(hits.indices, ref_i)


def test_exact_search_at_one_million_entries():
    """Capacity 1M per sequence: filled in bulk, searched in blocks, equal to the full score matrix."""
    m = 1_000_000
    ltm = LongTermMemory(1, LTMConfig(capacity=m, key_dim=8, value_dim=2, codec="none"))
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1, m, 8, generator=g)
    ltm.extend(keys, torch.zeros(1, m, 2))
    assert int(ltm.count) == m and int(ltm.nbytes()) == m * 40
    q = torch.randn(1, 3, 8, generator=g)
    hits = ltm.search(q, 8)
    ref_s, ref_i = topk_similarity_ref(q, keys, 8)
    assert torch.equal(hits.indices, ref_i)
    torch.testing.assert_close(hits.scores, ref_s)
    # A write into the full store replaces the oldest entry (slot 0: all share write_step 0).
    assert ltm.write(torch.ones(1, 8), torch.ones(1, 2)).slot.tolist() == [0]


def test_read_combines_the_hits_and_counts_a_use():
    ltm = LongTermMemory(2, LTMConfig(capacity=8, key_dim=4, value_dim=3, codec="none"))
    keys = F.normalize(torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    values = torch.randn(2, 6, 3)
    ltm.extend(keys, values)
    q = keys[:, 2]
    read = ltm.retrieve(q, k=3, mode="soft", inv_temperature=4.0)
    want_w = torch.softmax(4.0 * torch.einsum("bkd,bd->bk", keys.gather(1, read.indices[..., None].expand(-1, -1, 4)),
                                              q), 1)
    torch.testing.assert_close(read.weights, want_w)
    torch.testing.assert_close(read.value, torch.einsum("bk,bkd->bd", want_w, values.gather(
        1, read.indices[..., None].expand(-1, -1, 3))))
    assert read.indices[:, 0].tolist() == [2, 2]
    assert ltm.uses[:, 2].tolist() == [1, 1] and ltm.uses.sum().item() == 2
    top1 = ltm.retrieve(q, k=3, mode="top1", active=torch.tensor([False, True]))
    assert top1.value[0].eq(0).all() and torch.equal(top1.value[1], values[1, 2])
    assert ltm.uses[:, 2].tolist() == [1, 2]


# ---------------------------------------------------------------- invariants against a reference model
M, B, DK, DV = 5, 2, 2, 1
LTM_OP = st.tuples(st.sampled_from(["write", "extend", "forget", "oldest", "least_used", "nearest", "read", "tick"]),
                   st.lists(st.booleans(), min_size=B, max_size=B),
                   st.lists(st.integers(-3, 3), min_size=DK + DV, max_size=DK + DV),
                   st.integers(0, M - 1))


class RefLTM:
    """One sequence's long-term memory in plain Python: slot -> [key, value, write_step, uses, last_read]."""

    def __init__(self, eviction: str) -> None:
        self.slots: dict[int, list] = {}
        self.clock, self.eviction = 0, eviction

    def oldest(self) -> int:
        return min(self.slots, key=lambda s: (self.slots[s][2], s))

    def least_used(self) -> int:
        return min(self.slots, key=lambda s: (self.slots[s][3], self.slots[s][2], s))

    def target(self) -> int:
        if len(self.slots) < M:
            return min(set(range(M)) - set(self.slots))
        return self.oldest() if self.eviction == "oldest" else self.least_used()


def check_against(ltm: LongTermMemory, refs: list[RefLTM]) -> None:
    assert torch.equal(ltm.count, ltm.occupied.sum(1)) and ltm.count.le(M).all()
    for i, ref in enumerate(refs):
        assert int(ltm.clock[i]) == ref.clock
        for s in range(M):
            if s in ref.slots:
                key, value, ws, uses, last = ref.slots[s]
                assert bool(ltm.occupied[i, s])
                assert ltm.key_codes[0][i, s].tolist() == key and ltm.value_codes[0][i, s].tolist() == value
                assert (int(ltm.write_step[i, s]), int(ltm.uses[i, s]), int(ltm.last_read[i, s])) == (ws, uses, last)
            else:
                assert not bool(ltm.occupied[i, s])
                assert (int(ltm.write_step[i, s]), int(ltm.uses[i, s]), int(ltm.last_read[i, s])) == (-1, 0, -1)


@pytest.mark.parametrize("eviction", ["oldest", "least_used"])
@given(ops=st.lists(LTM_OP, min_size=20, max_size=60))
@settings(max_examples=50)
def test_eviction_and_bookkeeping_match_a_reference_under_random_operations(eviction, ops):
    """2 x 50 examples of 20 to 60 batched operations: several thousand in all."""
    ltm = LongTermMemory(B, LTMConfig(capacity=M, key_dim=DK, value_dim=DV, codec="none", eviction=eviction))
    refs = [RefLTM(eviction) for _ in range(B)]
    for kind, flags, numbers, index in ops:
        active = torch.tensor(flags)
        key = torch.tensor([[float(v + i) for v in numbers[:DK]] for i in range(B)])
        value = torch.tensor([[float(numbers[DK] * (i + 1))] for i in range(B)])
        if kind == "write":
            targets = [ref.target() for ref in refs]
            out = ltm.write(key, value, active)
            for i, ref in enumerate(refs):
                if flags[i]:
                    assert int(out.slot[i]) == targets[i] and bool(out.displaced[i]) == (len(ref.slots) == M)
                    ref.slots[targets[i]] = [key[i].tolist(), value[i].tolist(), ref.clock, 0, -1]
                else:
                    assert int(out.slot[i]) == -1
        elif kind == "extend":
            if all(len(r.slots) < M for r in refs):
                slots = ltm.extend(key[:, None], value[:, None])
                for i, ref in enumerate(refs):
                    assert int(slots[i, 0]) == ref.target()
                    ref.slots[ref.target()] = [key[i].tolist(), value[i].tolist(), ref.clock, 0, -1]
        elif kind == "forget":
            idx = torch.tensor([index if index in r.slots else -1 for r in refs])
            ltm.forget(idx)
            for ref, s in zip(refs, idx.tolist()):
                ref.slots.pop(s, None)
        elif kind in ("oldest", "least_used"):
            active = torch.tensor([f and bool(r.slots) for f, r in zip(flags, refs)])
            want = [getattr(r, kind)() if a else -1 for r, a in zip(refs, active.tolist())]
            got = (ltm.forget_oldest if kind == "oldest" else ltm.forget_least_used)(active)
            assert got.tolist() == want
            for ref, s in zip(refs, want):
                ref.slots.pop(s, None)
        elif kind == "nearest":
            active = torch.tensor([f and bool(r.slots) for f, r in zip(flags, refs)])
            got = ltm.forget_nearest(key, active).tolist()
            for i, ref in enumerate(refs):
                if not bool(active[i]):
                    assert got[i] == -1
                    continue
                scores = {s: sum(a * b for a, b in zip(e[0], key[i].tolist())) for s, e in ref.slots.items()}
                assert scores[got[i]] == max(scores.values())  # the nearest (any of tied ones)
                ref.slots.pop(got[i])
        elif kind == "read":
            active = torch.tensor([f and bool(r.slots) for f, r in zip(flags, refs)])
            read = ltm.retrieve(key, k=3, mode="top1", active=active)
            for i, ref in enumerate(refs):
                if not bool(active[i]):
                    continue
                scores = {s: sum(a * b for a, b in zip(e[0], key[i].tolist())) for s, e in ref.slots.items()}
                top = int(read.indices[i, int(read.weights[i].argmax())])
                assert scores[top] == max(scores.values())
                ref.slots[top][3] += 1
                ref.slots[top][4] = ref.clock
        else:
            ltm.tick()
            for ref in refs:
                ref.clock += 1
        check_against(ltm, refs)


# ---------------------------------------------------------------- approximate search
@needs_faiss
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_recall_and_consistency(kind):
    cfg = LTMConfig(capacity=4000, key_dim=16, value_dim=4, codec="none", search=kind, ann_min_entries=1000)
    ltm = LongTermMemory(2, cfg)
    keys = clustered(2 * 3000, 16, 0).view(2, 3000, 16)
    ltm.extend(keys, torch.zeros(2, 3000, 4))
    g = torch.Generator().manual_seed(1)
    q = F.normalize(keys[:, :50] + 0.2 * torch.randn(2, 50, 16, generator=g), dim=-1)  # queries near the data
    exact, approx = ltm.search(q, 10, exact=True), ltm.search(q, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(approx.indices.flatten(0, 1),
                                                                        exact.indices.flatten(0, 1))) / (100 * 10)
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f}"
    # Every approximate hit is a live entry with its exact score.
    assert bool(ltm.occupied.gather(1, approx.indices.flatten(1)).all())
    torch.testing.assert_close(approx.scores, torch.einsum("bqkd,bqd->bqk", ltm.decode_keys(approx.indices), q))
    # Forgotten entries never come back; entries written after the index was built are found.
    gone = approx.indices[:, 0, 0]
    ltm.forget(gone)
    assert not (ltm.search(q, 10).indices == gone[:, None, None]).any()
    new_key = F.normalize(torch.randn(2, 16), dim=-1)
    slot = ltm.write(new_key, torch.zeros(2, 4)).slot
    assert torch.equal(ltm.search(new_key[:, None], 1).indices[:, 0, 0], slot)


@needs_faiss
def test_approximate_search_waits_for_enough_entries():
    ltm = LongTermMemory(1, LTMConfig(capacity=100, key_dim=4, value_dim=1, search="ivf", ann_min_entries=50))
    ltm.extend(torch.randn(1, 10, 4), torch.zeros(1, 10, 1))
    ltm.search(torch.randn(1, 1, 4), 2)
    assert ltm._ann is None  # 10 < 50 entries: exact search, no index built


# ---------------------------------------------------------------- errors and accounting
def test_invalid_operations_raise_clear_errors(monkeypatch):
    ltm = LongTermMemory(2, LTMConfig(capacity=3, key_dim=2, value_dim=1, codec="none"))
    with pytest.raises(ValueError, match="empty long-term memory"):
        ltm.retrieve(torch.zeros(2, 2), k=1)
    with pytest.raises(ValueError, match="hold no entry"):
        ltm.forget_oldest()
    with pytest.raises(IndexError, match="out of range for capacity 3"):
        ltm.forget(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="are empty"):
        ltm.forget(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="only"):
        ltm.extend(torch.zeros(2, 4, 2), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        ltm.write(torch.zeros(2, 3), torch.zeros(2, 1))
    ltm.write(torch.ones(2, 2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="reset"):
        ltm.fit_codecs(torch.randn(10, 2), torch.randn(10, 1))
    with pytest.raises(ValueError, match="Hamming"):
        LTMConfig(codec="hash", search="ivf")
    with pytest.raises(ValueError, match="eviction"):
        LTMConfig(eviction="random")
    pq = LongTermMemory(1, LTMConfig(capacity=3, codec="pq"))
    with pytest.raises(ValueError, match="not fitted"):
        pq.write(torch.zeros(1, 32), torch.zeros(1, 64))
    assert int(pq.count) == 0  # the failed write stored nothing
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install 'ahm-ssm\[ann\]'"):
        LongTermMemory(1, LTMConfig(search="hnsw"))


@pytest.mark.parametrize("codec", ["none", "int8", "pq", "autoencoder", "hash"])
def test_nbytes_is_count_times_bytes_per_entry(codec):
    ltm = LongTermMemory(2, LTMConfig(capacity=300, key_dim=8, value_dim=4, codec=codec,
                                      codec_options=CodecOptions(pq_bits=2, pq_backend="builtin")))
    ltm.fit_codecs(torch.randn(64, 8), torch.randn(64, 4))
    ltm.extend(torch.randn(2, 7, 8), torch.randn(2, 7, 4))
    ltm.forget(torch.tensor([0, -1]))
    per = ltm.key_codec.bytes_per_vector + ltm.value_codec.bytes_per_vector
    assert ltm.nbytes().tolist() == [6 * per, 7 * per]
    ltm.reset(torch.tensor([False, True]))
    assert ltm.nbytes().tolist() == [6 * per, 0]
