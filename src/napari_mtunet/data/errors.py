"""Errors and problem records of the data layer.

Every failure names the file and says what is wrong.  Loaders collect
:class:`Problem` records (lenient mode) or raise :class:`DatasetValidationError`
listing all of them (strict mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Base class: a file or dataset cannot be used.  ``path`` names the file (if any)."""

    kind = "data_error"

    def __init__(self, message: str, path: str | Path | None = None, *, kind: str | None = None) -> None:
        self.path = None if path is None else str(path)
        if kind is not None:
            self.kind = kind
        self.detail = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class MissingFileError(DataError):
    kind = "missing_file"


class EmptyFileError(DataError):
    kind = "empty_file"


class TruncatedFileError(DataError):
    kind = "truncated"


class FilePermissionError(DataError):
    kind = "permission"


class UnsupportedFormatError(DataError):
    """Wrong extension, content that is not an image, or an unsupported pixel layout."""

    kind = "wrong_format"


class UnsupportedColourModelError(UnsupportedFormatError):
    """A colour model (photometric interpretation) that is refused by name rather than guessed at
    (see the table in docs/datasets.md)."""

    kind = "colour_model"


class UnreadableFileError(DataError):
    kind = "unreadable"


class ImageTooLargeError(DataError):
    """The header declares more pixels than :data:`napari_mtunet.data.io.MAX_IMAGE_PIXELS` (decompression-bomb guard)."""

    kind = "too_large"


class MaskMismatchError(DataError):
    """Mask size differs from the image size."""

    kind = "mask_size"


class LayoutError(DataError):
    """The folder does not match a known (or the requested) dataset layout."""

    kind = "layout"


class SplitError(DataError):
    kind = "split"


class OptionalDependencyError(DataError):
    kind = "missing_dependency"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    ``action`` says what the lenient loader did about it: ``"skipped"`` (the
    file is not used), ``"kept"`` (used, e.g. classification only) or
    ``"ignored"`` (a stray file that is not part of any sample).
    """

    file: str
    kind: str
    message: str
    action: str = "skipped"

    def __str__(self) -> str:
        return f"[{self.kind}] {self.file}: {self.message} ({self.action})"

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind, "message": self.message, "action": self.action}


class DatasetValidationError(DataError):
    """Strict mode: the dataset has problems; ``problems`` lists all of them."""

    kind = "invalid_dataset"

    def __init__(self, root: str | Path, problems: list[Problem], max_listed: int = 50) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:max_listed]]
        more = len(self.problems) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        msg = f"{len(self.problems)} problem(s) found (strict mode):\n  " + "\n  ".join(lines)
        super().__init__(msg, root)


class EmptyDatasetError(DataError):
    kind = "empty_dataset"
