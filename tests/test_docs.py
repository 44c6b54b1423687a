"""The documentation site (``mkdocs.yml``, ``docs/``) and the README stay consistent with the code.

Checked without MkDocs installed: the env list is the registry's, every page of the nav exists, every
``::: module`` of the API pages names a module that exists, every relative link of the README and the
docs points at a file, nothing links outside the repository (``../shared``), and the README stays short.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from ahm.envs.registry import env_list_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 260
"""A user's README: what it is, the two commands, quick starts, one results table (the rest is in docs/)."""



def listed_envs(text: str) -> str:
    """The markdown between the ``<!-- envs:begin -->`` and ``<!-- envs:end -->`` markers of a page."""
    return text.split("<!-- envs:begin -->")[1].split("<!-- envs:end -->")[0].strip()


PAGES = sorted(DOCS.rglob("*.md"))
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
"""A markdown link's target, without its anchor: ``[text](target#anchor)``."""


def nav_pages() -> list[str]:
    """The ``*.md`` paths named in ``mkdocs.yml``'s nav (read line by line: PyYAML is a docs-only dependency)."""
    lines = (ROOT / "mkdocs.yml").read_text().splitlines()
    start = lines.index("nav:")
    pages = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):  # the next top-level key ends the nav
            break
        match = re.search(r":\s*(\S+\.md)\s*$", line)
        if match:
            pages.append(match.group(1))
    return pages


def test_docs_list_exactly_the_registered_envs():
    assert listed_envs((DOCS / "environments.md").read_text()) == env_list_markdown().strip()


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    nav = nav_pages()
    assert "index.md" in nav and len(nav) == len(set(nav))
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist in docs/: {missing}"
    orphans = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in nav]
    assert not orphans, f"pages in docs/ missing from mkdocs.yml's nav: {orphans}"


def test_every_api_block_names_an_existing_module():
    blocks = [(page.name, m) for page in (DOCS / "api").glob("*.md")
              for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)]
    assert len(blocks) > 30
    missing = [(page, m) for page, m in blocks if importlib.util.find_spec(m) is None]
    assert not missing, f"API pages document modules that do not exist: {missing}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_nothing_links_outside_the_repository(page: Path):
    text = page.read_text()
    assert "../shared" not in text and "proposal.md" not in text, f"{page.name} refers to files users do not have"
    targets = [t for t in _LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    broken = [t for t in targets if not (page.parent / t).resolve().exists()]
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move details to docs/ (at most {MAX_README_LINES})"
