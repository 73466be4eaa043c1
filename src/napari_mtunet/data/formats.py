"""Which files are images, what format a file really is, and the checks before any decoding.

- :func:`sniff_format` identifies PNG, JPEG, BMP, TIFF and DICOM from the
  first bytes; :func:`resolve_format` lets the content win over a wrong
  extension (a JPEG saved as ``.png``) and names a mislabelled file.
- :func:`check_file` says precisely what is wrong with a path (missing,
  broken link, folder, empty, unreadable).
- :data:`MAX_IMAGE_PIXELS` is the one decompression-bomb limit of every
  reader, checked from headers before anything is allocated.
- :func:`classify_decode_error` turns any decoder's exception into a
  :class:`~.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from .errors import (
    DataError,
    EmptyFileError,
    FilePermissionError,
    ImageTooLargeError,
    MissingFileError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedFormatError,
)

#: File extensions treated as images, by format.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "bmp": (".bmp",),
    "tiff": (".tif", ".tiff"),
    "dicom": (".dcm", ".dicom"),
}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(e for exts in EXTENSIONS.values() for e in exts)

#: The most pixels (height x width) one decoded image may have, for every format
#: (PNG, JPEG, BMP, TIFF, DICOM) and for a window read from a slide.  It is
#: checked from the header before anything is decoded or allocated, so a small
#: file declaring 100000 x 100000 pixels (a "decompression bomb") is refused
#: cheaply.  The value is Pillow's own error threshold (2 x 89,478,485), so PNG
#: and TIFF share one limit.  Gigapixel slides are read in windows
#: (:func:`~.pyramid.read_region`), each of which must fit.
MAX_IMAGE_PIXELS = 178_956_970


def check_pixel_count(height: int, width: int, path: str | Path | None, *, what: str = "image") -> None:
    """Raise :class:`ImageTooLargeError` when ``height x width`` exceeds :data:`MAX_IMAGE_PIXELS`."""
    n = int(height) * int(width)
    if n > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"{what} declares {int(width)} x {int(height)} = {n:,} pixels, more than the limit of "
            f"{MAX_IMAGE_PIXELS:,} for any format (decompression bomb guard: the header may be forged). "
            "Tile or downsample the image first",
            path,
        )


#: The marker file of a folder napari-mtunet wrote outputs into (hidden: dataset readers skip dot files); such
#: a folder is never read as data (the rule for outputs: :mod:`napari_mtunet.outputs`).
OUTPUT_MARKER = ".mtunet-output"


def is_output_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is one napari-mtunet wrote outputs into (it carries :data:`OUTPUT_MARKER`).

    Only the folder itself counts: its parents may be the user's (a marked run folder inside ``~/work``
    must not make ``~/work/scans`` an output folder).  Sub-folders napari-mtunet fills (``masks/``) carry
    their own marker.
    """
    return (Path(folder) / OUTPUT_MARKER).is_file()


def is_image_file(path: str | Path) -> bool:
    """True when the extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def format_from_extension(path: Path) -> str | None:
    ext = path.suffix.lower()
    for fmt, exts in EXTENSIONS.items():
        if ext in exts:
            return fmt
    return None


def sniff_format(path: str | Path) -> str | None:
    """Identify an image file from its first bytes (``png``, ``jpeg``, ``bmp``, ``tiff``, ``dicom``)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def check_file(path: str | Path, *, what: str = "file") -> Path:
    """Raise a specific :class:`DataError` if ``path`` is missing, a folder, empty or unreadable."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            try:
                p.resolve(strict=True)
                detail = "is a broken symbolic link"
            except RuntimeError:
                detail = "is a symbolic link loop"
            except OSError as exc:
                detail = "is a symbolic link loop" if "loop" in str(exc).lower() else "is a broken symbolic link"
            raise MissingFileError(f"{what} {detail}", p)
        raise MissingFileError(f"{what} does not exist", p)
    if p.is_dir():
        raise UnsupportedFormatError(f"expected a {what}, found a folder", p)
    try:
        size = p.stat().st_size
    except OSError as exc:  # pragma: no cover - races / broken links
        raise UnreadableFileError(f"cannot stat {what}: {exc}", p) from exc
    if size == 0:
        raise EmptyFileError(f"{what} is empty (0 bytes)", p)
    if not os.access(p, os.R_OK):
        raise FilePermissionError(f"no permission to read this {what}", p)
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except PermissionError as exc:
        raise FilePermissionError(f"no permission to read this {what}", p) from exc
    except OSError as exc:
        raise UnreadableFileError(f"cannot open {what}: {exc}", p) from exc
    return p


def resolve_format(p: Path) -> str:
    """The file's real format (content first; the extension only for DICOM without its preamble)."""
    by_ext = format_from_extension(p)
    try:
        by_content = sniff_format(p)
    except PermissionError as exc:
        raise FilePermissionError("no permission to read this file", p) from exc
    if by_content is None:
        if by_ext is None:
            raise UnsupportedFormatError(
                f"not a supported image file (extension {p.suffix!r}; supported: "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})",
                p,
            )
        if by_ext == "dicom":
            return "dicom"  # DICOM without the 128-byte preamble: let pydicom try
        with open(p, "rb") as fh:
            head = fh.read(8)
        raise UnsupportedFormatError(
            f"the extension says {by_ext.upper()} but the content is not an image of a supported "
            f"format (file starts with {head!r}); the file may be corrupt or mislabelled",
            p,
        )
    return by_content  # content wins over a wrong extension (e.g. a JPEG saved as .png)


def classify_decode_error(exc: BaseException, p: Path) -> DataError:
    """Any decoder exception as a :class:`DataError` naming ``p`` (truncated, permission, or unreadable)."""
    if isinstance(exc, DataError):
        return exc
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    truncated_words = ("truncat", "eof", "end of file", "broken", "unexpected end", "not enough", "incomplete",
                       "buffer is too small", "out of range", "premature")
    if isinstance(exc, (EOFError, struct.error, zlib.error)) or any(w in low for w in truncated_words):
        return TruncatedFileError(f"file is truncated or corrupt ({msg})", p)
    if isinstance(exc, PermissionError):
        return FilePermissionError("no permission to read this file", p)
    return UnreadableFileError(f"cannot decode image ({type(exc).__name__}: {msg})", p)
