"""ahm.envs.text_corpus: the built-in corpus, folders, JSONL, Parquet, local HF datasets, the document split."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ahm.envs.text_corpus import DOC_SEPARATOR, hf_text_field, load_corpus, stdlib_source_files


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


# ---------------------------------------------------------------------------------------------------------------
# User corpora: JSON Lines, Parquet, local Hugging Face datasets


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_parquet(path, columns, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _all_ids(corpus):
    return corpus.train_ids + corpus.heldout_ids


def _texts_by_id(corpus):
    ids = _all_ids(corpus)
    docs = corpus.train + corpus.heldout
    return {i: d.tobytes().decode("utf-8") for i, d in zip(ids, docs)}


def test_jsonl_file_reads_the_text_field_as_utf8_with_line_ids(tmp_path):
    records = [{"text": f"dokument {i} — ünïcode ✓ " * 5, "meta": i} for i in range(4)]
    path = _write_jsonl(tmp_path / "books.jsonl", records[:2])
    with path.open("a", encoding="utf-8") as f:  # a blank line is skipped but still counts for line numbers
        f.write("\n" + "".join(json.dumps(r) + "\n" for r in records[2:]))
    corpus = load_corpus(str(path))
    texts = _texts_by_id(corpus)
    assert texts == {
        "books.jsonl:1": records[0]["text"],
        "books.jsonl:2": records[1]["text"],
        "books.jsonl:4": records[2]["text"],
        "books.jsonl:5": records[3]["text"],
    }
    assert len(corpus.train[0]) == len(corpus.train[0].tobytes())  # bytes, not characters
    assert len(corpus.train[0]) > len(records[0]["text"])  # the multi-byte characters are UTF-8 encoded


def test_jsonl_field_by_argument_or_spec_suffix_and_folders_and_globs(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _write_jsonl(data / "a.jsonl", [{"body": f"a{i} " * 20} for i in range(3)])
    _write_jsonl(data / "sub" / "b.jsonl", [{"body": f"b{i} " * 20} for i in range(2)])
    by_arg = load_corpus(f"jsonl:{data}", field="body")
    by_suffix = load_corpus(f"jsonl:{data}:body")
    auto_folder = load_corpus(str(data), field="body")  # a folder of only *.jsonl files is read as JSONL
    expected = {f"a.jsonl:{i + 1}": f"a{i} " * 20 for i in range(3)} | {
        f"sub/b.jsonl:{i + 1}": f"b{i} " * 20 for i in range(2)
    }
    for corpus in (by_arg, by_suffix, auto_folder):
        assert _texts_by_id(corpus) == expected
    globbed = load_corpus(str(data / "*.jsonl"), field="body")  # not recursive: only a.jsonl
    assert sorted(_all_ids(globbed)) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]


def test_parquet_reads_one_column_across_row_groups_and_files(tmp_path):
    n = 25
    texts = [f"row {i} text " * 10 for i in range(n)]
    _write_parquet(tmp_path / "part-0.parquet", {"text": texts, "other": list(range(n))}, row_group_size=4)
    _write_parquet(tmp_path / "part-1.parquet", {"text": ["last " * 30, "one more " * 30]})
    corpus = load_corpus(str(tmp_path))  # a folder of only *.parquet files is read as Parquet
    got = _texts_by_id(corpus)
    assert len(got) == n + 2
    assert all(got[f"part-0.parquet:{i}"] == texts[i] for i in range(n))
    assert got["part-1.parquet:1"] == "one more " * 30
    single = load_corpus(str(tmp_path / "part-0.parquet"), max_documents=6)
    assert sorted(_all_ids(single), key=lambda s: int(s.split(":")[1])) == [f"part-0.parquet:{i}" for i in range(6)]
    _write_parquet(tmp_path / "other.parquet", {"article": ["x " * 40, "y " * 40, "z " * 40]})
    assert _texts_by_id(load_corpus(f"parquet:{tmp_path / 'other.parquet'}:article")) == {
        "other.parquet:0": "x " * 40, "other.parquet:1": "y " * 40, "other.parquet:2": "z " * 40,
    }


def test_split_is_by_document_deterministic_disjoint_and_independent_of_the_rest(tmp_path):
    records = [{"text": f"document number {i}. " * 8} for i in range(300)]
    path = _write_jsonl(tmp_path / "docs.jsonl", records)
    corpus = load_corpus(str(path), heldout_fraction=0.2)
    assert set(corpus.train_ids).isdisjoint(corpus.heldout_ids)
    assert sorted(_all_ids(corpus)) == sorted(f"docs.jsonl:{i + 1}" for i in range(300))
    assert 0.1 < len(corpus.heldout) / 300 < 0.3
    again = load_corpus(str(path), heldout_fraction=0.2)
    assert again.heldout_ids == corpus.heldout_ids and again.train_ids == corpus.train_ids
    assert [d.tobytes() for d in again.heldout] == [d.tobytes() for d in corpus.heldout]
    # A document's side depends on its id alone: loading fewer documents keeps every side.
    fewer = load_corpus(str(path), heldout_fraction=0.2, max_documents=120)
    assert set(fewer.heldout_ids) == {i for i in corpus.heldout_ids if int(i.split(":")[1]) <= 120}
    # No held-out text is a training document.
    train_texts = {d.tobytes() for d in corpus.train}
    assert not any(d.tobytes() in train_texts for d in corpus.heldout)


def test_max_documents_takes_the_first_in_order_and_stops_reading(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i} " * 10} for i in range(3)])
    path_b = _write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i} " * 10} for i in range(3)])
    with path_b.open("a") as f:
        f.write("this line is not JSON\n")  # after the first 5 documents: never read
    corpus = load_corpus(str(tmp_path), max_documents=5)
    assert sorted(_all_ids(corpus)) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "b.jsonl:1", "b.jsonl:2"]
    with pytest.raises(ValueError, match=r"b\.jsonl, line 4: not valid JSON"):
        load_corpus(str(tmp_path))
    with pytest.raises(ValueError, match="max_documents must be >= 0"):
        load_corpus(str(tmp_path), max_documents=-1)


def test_tiny_corpus_keeps_one_document_on_each_side(tmp_path):
    # Whatever the hash says, two documents give one train and one held-out document.
    path = _write_jsonl(tmp_path / "two.jsonl", [{"text": "first " * 20}, {"text": "second " * 20}])
    for fraction in (0.01, 0.99):
        corpus = load_corpus(str(path), heldout_fraction=fraction)
        assert len(corpus.train) == 1 and len(corpus.heldout) == 1


def test_bad_user_corpora_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_corpus(str(tmp_path / "*.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(f"parquet:{tmp_path / 'missing.parquet'}")
    with pytest.raises(ValueError, match=r"unknown source spec 'ftp:x'.*no source kind 'ftp'"):
        load_corpus("ftp:x")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unknown source spec.*cannot tell the format of file 'table.csv'"):
        load_corpus(str(tmp_path / "table.csv"))

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"contains no documents \(jsonl records\)"):
        load_corpus(str(empty))
    blank = _write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": ""}, {"text": ""}])
    with pytest.raises(ValueError, match="no training text: all 3 documents are empty"):
        load_corpus(str(blank))
    one = _write_jsonl(tmp_path / "one.jsonl", [{"text": "only " * 10}])
    with pytest.raises(ValueError, match="at least 2 documents"):
        load_corpus(str(one))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_corpus(str(bad))
    lacking = _write_jsonl(tmp_path / "lacking.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    with pytest.raises(ValueError, match=r"lacking\.jsonl, line 3: no field 'text' \(fields: \['body'\]\)"):
        load_corpus(str(lacking))
    not_object = _write_jsonl(tmp_path / "list.jsonl", [["text", "x"]])
    with pytest.raises(ValueError, match=r"list\.jsonl, line 1: expected a JSON object, got list"):
        load_corpus(str(not_object))
    not_string = _write_jsonl(tmp_path / "num.jsonl", [{"text": "a"}, {"text": 7}])
    with pytest.raises(ValueError, match=r"num\.jsonl, line 2: field 'text' is int, not a string"):
        load_corpus(str(not_string))
    with pytest.raises(ValueError, match="names field 'body' but field='text'"):
        load_corpus(f"jsonl:{lacking}:body", field="text")
    with pytest.raises(ValueError, match="field='text' applies to jsonl, parquet and hf"):
        load_corpus("stdlib", field="text")

    pq_path = _write_parquet(tmp_path / "cols.parquet", {"body": ["x", "y"]})
    with pytest.raises(ValueError, match=r"cols\.parquet: no column 'text' \(columns: \['body'\]\)"):
        load_corpus(str(pq_path))

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "README.md").write_text("readme " * 10)
    _write_jsonl(mixed / "d.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="mixes text and jsonl files.*jsonl:"):
        load_corpus(str(mixed))


def test_missing_pyarrow_names_the_data_extra(tmp_path, monkeypatch):
    path = _write_parquet(tmp_path / "t.parquet", {"text": ["a", "b"]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install ahm-ssm\[data\]"):
        load_corpus(str(path))


def test_missing_datasets_names_the_hf_extra_and_sets_offline_mode(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ImportError, match=r"pip install ahm-ssm\[hf\]"):
        load_corpus(f"hf:{tmp_path}")
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(FileNotFoundError, match="only local paths"):
        load_corpus("hf:deepmind/pg19")  # a hub name, not a local path: never downloaded


@pytest.mark.parametrize(
    ("names", "columns", "field", "expected"),
    [
        (["deepmind/pg19"], ["short_book_title", "publication_date", "url", "text"], None, "text"),
        (["arxiv-summarization"], ["article", "abstract"], None, "article"),
        (["ccdv/govreport-summarization"], ["report", "summary"], None, "report"),
        (["", "train", "GovReport"], ["report", "summary"], None, "report"),  # the folder above a split
        (["my_books"], ["id", "text"], None, "text"),  # unknown name: the first known field it has
        (["my_papers"], ["abstract", "article"], None, "article"),
        (["arxiv-summarization"], ["article", "abstract"], "abstract", "abstract"),  # a named field wins
    ],
)
def test_hf_text_field_maps_known_datasets(names, columns, field, expected):
    assert hf_text_field(names, columns, field) == expected


def test_hf_text_field_errors_name_the_columns():
    with pytest.raises(ValueError, match=r"no column 'report' \(the field of govreport.*columns: \['document'"):
        hf_text_field(["launch/gov_report"], ["document", "summary"])
    with pytest.raises(ValueError, match=r"cannot tell which column holds the text \(columns: \['a', 'b'\]\)"):
        hf_text_field(["mine"], ["a", "b"])
    with pytest.raises(ValueError, match="no column 'body' \\(the field you named\\)"):
        hf_text_field(["pg19"], ["text"], "body")


class _FakeDataset:
    """The part of ``datasets.Dataset`` that the hf: reader uses."""

    def __init__(self, columns: dict[str, list], dataset_name: str = "", log: list | None = None):
        self.columns, self.log = columns, log if log is not None else []
        self.column_names = list(columns)
        self.info = types.SimpleNamespace(dataset_name=dataset_name, builder_name="", config_name="")

    def select_columns(self, names):
        self.log.append(("select_columns", list(names)))
        return _FakeDataset({n: self.columns[n] for n in names}, self.info.dataset_name, self.log)

    def iter(self, batch_size):
        n = len(next(iter(self.columns.values())))
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.columns.items()}


class _FakeDatasetDict(dict):
    @property
    def column_names(self):
        return {split: d.column_names for split, d in self.items()}


def _fake_datasets(monkeypatch, on_disk: dict, log: list):
    module = types.ModuleType("datasets")
    module.config = types.SimpleNamespace(HF_DATASETS_OFFLINE=False, HF_HUB_OFFLINE=False)

    def load_from_disk(path):
        log.append(("load_from_disk", path))
        return on_disk[path]

    def load_dataset(builder, data_files, split):
        log.append(("load_dataset", builder, tuple(data_files), split))
        return _FakeDataset({"text": [f"from {Path(f).name} " * 10 for f in data_files]}, log=log)

    module.load_from_disk, module.load_dataset = load_from_disk, load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return module


def test_hf_saved_dataset_dict_reads_the_known_field_split_by_split(tmp_path, monkeypatch):
    saved = tmp_path / "pg19"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["validation", "train"]}')
    log: list = []
    books = {"short_book_title": ["t"] * 3, "url": ["u"] * 3}
    on_disk = {
        str(saved): _FakeDatasetDict(
            validation=_FakeDataset(books | {"text": [f"valid book {i} " * 10 for i in range(3)]}, log=log),
            train=_FakeDataset(books | {"text": [f"train book {i} " * 10 for i in range(3)]}, log=log),
        )
    }
    module = _fake_datasets(monkeypatch, on_disk, log)
    corpus = load_corpus(f"hf:{saved}", max_documents=5)
    # Splits in sorted order, rows in order, and reading stops after max_documents.
    assert sorted(_all_ids(corpus)) == ["train:0", "train:1", "train:2", "validation:0", "validation:1"]
    assert _texts_by_id(corpus)["validation:1"] == "valid book 1 " * 10
    assert ("select_columns", ["text"]) in log  # only the text column is read
    assert module.config.HF_DATASETS_OFFLINE is True and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_hf_field_from_folder_name_or_spec(tmp_path, monkeypatch):
    saved = tmp_path / "arxiv-summarization" / "train"
    saved.mkdir(parents=True)
    (saved / "state.json").write_text("{}")
    log: list = []
    papers = {"article": [f"article {i} " * 10 for i in range(4)], "abstract": [f"abstract {i} " * 3 for i in range(4)]}
    _fake_datasets(monkeypatch, {str(saved): _FakeDataset(papers, log=log)}, log)
    assert _texts_by_id(load_corpus(f"hf:{saved}"))["2"] == "article 2 " * 10  # from the folder's parent
    assert _texts_by_id(load_corpus(f"hf:{saved}:abstract"))["2"] == "abstract 2 " * 3
    assert _texts_by_id(load_corpus(f"hf:{saved}", field="abstract"))["3"] == "abstract 3 " * 3


def test_hf_local_data_files_use_a_packaged_builder(tmp_path, monkeypatch):
    files = tmp_path / "govreport-parquet"
    files.mkdir()
    for i in range(3):
        (files / f"train-{i}.parquet").write_bytes(b"")  # the fake builder does not read them
    log: list = []
    _fake_datasets(monkeypatch, {}, log)
    corpus = load_corpus(f"hf:{files}:text")
    call = next(entry for entry in log if entry[0] == "load_dataset")
    assert call[1] == "parquet" and call[3] == "train"
    assert call[2] == tuple(str(files / f"train-{i}.parquet") for i in range(3))  # local paths, sorted
    assert len(_all_ids(corpus)) == 3
    (files / "README.md").write_text("a dataset card is not data")
    assert len(_all_ids(load_corpus(f"hf:{files}:text"))) == 3
    (files / "extra.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"mixes data file formats \['json', 'parquet'\]"):
        load_corpus(f"hf:{files}:text")
    no_data = tmp_path / "cards"
    no_data.mkdir()
    (no_data / "README.md").write_text("only a card")
    with pytest.raises(ValueError, match="neither a dataset saved with save_to_disk nor local data files"):
        load_corpus(f"hf:{no_data}")
