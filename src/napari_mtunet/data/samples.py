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
    ``page`` selects one page of a multi-page TIFF; ``mask_values`` lists the
    mask label values that are foreground (default: any non-zero).
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
    #: Page of a multi-page TIFF (generic layout); None for single-page files.
    page: int | None = None
    #: Label values of the mask file(s) that count as foreground (PANDA cancer
    #: grades); None means "any non-zero pixel".
    mask_values: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """A stable identifier (file path, plus the region for slide patches)."""
        base = str(self.image)
        if self.page is not None:
            base += f"#page{self.page}"
        if self.region is not None:
            x, y, w, h = self.region
            base += f"@L{self.level}:{x},{y},{w},{h}"
        return base

    @property
    def has_mask(self) -> bool:
        return bool(self.masks) or bool(self.rle) or self.mask_is_empty
