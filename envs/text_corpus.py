"""Byte-level text corpora: the built-in default and a folder of text files.

The built-in corpus is the Python standard library's own source files, read as
long documents: it is on every machine that has Python and needs no download.
Documents are split into train / held-out by a stable hash of their relative
path, so the split is the same on every machine and never mixes a document's
bytes across the two sides.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ByteCorpus", "stdlib_source_files", "load_corpus"]

# Byte that separates documents in the concatenated training array: NUL does not
# occur in text files, so a model can learn that it starts a new document.
DOC_SEPARATOR = 0


def stdlib_source_files() -> list[Path]:
    """The ``.py`` files of this interpreter's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def _is_heldout(relative: str, heldout_fraction: float) -> bool:
    return zlib.crc32(relative.encode()) < heldout_fraction * 2**32


@dataclass
class ByteCorpus:
    """Documents as uint8 arrays, split by document into train and held-out."""

    train: list[np.ndarray]
    heldout: list[np.ndarray]
    name: str

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
                f"training text ({len(self._flat)} bytes) is shorter than one window ({length + 1})"
            )
        starts = rng.integers(0, len(self._flat) - length - 1, size=batch)
        return np.stack([self._flat[s : s + length + 1] for s in starts])


def load_corpus(source: str = "stdlib", heldout_fraction: float = 0.05, max_documents: int = 0) -> ByteCorpus:
    """Load ``"stdlib"`` (the built-in corpus) or a folder of ``*.txt`` / ``*.md`` / ``*.py`` files.

    Args:
        source: ``"stdlib"`` or a path to a folder.
        heldout_fraction: share of documents (by stable path hash) held out.
        max_documents: keep only the first N documents in sorted order (0: all).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: fewer than 2 documents, or no training text after the split.

    If the hash holds out no document (small corpora), the last one is held out.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = stdlib_source_files()
    else:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"corpus folder {str(root)!r} does not exist or is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix in {".txt", ".md", ".py"} and p.is_file())
    if max_documents:
        files = files[:max_documents]
    if not files:
        raise ValueError(f"corpus {source!r} contains no documents (*.txt, *.md, *.py)")
    if len(files) < 2:
        raise ValueError(f"corpus {source!r} needs at least 2 documents (one is held out), found {len(files)}")
    train, heldout = [], []
    for path in files:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        data = data[data != DOC_SEPARATOR]
        (heldout if _is_heldout(str(path.relative_to(root)), heldout_fraction) else train).append(data)
    if not heldout:  # small corpora: the hash held nothing out, so hold out the last document
        heldout.append(train.pop())
    return ByteCorpus(train=train, heldout=heldout, name=source)
