"""JSON Lines: one JSON value per "\n"-terminated line, and nothing else splits a line.

    for n, line in jsonl_lines(text):      # (1-based line number, line) of the non-blank lines
        rec = json.loads(line)

`str.splitlines()` also splits on U+2028, U+2029, U+0085, \\v, \\f and others, which JSON allows raw inside
strings (`json.dumps(..., ensure_ascii=False)` writes them so): a valid file would be cut mid-string. Every
JSONL reader in Distillery goes through here. A "\r" before the "\n" (a file saved on Windows) is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["jsonl_lines"]


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of `text`, split on "\n" only."""
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield n, line
