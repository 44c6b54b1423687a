"""The README's list of environment ids is the registry's, so the two cannot drift."""

from __future__ import annotations

from pathlib import Path

from ahm.envs.registry import env_list_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def listed_envs(text: str) -> str:
    """The markdown between the ``<!-- envs:begin -->`` and ``<!-- envs:end -->`` markers of a page."""
    return text.split("<!-- envs:begin -->")[1].split("<!-- envs:end -->")[0].strip()


def test_readme_lists_exactly_the_registered_envs():
    assert listed_envs(README.read_text()) == env_list_markdown().strip()


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
