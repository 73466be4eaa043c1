"""The Sample record: what every dataset layout produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One training/evaluation example.

    ``masks`` may hold several files (BUSI ``_mask_1.png`` ...) that are OR-ed
    together; an empty tuple means "no lesion" only when ``mask_is_empty`` is
    True, otherwise "no mask available" (classification only).  ``region``
    (x, y, w, h at ``level``) addresses a patch of a large slide (PANDA).
    ``rle`` holds run-length encoded masks (SIIM) instead of files.
    """

    image: Path
    label: str | None
    masks: tuple[Path, ...] = ()
    group: str | None = None
    source: str = "generic"
    mask_is_empty: bool = False
    rle: tuple[str, ...] = ()
    region: tuple[int, int, int, int] | None = None
    level: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """A stable identifier (file path, plus the region for slide patches)."""
        base = str(self.image)
        if self.region is not None:
            x, y, w, h = self.region
            base += f"@L{self.level}:{x},{y},{w},{h}"
        return base

    @property
    def has_mask(self) -> bool:
        return bool(self.masks) or bool(self.rle) or self.mask_is_empty
