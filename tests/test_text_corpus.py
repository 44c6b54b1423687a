"""ahm.envs.text_corpus: the built-in corpus, folders, and the document split."""

from __future__ import annotations

import numpy as np
import pytest

from ahm.envs.text_corpus import DOC_SEPARATOR, load_corpus, stdlib_source_files


def test_stdlib_corpus_is_built_in_and_split_by_document():
    corpus = load_corpus("stdlib", max_documents=200)
    assert len(stdlib_source_files()) > 500  # the interpreter's own sources
    assert len(corpus.train) + len(corpus.heldout) == 200
    assert len(corpus.heldout) >= 1
    # No held-out document's text is in the training side.
    train_docs = {d.tobytes() for d in corpus.train}
    assert all(d.tobytes() not in train_docs for d in corpus.heldout if len(d) > 100)
    # The split is a pure function of the paths: loading again gives the same.
    again = load_corpus("stdlib", max_documents=200)
    assert [d.tobytes() for d in again.heldout] == [d.tobytes() for d in corpus.heldout]


def test_windows_are_seeded_and_in_range():
    corpus = load_corpus("stdlib", max_documents=50)
    a = corpus.sample_windows(4, 64, np.random.default_rng(1))
    b = corpus.sample_windows(4, 64, np.random.default_rng(1))
    assert a.shape == (4, 65) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_folder_corpus(tmp_path):
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 50)
    corpus = load_corpus(str(tmp_path))
    assert len(corpus.train) + len(corpus.heldout) == 3 and corpus.heldout
    assert all((d != DOC_SEPARATOR).all() for d in corpus.train)


def test_bad_corpora_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="contains no documents"):
        load_corpus(str(tmp_path))
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(ValueError, match="no training text"):
        load_corpus(str(tmp_path))
    with pytest.raises(ValueError, match="heldout_fraction"):
        load_corpus("stdlib", heldout_fraction=0.0)
