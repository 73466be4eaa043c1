"""File helpers shared by the workflows, the CLI and the widgets (no heavy imports)."""

from __future__ import annotations

import os
import tempfile
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


def write_atomic(path: str | os.PathLike, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` via a hidden temporary file in the same folder, flushed, then renamed.

    A crash or a full disk leaves either the previous file or none, never a
    truncated one that looks complete.
    """
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
