"""MkDocs hook: the docstrings' Sphinx roles (``:class:`~ahm.x.Y```) render as plain code (``Y``).

The docstrings are read by Sphinx-minded tools and by this site alike; mkdocstrings renders the role's
name literally (``:class:<code>~ahm.x.Y</code>``), so this drops the role and, as Sphinx does for a
leading ``~``, keeps only the last component of the dotted name.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|term):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: object) -> str:
    """The page's HTML with every ``:role:<code>...</code>`` replaced by its ``<code>...</code>``."""
    return _ROLE.sub(_code, html)
