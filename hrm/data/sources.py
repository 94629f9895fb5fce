"""Where training text comes from: a list of documents, each read lazily from a file.

With no data flag the corpus is the running interpreter's standard-library sources: real text
present on every machine, no download.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".py", ".md", ".json")


class DataError(ValueError):
    """A data problem the user can fix; the message is one line naming it."""


def stdlib_files() -> list[Path]:
    """The interpreter's stdlib ``.py`` files (installed packages excluded), in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if excluded.isdisjoint(p.relative_to(root).parts))


def directory_files(data_dir: str | Path) -> list[Path]:
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data directory '{root}' does not exist; pass an existing --data_dir")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"no {'/'.join(TEXT_SUFFIXES)} files under '{root}'; point --data_dir at text files")
    return files


def read_text(path: Path) -> str | None:
    """The file's text, or None for binary content or invalid UTF-8 (skipped, not fatal)."""
    raw = Path(path).read_bytes()
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def corpus_files(data_dir: str) -> list[Path]:
    return directory_files(data_dir) if data_dir else stdlib_files()
