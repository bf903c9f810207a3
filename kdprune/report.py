"""Small helpers for the files a person reads: Markdown tables, atomic text writes."""
from __future__ import annotations

from kdprune.atomic import atomic_open


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half of it."""
    with atomic_open(path) as f:
        f.write(text)
