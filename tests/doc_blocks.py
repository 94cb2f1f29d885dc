"""The code blocks of the README and of docs/*.md, as a reader copies them (helpers of the tests).

A ```python block runs unless the line right before it is ``<!-- not run: REASON -->`` (blocks
that need several machines or long runs; the reason is required)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_BLOCK = re.compile(
    r"(?:^<!-- not run:(?P<why>[^\n]*?)-->\n)?^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```$", re.S | re.M
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path, lang: str | None = None) -> list[Block]:
    """Fenced code blocks of ``path`` in order (of language ``lang`` if given)."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        if lang is not None and m["lang"] != lang:
            continue
        line = text.count("\n", 0, m.start("code"))  # 1-based line of the opening fence
        why = m["why"].strip() if m["why"] is not None else None
        out.append(Block(path, line, m["lang"], m["code"], why))
    return out


def run_python(block: Block, scope: dict) -> dict:
    """Execute a block in ``scope`` (blocks of one page share it, as in a session)."""
    exec(compile(block.code, block.where, "exec"), scope)  # noqa: S102 - the project's own examples
    return scope


def block_containing(path: Path, needle: str, lang: str = "python") -> Block:
    """The one ``lang`` block of ``path`` whose code contains ``needle``."""
    found = [b for b in blocks(path, lang) if needle in b.code]
    assert len(found) == 1, f"{path.name}: {len(found)} {lang} blocks contain {needle!r}, expected 1"
    return found[0]
