"""Appending samples to a generic-layout dataset (napari's "Add to training set").

Never overwrites: every call writes a new, uniquely named image (and mask)
and rewrites ``labels.csv`` atomically (temp file + ``os.replace``) while
holding ``labels.csv.lock`` so concurrent writers (two napari windows, a
script) cannot lose rows.

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
import io
import os
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from napari_mtunet.csvsafe import format_rows
from napari_mtunet.paths import write_atomic
from napari_mtunet.preprocess import to_binary_mask

from .errors import DataError
from .io import validate_image_array
from .layouts.generic import IMAGES_DIR, LABELS_CSV
from .samples import Sample

#: The most characters a class label or group may have (as for class names in checkpoints).
MAX_LABEL_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    """Add one sample to a generic-layout dataset at ``root`` and return its :class:`Sample`.

    ``image``: (H, W) or (H, W, 3|4) array (8/16-bit, float or bool);
    ``mask``: (H, W) array, any non-zero = foreground, saved as 0/255 PNG;
    ``label``/``group``: the row appended to ``labels.csv`` (single-line
    text).  The file name is new (``<prefix>_<UTC time>_<random>``); nothing
    existing is overwritten.  Every check (arrays, label, ``labels.csv``)
    happens before the first file is written.
    """
    root = Path(root)
    img = validate_image_array(np.asarray(image), where="image to add")
    if mask is None and label is None:
        raise DataError("a sample needs a mask or a class label (or both)")
    m = None
    if mask is not None:
        m = to_binary_mask(np.asarray(mask), where="mask to add")
        if m.shape != img.shape[:2]:
            raise DataError(f"mask shape {m.shape} differs from the image's {img.shape[:2]}", kind="mask_size")
    label = _check_text(label, "class label")
    group = _check_text(group, "group")
    extra = {str(k): _check_text(v, str(k)) for k, v in (extra or {}).items()}
    bad_keys = [k for k in extra if k in ("filename", "label", "group") or not re.fullmatch(r"[a-z_]{1,40}", k)]
    if bad_keys:
        raise DataError(f"extra labels.csv column names must be lower-case words, got {bad_keys}", kind="bad_csv")
    img_bytes, ext = _encode_image(img)
    mask_bytes = None
    if m is not None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(m * np.uint8(255)).save(buf, format="PNG")
        mask_bytes = buf.getvalue()
    if root.exists() and not root.is_dir():
        raise DataError("the training-set folder is a file", root, kind="wrong_format")
    img_dir, mask_dir = root / IMAGES_DIR, root / "masks"
    csv_path = root / LABELS_CSV
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the training-set folder ({exc.strerror or exc})", root) from None
    with file_lock(root / (LABELS_CSV + ".lock"), lock_timeout):
        header, rows = _read_labels(csv_path)  # before anything is written: a bad CSV leaves no orphans
        if group is not None and "group" not in header:
            header = header + ["group"]
        header = header + [k for k, v in extra.items() if v is not None and k not in header]
        written: list[Path] = []
        try:
            img_dir.mkdir(parents=True, exist_ok=True)
            if m is not None:
                mask_dir.mkdir(parents=True, exist_ok=True)
            while True:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                stem = f"{_safe_prefix(prefix)}_{stamp}_{uuid.uuid4().hex[:8]}"
                taken = any(p.stem == stem for p in img_dir.glob(stem + ".*")) or (mask_dir / f"{stem}.png").exists()
                if not taken:
                    break
            img_path = img_dir / f"{stem}{ext}"
            with open(img_path, "xb"):  # reserve the name; never overwrite
                pass
            written.append(img_path)
            _atomic_write_bytes(img_path, img_bytes)
            mask_path = None
            if mask_bytes is not None:
                mask_path = mask_dir / f"{stem}.png"
                with open(mask_path, "xb"):
                    pass
                written.append(mask_path)
                _atomic_write_bytes(mask_path, mask_bytes)
            row = {**extra, "filename": img_path.name, "label": label, "group": group}
            body = [header] + [r + [""] * (len(header) - len(r)) for r in rows] + [[row.get(h) for h in header]]
            _atomic_write_bytes(csv_path, format_rows(body).encode("utf-8"))
        except Exception as exc:
            for f in reversed(written):  # no orphan image/mask without its row
                f.unlink(missing_ok=True)
            if isinstance(exc, DataError):
                raise
            if isinstance(exc, OSError):
                raise DataError(
                    f"could not add the sample ({exc.strerror or exc}); is the disk full or read-only? "
                    "labels.csv is unchanged and no new file was left behind",
                    getattr(exc, "filename", None) or root,
                ) from None
            raise
    return Sample(image=img_path, label=label, masks=(mask_path,) if mask_path else (), group=group, source="generic",
                  mask_is_empty=bool(m is not None and not m.any()))


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
        for p in (root / IMAGES_DIR / name, root / "masks" / f"{Path(name).stem}.png"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed
