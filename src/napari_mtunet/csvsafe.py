"""CSV files that are safe to open in a spreadsheet, whose rows stay rows.

Every CSV napari-mtunet writes (``labels.csv`` of a training set,
``predictions.csv`` of a batch prediction) goes through this module.  Two
problems are handled in one place:

- **Formula injection.**  Spreadsheets run a cell that starts with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return as a formula
  (``=cmd|' /C calc'!A0``).  Class names, labels and file names come from
  users and datasets, so :func:`safe_cell` prefixes such text with an
  apostrophe, which spreadsheets show as plain text.  Numbers (``int``,
  ``float``, numpy scalars) are data, not formulas, and are written as they
  are (``-0.5`` stays a number).  :func:`unescape_cell` undoes the prefix
  when napari-mtunet reads its own CSV back, so ``-1`` written as a label
  reads back as ``-1``.
- **Phantom rows.**  Python's ``csv`` module quotes a field only when it
  contains a character of the line terminator; with ``"\\n"`` line endings a
  lone ``"\\r"`` in a label is written bare, and every reader then starts a
  new row there.  :func:`writer` uses ``"\\r\\n"`` (RFC 4180), so fields with
  ``"\\r"`` or ``"\\n"`` are always quoted and parse back as one field.

No Qt, no torch: usable from any thread and from the CLI.
"""

from __future__ import annotations

import csv
import io
import numbers
from typing import Any, Iterable, TextIO

#: A cell starting with one of these is a formula to a spreadsheet (OWASP's list).
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: RFC 4180 line ending; makes the csv module quote any field holding "\r" or "\n".
LINE_TERMINATOR = "\r\n"


def safe_cell(value: Any) -> str | int | float:
    """The value as a CSV cell a spreadsheet shows as text, never runs as a formula.

    ``None`` becomes ``""``; ``bool`` becomes ``"True"``/``"False"``; real
    numbers are returned unchanged; any other value is converted with
    ``str`` and prefixed with ``'`` when it starts with one of
    :data:`FORMULA_PREFIXES`.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        return value  # type: ignore[return-value]
    text = str(value)
    if text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    """Undo :func:`safe_cell` on a cell read back: ``"'=x"`` -> ``"=x"``; anything else unchanged."""
    if len(text) >= 2 and text[0] == "'" and text[1:].startswith(FORMULA_PREFIXES):
        return text[1:]
    return text


class SafeWriter:
    """A ``csv.writer`` whose rows pass through :func:`safe_cell` and whose fields never split a row."""

    def __init__(self, fh: TextIO):
        self._writer = csv.writer(fh, lineterminator=LINE_TERMINATOR, quoting=csv.QUOTE_MINIMAL)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fh: TextIO) -> SafeWriter:
    """A :class:`SafeWriter` on a text file opened with ``newline=""``."""
    return SafeWriter(fh)


def format_row(row: Iterable[Any]) -> str:
    """One safe CSV line (with its line terminator), e.g. to append a row as soon as it is computed."""
    buf = io.StringIO()
    SafeWriter(buf).writerow(row)
    return buf.getvalue()


def format_rows(rows: Iterable[Iterable[Any]]) -> str:
    """Several safe CSV lines as one string."""
    buf = io.StringIO()
    SafeWriter(buf).writerows(rows)
    return buf.getvalue()


__all__ = ["FORMULA_PREFIXES", "LINE_TERMINATOR", "SafeWriter", "format_row", "format_rows", "safe_cell",
           "unescape_cell", "writer"]
