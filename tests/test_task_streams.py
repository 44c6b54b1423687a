"""ahm.envs task streams: the chunk contract, determinism, random access and each task's format.

Every registered task (``TASKS``) goes through the same contract checks, so a new
task is covered by adding it to the registry (and a line to ``BAD_KWARGS``).
"""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ahm.envs.decoy import DecoyStream
from ahm.envs.forget import ForgetStream
from ahm.envs.mqar import ASK, FILLER_PERIOD, KIND_MARKERS, N_RESERVED, MQARStream
from ahm.envs.passkey import PASSKEY_VARIANTS, RESERVED_PHRASE, PasskeyStream
from ahm.envs.selective_copy import NOISE_TOKEN, SelectiveCopyStream
from ahm.envs.streams import FACT_KINDS, TASKS, Fact, Query, TaskStream, make_task, uniform_tokens
from ahm.envs.text_stream import TextStream, corpus_bytes

# Extra configurations beyond each task's defaults: every passkey variant, decoy forget.
VARIANTS = [(name, {}) for name in TASKS] + [
    ("passkey", {"variant": "varied", "depth": 0.0}),
    ("passkey", {"variant": "uuid", "depth": 1.0}),
    ("forget", {"assignments": 3, "reassign_fraction": 1.0}),
    ("decoy", {"reassign_fraction": 0.5, "filler": "random"}),
    ("mqar", {"filler": "repeat", "vocab_size": 64}),
]


def case_id(name: str, kwargs: dict) -> str:
    return "-".join([name] + [f"{k}={v}" for k, v in kwargs.items()])


IDS = [case_id(name, kw) for name, kw in VARIANTS]


def make(name: str, seq_len: int = 8192, chunk_size: int = 128, seed: int = 0, **kwargs) -> TaskStream:
    return TASKS[name](seq_len, chunk_size, seed, **kwargs)


def whole_stream(s: TaskStream) -> np.ndarray:
    """The stream as one array, read chunk by chunk in order (the way the environment reads it)."""
    return np.concatenate([s.chunk(i) for i in range(s.n_chunks)])


def find(seq: tuple[int, ...], sub: tuple[int, ...]) -> int:
    """Index of the first occurrence of ``sub`` in ``seq`` (0 for an empty ``sub``), -1 if absent."""
    return next((i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub), -1)


def check_contract(s: TaskStream) -> np.ndarray:
    """Assert the chunk contract of ``streams.py`` on ``s``; returns the whole stream."""
    chunks = [s.chunk(i) for i in range(s.n_chunks)]
    assert sum(len(c) for c in chunks) == s.seq_len
    assert all(len(c) == s.chunk_size for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= s.chunk_size
    assert s.n_full_chunks == sum(len(c) == s.chunk_size for c in chunks)
    stream = np.concatenate(chunks)
    assert stream.dtype == np.int64 and stream.min() >= 0 and stream.max() < s.vocab_size
    assert 0 < s.chance_accuracy <= 1

    for i, fact in enumerate(s.facts):
        assert isinstance(fact, Fact) and fact.fact_id == i and fact.kind in FACT_KINDS
        assert 0 <= fact.chunk < s.n_full_chunks and len(fact.tokens) <= s.chunk_size
        # The fact ends exactly at its chunk's boundary, and key then value lie inside it.
        assert tuple(chunks[fact.chunk][-len(fact.tokens) :].tolist()) == fact.tokens
        k = find(fact.tokens, fact.key)
        assert k >= 0 and find(fact.tokens[k + len(fact.key) :], fact.value) >= 0
        assert (fact.kind == "stale") == (fact.superseded_by >= 0)
        if fact.superseded_by >= 0:
            newer = s.facts[fact.superseded_by]
            assert newer.key == fact.key and newer.chunk > fact.chunk and newer.value != fact.value
    assert [f.chunk for f in s.facts] == sorted({f.chunk for f in s.facts})  # one fact per chunk, in order

    for query in s.queries:
        assert isinstance(query, Query) and query.chunk + 1 < s.n_full_chunks
        assert tuple(chunks[query.chunk][-len(query.cue) :].tolist()) == query.cue
        assert tuple(chunks[query.chunk + 1][: len(query.answer)].tolist()) == query.answer
        fact = s.facts[query.fact_id]
        assert fact.kind == "target" and query.answer == fact.value and fact.chunk < query.chunk
        for stale_id in query.stale_fact_ids:
            assert s.facts[stale_id].kind == "stale" and s.facts[stale_id].key == fact.key
    assert [q.chunk for q in s.queries] == sorted({q.chunk for q in s.queries})
    assert s.last_query_chunk == (s.queries[-1].chunk if s.queries else s.n_chunks - 1)
    assert not {f.fact_id for f in s.facts if f.kind == "decoy"} & {q.fact_id for q in s.queries}
    return stream


# --------------------------------------------------------------------- registry
def test_registry_holds_the_issue_tasks_with_documented_necessity():
    assert set(TASKS) == {"passkey", "mqar", "forget", "copy", "decoy", "text"}
    for name, cls in TASKS.items():
        assert issubclass(cls, TaskStream), name
        # The one-line statement is also in the docstring, word for word.
        assert cls.memory_necessity and cls.memory_necessity in " ".join(cls.__doc__.split()), name
        assert "Chance accuracy" in cls.__doc__ and "Layout" in cls.__doc__, name
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope", 4096, 64, 0)
    assert isinstance(make_task("mqar", 4096, 64, 0), MQARStream)


@pytest.mark.parametrize("module", ["streams", "passkey", "mqar", "forget", "decoy", "selective_copy", "text_stream"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"ahm.envs.{module}"))
    assert result.failed == 0
    assert result.attempted > 0 or module == "streams"


# --------------------------------------------------------------------- contract
# Defaults must work from 4K to 1M tokens in chunks of 64 to 1,024 (the corners, a ragged last chunk);
# the extra variants at two ordinary geometries.
DEFAULT_GEOMETRIES = [(4096, 64), (4096, 1024), (1_000_000, 64), (1_000_000, 1024), (10_000, 96)]
CONTRACT_CASES = [(name, kw, L, C) for name, kw in VARIANTS for L, C in
                  (DEFAULT_GEOMETRIES if not kw else [(8192, 128), (10_000, 96)])]


@pytest.mark.parametrize(("name", "kwargs", "seq_len", "chunk_size"), CONTRACT_CASES,
                         ids=[f"{case_id(n, kw)}-{L}-{C}" for n, kw, L, C in CONTRACT_CASES])
def test_contract_holds(name, kwargs, seq_len, chunk_size):
    s = make(name, seq_len, chunk_size, seed=3, **kwargs)
    check_contract(s)
    if name != "text":
        assert s.facts and s.queries


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=IDS)
def test_same_seed_same_stream_different_seed_different(name, kwargs):
    a, b, c = (make(name, seed=seed, **kwargs) for seed in (7, 7, 8))
    stream_a = whole_stream(a)
    np.testing.assert_array_equal(stream_a, whole_stream(b))
    assert (a.facts, a.queries, a.noise_chunks) == (b.facts, b.queries, b.noise_chunks)
    assert not np.array_equal(stream_a, whole_stream(c))
    if name != "text":
        assert (a.facts, a.queries) != (c.facts, c.queries)


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=IDS)
def test_random_access_equals_sequential_pass(name, kwargs):
    s = make(name, seq_len=150_000, chunk_size=100, seed=1, **kwargs)  # blocks of 655 chunks; a ragged end
    stream = whole_stream(s)
    order = np.random.default_rng(0).permutation(s.n_chunks)[:300]
    fresh = make(name, seq_len=150_000, chunk_size=100, seed=1, **kwargs)
    for i in order.tolist():  # a fresh stream read out of order: no state carried from a sequential pass
        start, end = fresh.chunk_bounds(i)
        np.testing.assert_array_equal(fresh.chunk(i), stream[start:end])
    for start, end in [(0, 1), (99, 101), (65_500, 65_600), (1234, 98_765), (149_999, 150_000), (0, 150_000)]:
        np.testing.assert_array_equal(fresh.tokens(start, end), stream[start:end])
    chunk = fresh.chunk(5)
    chunk[:] = -1  # callers own the arrays they get
    np.testing.assert_array_equal(fresh.chunk(5), stream[500:600])


@pytest.mark.parametrize("name", list(TASKS))
def test_annotations_and_state_do_not_grow_with_length(name):
    short, long = make(name, 1_000_000, 256, 2), make(name, 100_000_000, 256, 2)
    assert len(short.facts) == len(long.facts) and len(short.queries) == len(long.queries)
    assert len(short._spans) == len(long._spans)  # what is stored besides the (bounded) annotations
    assert len(long.chunk(long.n_chunks - 1)) == 100_000_000 - (long.n_chunks - 1) * 256  # random access far out


@pytest.mark.parametrize("name", list(TASKS))
def test_out_of_range_access_raises(name):
    s = make(name, 4096, 64)
    with pytest.raises(IndexError):
        s.chunk(s.n_chunks)
    with pytest.raises(IndexError):
        s.tokens(10, 4097)


# ----------------------------------------------------------------- bad arguments
COMMON_BAD = [({"seq_len": 0}, "seq_len"), ({"chunk_size": 0}, "chunk_size"), ({"seed": -1}, "seed"),
              ({"chunk_size": 64.0}, "chunk_size")]
BAD_KWARGS = {
    "passkey": [({"depth": 1.5}, "depth"), ({"depth": -0.1}, "depth"), ({"variant": "essay"}, "variant"),
                ({"digits": 0}, "digits"), ({"digits": 19}, "digits"), ({"chunk_size": 32}, "chunk_size"),
                ({"variant": "uuid", "chunk_size": 64}, "chunk_size"), ({"seq_len": 128, "chunk_size": 64}, "seq_len")],
    "mqar": [({"num_pairs": 300}, "num_pairs"), ({"num_pairs": 0}, "num_pairs"), ({"vocab_size": 5}, "vocab_size"),
             ({"vocab_size": 16, "num_pairs": 8}, "vocab_size"), ({"num_queries": 9, "num_pairs": 8}, "num_queries"),
             ({"context_fraction": 0.0}, "context_fraction"), ({"query_fraction": 1.2}, "query_fraction"),
             ({"context_fraction": 0.6, "query_fraction": 0.4}, "context_fraction"), ({"filler": "zeros"}, "filler"),
             ({"chunk_size": 1}, "chunk_size"), ({"seq_len": 128, "chunk_size": 64}, "seq_len")],
    "forget": [({"reassign_fraction": 1.5}, "reassign_fraction"), ({"assignments": 1}, "assignments"),
               ({"num_pairs": 40}, "num_pairs=40"), ({"num_pairs": 20, "assignments": 4}, "assignments=4")],
    "copy": [({"data_tokens": 40}, "data_tokens"), ({"data_tokens": 0}, "data_tokens"),
             ({"vocab_size": 2}, "vocab_size"), ({"chunk_size": 1}, "chunk_size"),
             ({"seq_len": 128, "chunk_size": 64}, "seq_len")],
    "decoy": [({"num_decoys": -1}, "num_decoys"), ({"num_decoys": 40}, "num_decoys=40"),
              ({"burst_length": 0}, "burst_length"), ({"burst_length": 65}, "burst_length"),
              ({"noise_bursts": 60}, "noise_bursts"),
              ({"chunk_size": 4}, "chunk_size")],
    "text": [({"split": "test"}, "split"), ({"max_documents": -1}, "max_documents"), ({"corpus": 3}, "corpus")],
}


def test_every_task_has_bad_kwargs_cases():
    assert set(BAD_KWARGS) == set(TASKS)


@pytest.mark.parametrize(("name", "bad", "match"),
                         [(n, b, m) for n in TASKS for b, m in COMMON_BAD + BAD_KWARGS[n]],
                         ids=lambda x: x if isinstance(x, str) else "-".join(f"{k}={v}" for k, v in x.items()))
def test_bad_arguments_raise_value_errors_naming_them(name, bad, match):
    args = {"seq_len": 4096, "chunk_size": 64, "seed": 0} | bad
    with pytest.raises(ValueError, match=match):
        TASKS[name](**args)


# --------------------------------------------------------------------- hypothesis
@settings(max_examples=300)
@given(name=st.sampled_from(sorted(TASKS)), chunk_size=st.integers(1, 600), n_chunks=st.integers(0, 120),
       tail=st.integers(0, 599), seed=st.integers(0, 2**63 - 1))
def test_any_geometry_gives_the_contract_or_a_value_error(name, chunk_size, n_chunks, tail, seed):
    try:
        s = make(name, max(1, n_chunks * chunk_size + tail % chunk_size), chunk_size, seed)
    except ValueError as e:
        assert "chunk" in str(e) or "seq_len" in str(e)  # only the geometry can be wrong here
        event(f"{name}: ValueError")
        return
    event(f"{name}: built")
    check_contract(s)


@given(name=st.sampled_from(sorted(TASKS)), seed=st.integers(0, 2**32), chunk_size=st.integers(96, 512),
       n_chunks=st.integers(40, 120), tail=st.integers(0, 95))
def test_valid_geometries_always_build(name, seed, chunk_size, n_chunks, tail):
    """With at least 40 chunks of >= 96 tokens every task builds with its defaults."""
    s = make(name, n_chunks * chunk_size + tail, chunk_size, seed)
    stream = check_contract(s)
    assert len(stream) == n_chunks * chunk_size + tail


def test_uniform_tokens_are_uniform_and_position_pure():
    x = uniform_tokens(123, 0, 200_000, 10, 20)
    counts = np.bincount(x - 10, minlength=10)
    assert x.min() == 10 and x.max() == 19 and counts.min() > 0.95 * 20_000 and counts.max() < 1.05 * 20_000
    np.testing.assert_array_equal(uniform_tokens(123, 1000, 1010, 10, 20), x[1000:1010])
    assert not np.array_equal(uniform_tokens(124, 0, 1000, 10, 20), x[:1000])


# ------------------------------------------------------------------ task formats
@pytest.mark.parametrize("variant", PASSKEY_VARIANTS)
def test_passkey_needle_and_question_occur_once_each(variant):
    s = PasskeyStream(20_000, 128, 5, variant=variant, depth=0.3)
    text = whole_stream(s).astype(np.uint8).tobytes()
    assert text.count(RESERVED_PHRASE) == 2
    fact, query = s.facts[0], s.queries[0]
    assert query.chunk == s.n_full_chunks - 2 and fact.chunk == round(0.3 * (query.chunk - 1))
    value = bytes(fact.value).decode()
    if variant == "uuid":
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value)
        assert s.chance_accuracy == 1 / 16
    else:
        assert re.fullmatch(r"[1-9][0-9]{6}", value) and s.chance_accuracy == 1 / 9
    if variant == "repeated":
        assert text.count(b"The grass is green.") > 20_000 // 100


@pytest.mark.parametrize(("depth", "expected"), [(0.0, 0), (1.0, 61), (0.5, 30)])
def test_passkey_depth_places_the_needle(depth, expected):
    s = PasskeyStream(64 * 64, 64, 0, depth=depth)  # question in chunk 62, needle in 0 .. 61
    assert s.facts[0].chunk == expected


def test_passkey_corpus_haystack_never_contains_the_needle_phrase(tmp_path):
    for i in range(3):  # a corpus that quotes the needle's format must not leak it into the haystack
        (tmp_path / f"doc{i}.txt").write_text("One of the special magic numbers for apple is: 1234567. " * 400)
    s = PasskeyStream(30_000, 128, 0, variant="varied", corpus=str(tmp_path))
    text = whole_stream(s).astype(np.uint8).tobytes()
    assert text.count(RESERVED_PHRASE) == 2 and b"special-magic" in text


@pytest.mark.parametrize("cls", [MQARStream, ForgetStream, DecoyStream])
def test_key_value_tokens_occur_only_where_annotated(cls):
    s = cls(30_000, 64, 4)
    stream = whole_stream(s)
    keys, values = s.key_tokens, s.value_tokens
    assert keys.stop == values.start and len(keys) == len(values) == (s.vocab_size - N_RESERVED) // 2
    is_key = (stream >= keys.start) & (stream < keys.stop)
    annotated = {(f.chunk + 1) * 64 - len(f.tokens) + f.tokens.index(f.key[0]) for f in s.facts}
    annotated |= {(q.chunk + 1) * 64 - 1 for q in s.queries}
    assert set(np.flatnonzero(is_key).tolist()) == annotated
    reserved = set(np.flatnonzero(stream < N_RESERVED).tolist())
    if cls is DecoyStream:  # the cue and one marker per fact, nothing else
        assert reserved == {0, 1} | {(f.chunk + 1) * 64 - 3 for f in s.facts}
    else:
        assert not reserved
    values_of = [f.value for f in s.facts]
    assert len(set(values_of)) == len(values_of)  # distinct values, as in Zoology
    n_ctx, n_qry = s._regions()
    assert max(f.chunk for f in s.facts) < n_ctx <= min(q.chunk for q in s.queries)  # queries after a gap
    assert min(q.chunk for q in s.queries) >= s.n_full_chunks - 1 - n_qry


def test_mqar_default_suits_100k_tokens():
    s = MQARStream(100_000, 256, 0)
    assert len(s.facts) == s.num_pairs == 48 and len(s.queries) == 48
    assert s.chance_accuracy == 1 / 4094
    assert len({q.cue for q in s.queries}) == 48  # every key asked once
    assert MQARStream(1_000_000, 64, 0).num_pairs == 64


def test_forget_answers_are_the_latest_assignment():
    s = ForgetStream(50_000, 64, 9, assignments=3, reassign_fraction=0.5)
    assert {f.kind for f in s.facts} == {"target", "stale"}
    for query in s.queries:
        history = [f for f in s.facts if f.key == query.cue and f.chunk < query.chunk]
        assert query.answer == history[-1].value  # the most recent value, recomputed from the stream order
        assert query.stale_fact_ids == tuple(f.fact_id for f in history[:-1])
        assert len(history) in (1, 3)
    reassigned = [q for q in s.queries if q.stale_fact_ids]
    assert len(reassigned) == round(0.5 * s.num_pairs)
    assert all(s.facts[i].value != q.answer for q in reassigned for i in q.stale_fact_ids)


def test_decoys_share_the_format_and_differ_only_by_the_cued_marker():
    s = DecoyStream(50_000, 64, 2)
    stream = whole_stream(s)
    assert tuple(stream[:2].tolist()) == (ASK, s.asked_marker) == s.cue
    assert {s.asked_marker, s.decoy_marker} == set(KIND_MARKERS)
    targets = [f for f in s.facts if f.kind == "target"]
    decoys = [f for f in s.facts if f.kind == "decoy"]
    assert len(decoys) == len(targets) == s.num_pairs
    assert all(f.tokens[0] == s.asked_marker and len(f.tokens) == 3 for f in targets)
    assert all(f.tokens[0] == s.decoy_marker and len(f.tokens) == 3 for f in decoys)
    assert not {f.key for f in decoys} & {q.cue for q in s.queries}  # a decoy's key is never asked
    # Both markers are asked equally often over episodes (the policy must read the cue).
    assert {DecoyStream(50_000, 64, seed).asked_marker for seed in range(20)} == set(KIND_MARKERS)


def test_decoy_noise_bursts_are_surprising_and_away_from_facts():
    s = DecoyStream(50_000, 64, 2)
    annotated = {f.chunk for f in s.facts} | {q.chunk for q in s.queries} | {q.chunk + 1 for q in s.queries} | {0}
    assert len(s.noise_chunks) == s.num_pairs and not set(s.noise_chunks) & annotated
    noise = set(s.noise_chunks)
    for i in range(1, s.n_full_chunks):
        distinct = len(np.unique(s.chunk(i)))
        if i in noise:  # 32 uniform tokens from 4,094 values on top of the 16-token cycle
            assert distinct > FILLER_PERIOD + 8
        elif i not in annotated:
            assert distinct <= FILLER_PERIOD  # the filler alone is the predictable cycle


def test_selective_copy_matches_the_paper_layout():
    s = SelectiveCopyStream(4096, 64, 11)  # the paper's length, vocabulary and data tokens
    stream = whole_stream(s)
    assert s.data_tokens == len(s.facts) == len(s.queries) == 16 and s.chance_accuracy == 1 / 14
    data = [f.value[0] for f in s.facts]
    assert all(1 <= d <= 14 for d in data)
    assert [q.answer[0] for q in s.queries] == data and all(q.cue == (15,) for q in s.queries)
    # Non-noise tokens: the data tokens at chunk ends, the markers, and the answers; nothing else.
    expected = {(f.chunk + 1) * 64 - 1 for f in s.facts} | {(q.chunk + 1) * 64 - 1 for q in s.queries}
    expected |= {(q.chunk + 1) * 64 for q in s.queries}
    assert set(np.flatnonzero(stream != NOISE_TOKEN).tolist()) == expected
    assert max(f.chunk for f in s.facts) < min(q.chunk for q in s.queries)
    assert SelectiveCopyStream(4096, 1024, 0).data_tokens == 1  # 4 chunks: as many as fit


def test_text_stream_reads_the_corpus_from_a_document_start():
    s = TextStream(20_000, 256, 3, max_documents=40)
    text = corpus_bytes("stdlib", "train", 40)
    assert s.offset in set(text.doc_starts.tolist())
    read = np.take(text.array, np.arange(s.offset, s.offset + 20_000), mode="wrap")  # cyclic past the end
    np.testing.assert_array_equal(whole_stream(s), read)
    held = TextStream(20_000, 256, 3, max_documents=40, split="heldout")
    assert held.offset in set(corpus_bytes("stdlib", "heldout", 40).doc_starts.tolist())
    assert not s.facts and not s.queries and s.last_query_chunk == s.n_chunks - 1
