"""One JSON fallback for numpy / torch scalars and arrays and paths (checkpoints, reports, events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy/torch scalars and arrays, paths."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return obj.tolist()  # numpy arrays and scalars, torch tensors
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
