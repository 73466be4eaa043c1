"""Shared helpers of the layout readers."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, Problem
from ..formats import is_output_dir
from ..io import is_image_file
from ..samples import Sample


@dataclass
class LayoutResult:
    """What a layout reader found: samples, problems and free-form notes for the summary."""

    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Class names in their natural order when the layout defines one (e.g. ISIC columns).
    class_names: list[str] | None = None

    def problem(self, file: str | Path, kind: str, message: str, action: str = "skipped") -> None:
        self.problems.append(Problem(str(file), kind, message, action))


_SEPARATORS = re.compile(r"[\\/]+")


def member_name(value: str, folder: str | None = None) -> tuple[str | None, str, str]:
    """Check a file name read from a dataset CSV; only files directly in the dataset's folder may be named.

    Returns ``(name, "", "")`` for a plain file name (or ``<folder>/<name>``
    when ``folder`` is given), else ``(None, kind, reason)`` with kind
    ``outside_dataset`` (an absolute path, a drive letter or ``..``: it would
    read a file outside the dataset root) or ``bad_filename`` (empty, a NUL
    byte, or a path into another sub-folder).  Backslashes count as
    separators, so a Windows path cannot slip through on POSIX.
    """
    v = str(value).strip()
    if not v or "\0" in v:
        return None, "bad_filename", "empty file name" if not v else "the file name contains a NUL byte"
    parts = _SEPARATORS.split(v)
    absolute = v.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", v))
    if absolute or ".." in parts:
        return None, "outside_dataset", (
            f"{v[:200]!r} points outside the dataset (an absolute path or '..'); only files under the dataset "
            "root are read"
        )
    parts = [q for q in parts if q not in ("", ".")]
    if folder is not None and len(parts) == 2 and parts[0] == folder:
        parts = parts[1:]
    if len(parts) != 1:
        where = f"{folder}/" if folder else "the dataset folder"
        return None, "bad_filename", f"{v[:200]!r} is not a file name in {where}"
    return parts[0], "", ""


def natural_key(text: str) -> list:
    """Sort key that orders ``benign (2)`` before ``benign (10)``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def list_files(folder: Path) -> list[Path]:
    """Visible files of a folder, naturally sorted."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def list_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders, naturally sorted; folders napari-mtunet wrote outputs into (run folders,
    predictions: :func:`~napari_mtunet.data.formats.is_output_dir`) are never data."""
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")) and not is_output_dir(p)),
        key=lambda p: natural_key(p.name),
    )


def image_files(folder: Path) -> list[Path]:
    return [p for p in list_files(folder) if is_image_file(p)]


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV with a header; header names are stripped (SIIM's ``" EncodedPixels"``)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError("CSV file is empty (no header)", path, kind="bad_csv") from None
            rows = []
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) > len(header):
                    raise DataError(
                        f"line {lineno} has {len(row)} fields but the header has {len(header)}", path, kind="bad_csv"
                    )
                d = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
                d["__line__"] = str(lineno)
                rows.append(d)
            return header, rows
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV is not UTF-8 text ({exc})", path, kind="bad_csv") from exc
    except OSError as exc:
        raise DataError(f"cannot read CSV ({exc})", path, kind="unreadable") from exc


def csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return []
    return [h.strip() for h in next(csv.reader([first]), [])]


def find_files(root: Path, pattern: str, max_depth: int = 3) -> list[Path]:
    """Files matching a glob pattern in ``root`` and up to ``max_depth`` levels below."""
    out: list[Path] = []
    for depth in range(max_depth + 1):
        out.extend(p for p in root.glob("/".join(["*"] * depth + [pattern])) if p.is_file())
    # nothing under a folder napari-mtunet wrote outputs into (below the root) is data
    marked = {q for p in out for q in p.relative_to(root).parents if q != Path(".") and is_output_dir(root / q)}
    return sorted({p for p in set(out) if not any(m in p.relative_to(root).parents for m in marked)},
                  key=lambda p: natural_key(str(p)))


