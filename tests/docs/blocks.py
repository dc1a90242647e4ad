"""Fenced code blocks of a Markdown page, for the tests that run the docs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_MARK = "<!-- docs-test: skip -->"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text, and whether the page marks it not to run."""

    lang: str
    text: str
    skip: bool


def blocks(page: Path, lang: str) -> list[Block]:
    """The page's fenced blocks of `lang`, in order."""
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        skip = bool(before) and before[-1].strip() == SKIP_MARK
        if match.group(1) == lang:
            found.append(Block(lang=lang, text=match.group(2), skip=skip))
    return found
