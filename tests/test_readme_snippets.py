"""The README's and the docs' Python snippets run as written (users copy them).

Every ```python block of README.md runs; a block of a docs page runs when the line before its fence is
``<!-- runnable -->``. Each runs in a fresh namespace, in a temporary working directory (snippets that save
write there). Snippets keep their own sizes small, so the test runs them unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = "<!-- runnable -->"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def python_blocks(page: Path, every: bool) -> list[str]:
    """The page's ```python blocks: all of them (``every``) or those marked runnable on the line above."""
    text = "\n" + page.read_text()
    return [m["code"] for m in _BLOCK.finditer(text) if every or m["before"].strip() == RUNNABLE]


SNIPPETS = [(f"README.md[{i}]", code) for i, code in enumerate(python_blocks(ROOT / "README.md", every=True))] + [
    (f"docs/{page.name}[{i}]", code) for page in sorted((ROOT / "docs").glob("*.md"))
    for i, code in enumerate(python_blocks(page, every=False))]


def test_the_readme_has_snippets_and_docs_mark_some():
    names = [name for name, _ in SNIPPETS]
    assert sum(n.startswith("README") for n in names) >= 4
    assert any(n.startswith("docs/") for n in names)
    backbone = [code for _, code in SNIPPETS if "MambaLM" in code]
    assert backbone and all("torch.no_grad()" in code for code in backbone)  # constant memory needs it


@pytest.mark.parametrize("name, code", SNIPPETS, ids=[name for name, _ in SNIPPETS])
def test_snippet_runs(name, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__snippet__"})
    finally:
        torch.set_num_threads(threads)
    if "print(" in code:
        assert capsys.readouterr().out.strip(), f"{name} prints nothing"
