"""File-name helpers shared by the CLI and the widgets (no heavy imports)."""

from __future__ import annotations

from pathlib import Path


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``stem-1.ext``, ``stem-2.ext`` ... (never overwrite user files)."""
    path = Path(path)
    if not path.exists():
        return path
    suffix = "".join(path.suffixes) if path.name.count(".") <= 2 else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    for i in range(1, 100000):
        cand = path.with_name(f"{stem}-{i}{suffix}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"{path}: cannot find a free file name")
