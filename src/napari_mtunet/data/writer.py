"""The one writer of the generic dataset layout (``images/``, ``masks/``, ``labels.csv``; the reader is
:mod:`napari_mtunet.data.layouts.generic`): samples appended to a dataset (napari's "Add to training set",
:func:`append_generic_samples`), a new dataset written whole (the fine-tuning study's parts,
:func:`write_generic_dataset`, or a part of another one, :func:`copy_generic_samples`), a sample removed
again (:func:`remove_generic_sample`).

Never overwrites: every appended sample gets a new, uniquely named image (and mask)
and ``labels.csv`` is rewritten atomically (temp file + ``os.replace``) while
holding ``labels.csv.lock`` so concurrent writers (two napari windows, a
script) cannot lose rows; a new dataset is written into a hidden sibling folder
and renamed into place, so it is complete or absent.

- The lock is an OS file lock (the ``filelock`` package: ``flock``/``fcntl``
  on POSIX, ``LockFileEx`` on Windows).  The operating system releases it
  when its holder exits, even by kill -9, so a crashed writer never blocks
  the next one, and a live writer's lock is never broken or deleted,
  however long it holds it.
- ``labels.csv`` is read and checked (readable, UTF-8, a
  ``filename,label[,group]`` header) *before* the image and mask are
  written, so a bad CSV leaves no orphan files; a failure while writing
  removes the files this call wrote.
- Cells go through :mod:`napari_mtunet.csvsafe`: formula-like labels are
  escaped for spreadsheets (and unescaped by the generic reader), and no
  field can start a new row.  Labels and groups must be single-line text.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from napari_mtunet.csvsafe import format_rows, unescape_cell
from napari_mtunet.paths import write_atomic
from napari_mtunet.preprocess import to_binary_mask

from .errors import DataError
from .io import IMAGE_EXTENSIONS, validate_image_array
from .layouts.generic import IMAGES_DIR, LABELS_CSV, MASKS_DIR
from .samples import Sample

#: The most characters a class label or group may have (as for class names in checkpoints).
MAX_LABEL_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A sample's file stem: one file name (no folder, no control characters).
_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]{1,150}")


@contextmanager
def file_lock(lock_path: Path, timeout: float = 10.0) -> Iterator[None]:
    """Exclusive inter-process lock on ``lock_path`` (an OS lock from the ``filelock`` package).

    Released by the operating system if the holder dies; never broken while
    the holder lives; the lock file itself is left in place (deleting it
    could let two writers hold "the" lock on different files).
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=max(0.0, float(timeout)))
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"could not acquire the lock within {timeout:.0f} s: another program is adding samples to this "
            "dataset right now; try again when it has finished",
            lock_path,
            kind="locked",
        ) from None
    except OSError as exc:
        raise DataError(f"cannot create the lock file ({exc.strerror or exc})", lock_path, kind="unreadable") from None
    try:
        yield
    finally:
        lock.release()


def _check_text(value: object, what: str) -> str | None:
    """A label/group as it will be stored, or a DataError saying why it cannot be."""
    if value is None:
        return None
    text = str(value)
    if what == "group" and text == "":
        return None
    if not text.strip():
        raise DataError(f"invalid {what} {text!r}: it is empty")
    if _CONTROL.search(text):
        raise DataError(f"invalid {what} {text[:60]!r}: line breaks, tabs and other control characters are not allowed")
    if text != text.strip():
        raise DataError(f"invalid {what} {text[:60]!r}: remove the spaces around it")
    if len(text) > MAX_LABEL_CHARS:
        raise DataError(f"invalid {what}: longer than {MAX_LABEL_CHARS} characters")
    return text


def _read_labels(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows of an existing labels.csv (raw cells), checked before anything is written."""
    default = ["filename", "label"]
    if not os.path.lexists(csv_path):
        return default, []
    nothing = "nothing was written"
    if not csv_path.is_file():
        raise DataError(f"labels.csv is not a regular file; {nothing}", csv_path, kind="bad_csv")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            first = next(reader, None)
            rows = [r for r in reader if r]
    except UnicodeDecodeError:
        raise DataError(f"labels.csv is not UTF-8 text; convert it to UTF-8 first ({nothing})", csv_path,
                        kind="bad_csv") from None
    except csv.Error as exc:
        raise DataError(f"labels.csv cannot be parsed ({exc}); fix the file first ({nothing})", csv_path,
                        kind="bad_csv") from None
    except PermissionError:
        raise DataError(f"no permission to read labels.csv ({nothing})", csv_path, kind="permission") from None
    except OSError as exc:
        raise DataError(f"cannot read labels.csv ({exc.strerror or exc}; {nothing})", csv_path,
                        kind="unreadable") from None
    header = [h.strip() for h in first] if first else default
    if not first and rows:
        header = default
    if "filename" not in header or "label" not in header:
        raise DataError(
            f"labels.csv has the header {header[:10]}; expected filename,label[,group] ({nothing})",
            csv_path,
            kind="bad_csv",
        )
    if not os.access(csv_path, os.W_OK):
        raise DataError(f"no permission to write labels.csv ({nothing})", csv_path, kind="permission")
    return header, rows


#: Every file this module writes goes through here (the one atomic writer; tests patch this name to
#: simulate a crash or a full disk in the middle of an append).
_atomic_write_bytes = write_atomic


def _encode_image(image: np.ndarray) -> tuple[bytes, str]:
    """PNG for 8-bit and 16-bit grey / 8-bit RGB(A); TIFF for everything else (lossless)."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    buf = io.BytesIO()
    if a.dtype == np.uint8 or (a.dtype == np.uint16 and a.ndim == 2):
        im = Image.fromarray(a)
        im.save(buf, format="PNG")
        return buf.getvalue(), ".png"
    import tifffile

    tifffile.imwrite(buf, a, photometric="rgb" if a.ndim == 3 else "minisblack", compression="zlib")
    return buf.getvalue(), ".tif"


def _safe_prefix(prefix: str) -> str:
    p = re.sub(r"[^A-Za-z0-9_-]+", "_", prefix).strip("_")
    return p[:40] or "sample"


@dataclass(frozen=True)
class NewSample:
    """One sample to write into a generic-layout dataset.

    ``image``: an array ((H, W) or (H, W, 3|4); 8/16-bit, float or bool), or an image file copied as it is;
    ``mask``: an array (any non-zero = foreground, saved as a 0/255 PNG) or a mask file copied as it is;
    ``label``/``group``: its ``labels.csv`` row (single-line text); ``name``: the file stem (None: a new one,
    ``<prefix>_<UTC time>_<random>``); ``extra``: more ``labels.csv`` columns (lower-case names).
    """

    image: np.ndarray | Path
    mask: np.ndarray | Path | None = None
    label: str | None = None
    group: str | None = None
    name: str | None = None
    extra: Mapping[str, str | None] | None = None


@dataclass
class _Encoded:
    """A :class:`NewSample` checked and encoded: every check happens before the first file is written."""

    name: str | None
    image: bytes
    ext: str
    mask: bytes | None
    label: str | None
    group: str | None
    extra: dict[str, str | None]
    mask_is_empty: bool


def _file_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
        raise DataError(f"the {what} to copy is not an image file", path, kind="wrong_format")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the {what} to copy ({exc.strerror or exc})", path) from None


def _encode(sample: NewSample) -> _Encoded:
    if sample.mask is None and sample.label is None:
        raise DataError("a sample needs a mask or a class label (or both)")
    if sample.name is not None and (not _NAME.fullmatch(sample.name) or sample.name in (".", "..")):
        raise DataError(f"invalid sample name {sample.name[:60]!r}: one file name without its extension")
    if isinstance(sample.image, (str, os.PathLike)):
        img_bytes, ext, shape = _file_bytes(Path(sample.image), "image"), Path(sample.image).suffix, None
    else:
        img = validate_image_array(np.asarray(sample.image), where="image to add")
        (img_bytes, ext), shape = _encode_image(img), img.shape[:2]
    mask_bytes, empty = None, False
    if isinstance(sample.mask, (str, os.PathLike)):
        if Path(sample.mask).suffix.lower() != ".png":
            raise DataError("the mask to copy must be a PNG file", sample.mask, kind="wrong_format")
        mask_bytes = _file_bytes(Path(sample.mask), "mask")
    elif sample.mask is not None:
        m = to_binary_mask(np.asarray(sample.mask), where="mask to add")
        if shape is not None and m.shape != shape:
            raise DataError(f"mask shape {m.shape} differs from the image's {shape}", kind="mask_size")
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(m * np.uint8(255)).save(buf, format="PNG")
        mask_bytes, empty = buf.getvalue(), not m.any()
    extra = {str(k): _check_text(v, str(k)) for k, v in (sample.extra or {}).items()}
    bad_keys = [k for k in extra if k in ("filename", "label", "group") or not re.fullmatch(r"[a-z_]{1,40}", k)]
    if bad_keys:
        raise DataError(f"extra labels.csv column names must be lower-case words, got {bad_keys}", kind="bad_csv")
    return _Encoded(sample.name, img_bytes, ext, mask_bytes, _check_text(sample.label, "class label"),
                    _check_text(sample.group, "group"), extra, empty)


def _header(header: list[str], encoded: list[_Encoded]) -> list[str]:
    """``labels.csv``'s header with the columns ``encoded`` needs added (group, then extra columns)."""
    if any(e.group is not None for e in encoded) and "group" not in header:
        header = header + ["group"]
    new = [k for e in encoded for k, v in e.extra.items() if v is not None]
    return header + [k for k in dict.fromkeys(new) if k not in header]


def _row(header: list[str], filename: str, e: _Encoded) -> list[str | None]:
    row = {**e.extra, "filename": filename, "label": e.label, "group": e.group}
    return [row.get(h) for h in header]


def _write_files(root: Path, stem: str, e: _Encoded, written: list[Path]) -> tuple[Path, Path | None]:
    """Write one sample's image (and mask) under new names in ``root`` (recorded in ``written``)."""
    paths = [(root / IMAGES_DIR / f"{stem}{e.ext}", e.image)]
    if e.mask is not None:
        paths.append((root / MASKS_DIR / f"{stem}.png", e.mask))
    for path, data in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb"):  # reserve the name; never overwrite
            pass
        written.append(path)
        _atomic_write_bytes(path, data)
    return paths[0][0], paths[1][0] if len(paths) > 1 else None


def _taken(root: Path, stem: str) -> bool:
    return any(p.stem == stem for p in (root / IMAGES_DIR).glob(glob.escape(stem) + ".*")) or \
        (root / MASKS_DIR / f"{stem}.png").exists()


def _new_stem(root: Path, prefix: str) -> str:
    while True:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        stem = f"{_safe_prefix(prefix)}_{stamp}_{uuid.uuid4().hex[:8]}"
        if not _taken(root, stem):
            return stem


def _write_failure(exc: Exception, root: Path, unchanged: str) -> Exception:
    """The error a failed write raises (files of the call already removed)."""
    if isinstance(exc, OSError):
        return DataError(f"could not write the sample(s) ({exc.strerror or exc}); is the disk full or read-only? "
                         f"{unchanged}", getattr(exc, "filename", None) or root)
    return exc


def append_generic_samples(root: str | Path, samples: Sequence[NewSample], *, prefix: str = "sample",
                           lock_timeout: float = 10.0) -> list[Sample]:
    """Add ``samples`` to the generic-layout dataset at ``root`` (created if needed), all or none, under the
    dataset's lock; returns their :class:`Sample` records.  Nothing existing is overwritten: a ``name`` already
    in the dataset is refused.  Every check (arrays, labels, ``labels.csv``) happens before the first file is
    written; a failure removes the files of the call and leaves ``labels.csv`` as it was."""
    root = Path(root)
    encoded = [_encode(s) for s in samples]
    names = [e.name for e in encoded if e.name is not None]
    if len(set(names)) < len(names):
        raise DataError("two samples of one call have the same name; nothing was written", root, kind="bad_csv")
    if root.exists() and not root.is_dir():
        raise DataError("the training-set folder is a file", root, kind="wrong_format")
    csv_path = root / LABELS_CSV
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the training-set folder ({exc.strerror or exc})", root) from None
    out: list[Sample] = []
    with file_lock(root / (LABELS_CSV + ".lock"), lock_timeout):
        header, rows = _read_labels(csv_path)  # before anything is written: a bad CSV leaves no orphans
        header = _header(header, encoded)
        written: list[Path] = []
        try:
            new_rows = []
            for e in encoded:
                if e.name is not None and _taken(root, e.name):
                    raise DataError(f"{e.name} is already in the dataset; nothing was written", root, kind="exists")
                img_path, mask_path = _write_files(root, e.name or _new_stem(root, prefix), e, written)
                new_rows.append(_row(header, img_path.name, e))
                out.append(Sample(image=img_path, label=e.label, masks=(mask_path,) if mask_path else (),
                                  group=e.group, source="generic", mask_is_empty=e.mask_is_empty))
            body = [header] + [r + [""] * (len(header) - len(r)) for r in rows] + new_rows
            _atomic_write_bytes(csv_path, format_rows(body).encode("utf-8"))
        except Exception as exc:
            for f in reversed(written):  # no orphan image/mask without its row
                f.unlink(missing_ok=True)
            raise _write_failure(exc, root, "labels.csv is unchanged and no new file was left behind") from None
    return out


def write_generic_sample(
    root: str | Path,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    label: str | None = None,
    group: str | None = None,
    *,
    prefix: str = "sample",
    lock_timeout: float = 10.0,
    extra: dict[str, str | None] | None = None,
) -> Sample:
    """Add one sample to a generic-layout dataset at ``root`` and return its :class:`Sample`
    (:func:`append_generic_samples` with one :class:`NewSample`)."""
    return append_generic_samples(root, [NewSample(image, mask, label, group, extra=extra)], prefix=prefix,
                                  lock_timeout=lock_timeout)[0]


def write_generic_dataset(root: str | Path, samples: Sequence[NewSample]) -> Path:
    """A new generic-layout dataset at ``root`` (``images/``, ``masks/``, ``labels.csv``) holding ``samples``
    under their names (new ones where None).  Written into a hidden sibling folder and renamed into place, so
    ``root`` either does not exist or is complete; an existing ``root`` is refused (nothing is overwritten)."""
    root = Path(root)
    if os.path.lexists(root):
        raise DataError("already exists; a new dataset is written only into a new folder", root, kind="exists")
    encoded = [_encode(s) for s in samples]
    names = [e.name for e in encoded if e.name is not None]
    if len(set(names)) < len(names):
        raise DataError("two samples have the same name; nothing was written", root, kind="bad_csv")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        partial = root.with_name(f".{root.name}.{uuid.uuid4().hex[:8]}.partial")
        partial.mkdir()
    except OSError as exc:
        raise DataError(f"cannot create the dataset folder ({exc.strerror or exc})", root) from None
    try:
        header = _header(["filename", "label"], encoded)
        rows: list[list[str | None]] = [header]
        written: list[Path] = []
        for e in encoded:
            img_path, _ = _write_files(partial, e.name or _new_stem(partial, "sample"), e, written)
            rows.append(_row(header, img_path.name, e))
        _atomic_write_bytes(partial / LABELS_CSV, format_rows(rows).encode("utf-8"))
        os.rename(partial, root)  # refused when root appeared meanwhile (another writer)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError) and os.path.lexists(root):
            raise DataError("was created by another writer meanwhile; nothing was written", root,
                            kind="exists") from None
        raise _write_failure(exc, root, "nothing was written") from None
    return root


def copy_generic_samples(src: str | Path, dst: str | Path, stems: Iterable[str]) -> Path:
    """A new generic-layout dataset at ``dst`` (:func:`write_generic_dataset`) holding the samples of the
    generic-layout dataset ``src`` whose file stems are in ``stems``: files copied as they are, ``labels.csv``
    rows (every column) in ``src``'s order."""
    src, keep = Path(src), set(stems)
    header, rows = _read_labels(src / LABELS_CSV)
    samples = []
    for row in rows:
        cells = {h: unescape_cell(v) if v else None for h, v in zip(header, row)}
        name = Path(cells.get("filename") or "").name
        stem = Path(name).stem
        if stem not in keep:
            continue
        mask = src / MASKS_DIR / f"{stem}.png"
        samples.append(NewSample(src / IMAGES_DIR / name, mask if mask.is_file() else None, cells.get("label"),
                                 cells.get("group"), name=stem,
                                 extra={k: v for k, v in cells.items() if k not in ("filename", "label", "group")}))
    return write_generic_dataset(dst, samples)


def remove_generic_sample(root: str | Path, image_name: str, *, lock_timeout: float = 10.0) -> list[Path]:
    """Undo :func:`write_generic_sample`: remove the row of ``image_name`` from ``labels.csv`` and its files.

    Only a sample this module wrote (its row is in ``labels.csv`` and its
    files are in ``images/`` / ``masks/``) is removed; returns the removed
    files.  Raises :class:`DataError` naming the sample when it is not there.
    """
    root = Path(root)
    name = Path(image_name).name
    csv_path = root / LABELS_CSV
    with file_lock(root / (LABELS_CSV + ".lock"), lock_timeout):
        header, rows = _read_labels(csv_path)
        col = header.index("filename")
        keep = [r for r in rows if not (len(r) > col and r[col] == name)]
        if len(keep) == len(rows):
            raise DataError(f"{name} is not in labels.csv; nothing was removed", csv_path, kind="missing_file")
        body = [header] + [r + [""] * (len(header) - len(r)) for r in keep]
        _atomic_write_bytes(csv_path, format_rows(body).encode("utf-8"))
        removed = []
        for p in (root / IMAGES_DIR / name, root / MASKS_DIR / f"{Path(name).stem}.png"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed
