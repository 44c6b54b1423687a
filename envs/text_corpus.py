"""Byte-level text corpora: the built-in default, text folders, JSON Lines, Parquet and local HF datasets.

The built-in corpus is the Python standard library's own source files, read as
long documents: it is on every machine that has Python and needs no download.
User corpora are read from local files only; nothing is ever downloaded.

Source specs
------------
:func:`load_corpus` takes one string that names the source::

    stdlib                          the built-in corpus (this interpreter's standard library sources)
    <folder>                        text files (*.txt, *.md, *.py) under the folder, or, if the folder
                                    holds only *.jsonl or only *.parquet files, those
    <file>.jsonl  | <glob>.jsonl    JSON Lines: one JSON object per line, text in field "text"
    <file>.parquet | <glob>.parquet Parquet: text in column "text"
    text:<folder>                   force the text-folder reader
    jsonl:<file|folder|glob>[:field]
    parquet:<file|folder|glob>[:field]
    hf:<local path>[:field]         a Hugging Face dataset saved with ``save_to_disk`` (read with
                                    ``datasets.load_from_disk``), or local data files (*.parquet,
                                    *.jsonl / *.json, *.arrow) read with the packaged ``datasets`` builders

The optional ``:field`` suffix (or the ``field=`` argument of :func:`load_corpus`)
names the text field. Without one, JSONL and Parquet read ``text``; a Hugging
Face dataset whose name (its info, its folder or that folder's parent) contains a known
dataset gets that dataset's published text field (:data:`HF_TEXT_FIELDS`:
PG-19 ``text``, arXiv summarization ``article``, GovReport ``report``), and
otherwise the first of those fields that it has. A saved ``DatasetDict`` is
read split by split in sorted split order; point at ``<path>/train`` to read
one split only.

Examples: ``"data/*.jsonl"``, ``"jsonl:data/books.jsonl:body"``,
``"parquet:/data/pg19"``, ``"hf:/data/arxiv-summarization"``, ``"hf:/data/pg19/train:text"``.

Optional extras: Parquet needs ``pyarrow`` (``pip install ahm-ssm[data]``),
``hf:`` needs ``datasets`` (``pip install ahm-ssm[hf]``); both are imported
only when such a source is loaded.

The held-out split
------------------
Every document has a stable id: its path relative to the corpus root, plus
``:<line>`` (JSONL, 1-based line number) or ``:<row>`` (Parquet, 0-based row;
HF: ``<split>:<row>``). A document is held out when the CRC-32 of its id falls
below ``heldout_fraction * 2**32``, so the split is the same on every machine,
does not depend on which other documents are loaded, and never mixes one
document's bytes across the two sides.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import sysconfig
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ByteCorpus",
    "CorpusSource",
    "HF_TEXT_FIELDS",
    "hf_text_field",
    "load_corpus",
    "parse_source",
    "stdlib_source_files",
]

# Byte that separates documents in the concatenated training array: NUL does not
# occur in text files, so a model can learn that it starts a new document.
DOC_SEPARATOR = 0

TEXT_SUFFIXES = (".txt", ".md", ".py")
"""Files a text folder reads."""

DEFAULT_FIELD = "text"
"""The text field of JSONL and Parquet sources when none is named."""

HF_TEXT_FIELDS: dict[str, str] = {
    "pg19": "text",  # deepmind/pg19: short_book_title, publication_date, url, text
    "arxiv": "article",  # ccdv/arxiv-summarization: article, abstract
    "govreport": "report",  # ccdv/govreport-summarization: report, summary
}
"""Known datasets (a substring of the normalised name) and the field that holds their long text."""

KINDS = ("stdlib", "text", "jsonl", "parquet", "hf")
"""Source kinds; all but ``stdlib`` can be forced with a ``<kind>:`` prefix."""

_GLOB_CHARS = re.compile(r"[*?\[]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$")  # two letters or more: never a Windows drive


def stdlib_source_files() -> list[Path]:
    """The ``.py`` files of this interpreter's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def _is_heldout(doc_id: str, heldout_fraction: float) -> bool:
    return zlib.crc32(doc_id.encode()) < heldout_fraction * 2**32


@dataclass
class ByteCorpus:
    """Documents as uint8 arrays, split by document into train and held-out.

    ``train_ids`` / ``heldout_ids`` are the documents' stable ids (see the module
    docstring), in the same order as ``train`` / ``heldout``; empty when unknown.
    """

    train: list[np.ndarray]
    heldout: list[np.ndarray]
    name: str
    train_ids: list[str] = dataclass_field(default_factory=list)
    heldout_ids: list[str] = dataclass_field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.train or not any(len(d) for d in self.train):
            raise ValueError(f"corpus {self.name!r} has no training text (all documents empty?)")
        if not self.heldout:
            raise ValueError(
                f"corpus {self.name!r} has no held-out document; add documents or raise heldout_fraction"
            )
        self._flat = np.concatenate(
            [np.append(d, np.uint8(DOC_SEPARATOR)) for d in self.train]
        )

    @property
    def train_bytes(self) -> int:
        return sum(len(d) for d in self.train)

    def sample_windows(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``batch`` random windows of ``length + 1`` bytes (inputs and shifted targets)."""
        if len(self._flat) <= length + 1:
            raise ValueError(
                f"corpus {self.name!r}: its training text ({len(self._flat)} bytes) is shorter than one training "
                f"sequence of {length + 1} bytes (--seq-len); lower --seq-len or add documents"
            )
        starts = rng.integers(0, len(self._flat) - length - 1, size=batch)
        return np.stack([self._flat[s : s + length + 1] for s in starts])


# ---------------------------------------------------------------------------------------------------------------
# Source specs


@dataclass(frozen=True)
class CorpusSource:
    """A parsed source spec: which reader, which files, which field."""

    kind: str
    """One of :data:`KINDS`."""
    root: Path
    """Document ids are paths relative to this folder."""
    paths: tuple[Path, ...] = ()
    """The files to read, sorted (``hf``: the one local path given)."""
    field: str | None = None
    """The text field (JSONL, Parquet, HF); ``None``: the default for the kind."""


_USAGE = (
    "expected 'stdlib', a folder, *.jsonl or *.parquet file(s), or '<kind>:<path>[:field]' "
    "with kind in text, jsonl, parquet, hf (see ahm.envs.text_corpus)"
)


def _split_field(rest: str) -> tuple[str, str | None]:
    """``"<path>[:field]"`` -> (path, field); a colon that is part of an existing path stays in it."""
    if Path(rest).exists() or ":" not in rest:
        return rest, None
    path, tail = rest.rsplit(":", 1)
    if not tail or "/" in tail or "\\" in tail:
        return rest, None
    return path, tail


def _expand(path: str, suffixes: Sequence[str], what: str) -> tuple[Path, tuple[Path, ...]]:
    """A file, a folder (searched recursively for ``suffixes``) or a glob -> (root, sorted files)."""
    if _GLOB_CHARS.search(path):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"{what} pattern {path!r} matches no files; check the path and the pattern")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        return root, tuple(files)
    p = Path(path)
    if p.is_file():
        return p.parent, (p,)
    if p.is_dir():
        return p, tuple(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(tuple(suffixes))))
    raise FileNotFoundError(f"{what} {path!r} does not exist; give an existing file, folder or glob pattern")


def parse_source(spec: str | os.PathLike[str]) -> CorpusSource:
    """Parse a source spec (see the module docstring) and find its files.

    Raises:
        FileNotFoundError: the path does not exist, or a pattern matches nothing.
        ValueError: the spec names no known kind, or a folder mixes formats.
    """
    spec = os.fspath(spec)
    if spec == "stdlib":
        return CorpusSource("stdlib", Path(sysconfig.get_paths()["stdlib"]), tuple(stdlib_source_files()))
    scheme = _SCHEME.match(spec)
    if scheme and not Path(spec).exists():
        kind, rest = scheme.group(1), scheme.group(2)
        if kind not in KINDS or kind == "stdlib":
            raise ValueError(f"unknown source spec {spec!r}: no source kind {kind!r}; {_USAGE}")
        if kind == "text":
            return _text_folder(rest)
        path, text_field = _split_field(rest)
        if kind == "hf":
            if not Path(path).exists():
                raise FileNotFoundError(
                    f"hf dataset path {path!r} does not exist; hf: reads only local paths (save the dataset "
                    "with datasets' save_to_disk, or download its data files, first)"
                )
            return CorpusSource("hf", Path(path), (Path(path),), text_field)
        suffix = ".jsonl" if kind == "jsonl" else ".parquet"
        root, files = _expand(path, (suffix,), f"{kind} source")
        return CorpusSource(kind, root, files, text_field)
    # A plain path: the file suffix or the folder's contents decide the reader.
    for kind, suffix in (("jsonl", ".jsonl"), ("parquet", ".parquet")):
        if spec.endswith(suffix):
            root, files = _expand(spec, (suffix,), f"{kind} source")
            return CorpusSource(kind, root, files)
    path = Path(spec)
    if path.is_file():
        raise ValueError(f"unknown source spec {spec!r}: cannot tell the format of file {path.name!r}; {_USAGE}")
    if _GLOB_CHARS.search(spec):
        raise ValueError(f"unknown source spec {spec!r}: a pattern must end in .jsonl or .parquet; {_USAGE}")
    if not path.is_dir():
        raise FileNotFoundError(f"corpus folder {spec!r} does not exist or is not a folder; {_USAGE}")
    found = {
        kind: sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(suffixes))
        for kind, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", (".jsonl",)), ("parquet", (".parquet",)))
    }
    present = [kind for kind, files in found.items() if files]
    if len(present) > 1:
        raise ValueError(
            f"corpus folder {spec!r} mixes {' and '.join(present)} files; "
            f"say which to read with a prefix: {', '.join(f'{k}:{spec}' for k in present)}"
        )
    kind = present[0] if present else "text"
    return CorpusSource(kind, path, tuple(found[kind]))


def _text_folder(path: str) -> CorpusSource:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {path!r} does not exist or is not a folder")
    files = tuple(sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
    return CorpusSource("text", root, files)


# ---------------------------------------------------------------------------------------------------------------
# Readers: each yields (stable document id, document text as bytes), in a fixed order.

Documents = Iterator[tuple[str, bytes]]


def _utf8(text: str) -> bytes:
    # JSON may carry lone surrogates ("\ud800"), which UTF-8 cannot encode: they become "?".
    return text.encode("utf-8", errors="replace")


def _read_files(source: CorpusSource) -> Documents:
    for path in source.paths:
        yield path.relative_to(source.root).as_posix(), path.read_bytes()


def _read_jsonl(source: CorpusSource) -> Documents:
    text_field = source.field or DEFAULT_FIELD
    for path in source.paths:
        rel = path.relative_to(source.root).as_posix()
        with path.open("rb") as lines:
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                    raise ValueError(
                        f"{path}, line {lineno}: not valid JSON ({e}); each line of a JSON Lines file must be "
                        "one JSON object"
                    ) from None
                except RecursionError:  # json's parser recurses once per nesting level
                    raise ValueError(
                        f"{path}, line {lineno}: JSON nested too deeply to read; each line of a JSON Lines file "
                        "must be one JSON object with a text field"
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
                    )
                if text_field not in record:
                    raise ValueError(
                        f"{path}, line {lineno}: no field {text_field!r} (fields: {sorted(record)}); "
                        f"name the text field with field=... or 'jsonl:<path>:<field>'"
                    )
                text = record[text_field]
                if not isinstance(text, str):
                    raise ValueError(
                        f"{path}, line {lineno}: field {text_field!r} is {type(text).__name__}, not a string"
                    )
                yield f"{rel}:{lineno}", _utf8(text)


def _import_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"reading Parquet files needs pyarrow, which is not installed ({e}); "
            "install the data extra: pip install ahm-ssm[data]"
        ) from e
    return pq


def _read_parquet(source: CorpusSource) -> Documents:
    pq = _import_parquet()
    text_field = source.field or DEFAULT_FIELD
    for path in source.paths:
        rel = path.relative_to(source.root).as_posix()
        try:
            parquet = pq.ParquetFile(path)
            columns = parquet.schema_arrow.names
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError: a corrupted or non-Parquet file
            raise ValueError(f"{path}: not a readable Parquet file ({e}); check the file, or give its text as "
                             "JSON Lines") from None
        if text_field not in columns:
            raise ValueError(
                f"{path}: no column {text_field!r} (columns: {columns}); "
                "name the text column with field=... or 'parquet:<path>:<field>'"
            )
        row = 0
        for batch in _parquet_batches(parquet, text_field, path):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str):
                    yield f"{rel}:{row}", _utf8(text)
                elif isinstance(text, bytes):
                    yield f"{rel}:{row}", text
                else:
                    raise ValueError(
                        f"{path}, row {row}: column {text_field!r} holds {type(text).__name__}, not text"
                    )
                row += 1


def _parquet_batches(parquet: Any, column: str, path: Path) -> Any:
    """The record batches of ``column`` (one column, batch by batch: bounded memory); errors name ``path``."""
    batches = parquet.iter_batches(columns=[column])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, ValueError) as e:  # a truncated or corrupted row group
            raise ValueError(f"{path}: a row group of the Parquet file cannot be read ({e}); the file is "
                             "corrupted or truncated") from None
        yield batch


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def hf_text_field(names: Sequence[str], columns: Sequence[str], field: str | None = None) -> str:
    """The text field of a Hugging Face dataset.

    Args:
        names: what the dataset is called, most specific first (its info's dataset
            and builder names, then its folder and that folder's parent).
        columns: the dataset's column names.
        field: the field the user named, if any: always wins.

    Returns the user's field; else the field of the first known dataset in
    :data:`HF_TEXT_FIELDS` that a name contains (``"deepmind/pg19"`` -> ``text``,
    ``"arxiv-summarization"`` -> ``article``, ``"govreport"`` -> ``report``); else
    the first of those fields that ``columns`` holds.

    Raises:
        ValueError: the chosen field is not a column, or no field can be chosen.
    """
    if field is None:
        for name in names:
            known = [key for key in HF_TEXT_FIELDS if key in _normalise(name)]
            if known:
                field = HF_TEXT_FIELDS[known[0]]
                why = f"the field of {known[0]} datasets (from the name {name!r})"
                break
        else:
            candidates = [f for f in dict.fromkeys(HF_TEXT_FIELDS.values()) if f in columns]
            if not candidates:
                raise ValueError(
                    f"cannot tell which column holds the text (columns: {list(columns)}); "
                    "name it with field=... or 'hf:<path>:<field>'"
                )
            field, why = candidates[0], "a known text field"
    else:
        why = "the field you named"
    if field not in columns:
        raise ValueError(
            f"the dataset has no column {field!r} ({why}); columns: {list(columns)}; "
            "name the text field with field=... or 'hf:<path>:<field>'"
        )
    return field


def _import_datasets() -> Any:
    # Offline before import: datasets reads these when it is imported; hf: never downloads.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"reading 'hf:' sources needs the Hugging Face datasets library, which is not installed ({e}); "
            "install the hf extra: pip install ahm-ssm[hf]"
        ) from e
    config = getattr(datasets, "config", None)
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # in case it was imported before us
        if config is not None and hasattr(config, flag):
            setattr(config, flag, True)
    return datasets


_HF_DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


def _open_hf(datasets: Any, path: Path) -> dict[str, Any]:
    """A local HF dataset as ``{split: Dataset}`` (split ``""`` for a single ``Dataset``)."""
    saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))
    if saved:
        loaded = datasets.load_from_disk(str(path))
    else:
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*") if f.is_file() and f.suffix in _HF_DATA_FILES
        )
        builders = {_HF_DATA_FILES.get(f.suffix) for f in files}
        if not files or None in builders:
            raise ValueError(
                f"hf path {str(path)!r} is neither a dataset saved with save_to_disk nor local data files "
                f"({', '.join(_HF_DATA_FILES)})"
            )
        if len(builders) > 1:
            raise ValueError(f"hf path {str(path)!r} mixes data file formats {sorted(builders)}; keep one")
        loaded = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
    if hasattr(loaded, "column_names") and isinstance(loaded.column_names, dict):  # a DatasetDict
        return {split: loaded[split] for split in sorted(loaded.keys())}
    return {"": loaded}


def _read_hf(source: CorpusSource) -> Documents:
    datasets = _import_datasets()
    path = source.paths[0]
    for split, dataset in _open_hf(datasets, path).items():
        info = getattr(dataset, "info", None)
        names = [getattr(info, attr, None) or "" for attr in ("dataset_name", "builder_name", "config_name")]
        resolved = path.resolve()  # the dataset's folder and its parent (``pg19/train``), not folders far above
        names += [resolved.name, resolved.parent.name]
        text_field = hf_text_field([n for n in names if n], dataset.column_names, source.field)
        prefix = f"{split}:" if split else ""
        rows = dataset.select_columns([text_field]).iter(batch_size=64)
        row = 0
        for batch in rows:
            for text in batch[text_field]:
                if not isinstance(text, str):
                    raise ValueError(
                        f"{path} {split or ''} row {row}: field {text_field!r} is {type(text).__name__}, not text"
                    )
                yield f"{prefix}{row}", _utf8(text)
                row += 1


_READERS: dict[str, Callable[[CorpusSource], Documents]] = {
    "stdlib": _read_files,
    "text": _read_files,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "hf": _read_hf,
}


# ---------------------------------------------------------------------------------------------------------------


def load_corpus(
    source: str | os.PathLike[str] = "stdlib",
    heldout_fraction: float = 0.05,
    max_documents: int = 0,
    field: str | None = None,
) -> ByteCorpus:
    """Load a corpus from a source spec and split it by document into train and held-out.

    Args:
        source: a source spec (module docstring): ``"stdlib"``, a folder, ``*.jsonl`` / ``*.parquet``
            file(s), or ``"<kind>:<path>[:field]"`` with kind ``text``, ``jsonl``, ``parquet`` or ``hf``.
        heldout_fraction: share of documents (by the stable hash of their id) held out, in (0, 1).
        max_documents: keep only the first N documents in reading order (files sorted, rows in
            file order; 0: all). Reading stops there, so a large corpus can be sampled cheaply.
        field: the text field of JSONL, Parquet and HF sources (default: ``text``, or the known
            dataset's field for ``hf:``); the same as a ``:field`` suffix on the spec.

    Returns:
        A :class:`ByteCorpus` of (n_bytes,) uint8 documents (UTF-8; NUL bytes removed, since NUL
        separates documents) with their ids.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
        ValueError: an unknown spec; a bad JSONL line or missing field / column (the message
            names the file and line or row); fewer than 2 documents; no text at all.
        ImportError: the optional library for Parquet (``ahm-ssm[data]``) or ``hf:`` (``ahm-ssm[hf]``)
            is not installed.

    If the hash holds out no document (small corpora), the last one is held out; if it holds out
    every document, the first one is trained on.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    if max_documents < 0:
        raise ValueError(f"max_documents must be >= 0 (0: all), got {max_documents}")
    name = os.fspath(source)
    parsed = parse_source(name)
    if field is not None:
        if parsed.kind in ("stdlib", "text"):
            raise ValueError(f"field={field!r} applies to jsonl, parquet and hf sources, not to {parsed.kind!r}")
        if parsed.field is not None and parsed.field != field:
            raise ValueError(f"the spec {name!r} names field {parsed.field!r} but field={field!r}; give one")
        parsed = CorpusSource(parsed.kind, parsed.root, parsed.paths, field)
    documents = _READERS[parsed.kind](parsed)
    if max_documents:
        documents = itertools.islice(documents, max_documents)
    train: list[np.ndarray] = []
    heldout: list[np.ndarray] = []
    train_ids: list[str] = []
    heldout_ids: list[str] = []
    for doc_id, text in documents:
        data = np.frombuffer(text, dtype=np.uint8)
        data = data[data != DOC_SEPARATOR]
        if _is_heldout(doc_id, heldout_fraction):
            heldout.append(data)
            heldout_ids.append(doc_id)
        else:
            train.append(data)
            train_ids.append(doc_id)
    n = len(train) + len(heldout)
    if n == 0:
        what = "*.txt, *.md, *.py" if parsed.kind == "text" else f"{parsed.kind} records"
        raise ValueError(f"corpus {name!r} contains no documents ({what})")
    if n < 2:
        raise ValueError(f"corpus {name!r} needs at least 2 documents (one is held out), found {n}")
    if not any(len(d) for d in itertools.chain(train, heldout)):
        raise ValueError(f"corpus {name!r} has no training text: all {n} documents are empty")
    if not heldout:  # small corpora: the hash held nothing out, so hold out the last document
        heldout.append(train.pop())
        heldout_ids.append(train_ids.pop())
    if not train:  # the hash held everything out: train on the first document
        train.append(heldout.pop(0))
        train_ids.append(heldout_ids.pop(0))
    return ByteCorpus(train=train, heldout=heldout, name=name, train_ids=train_ids, heldout_ids=heldout_ids)
