"""Appending samples to a generic-layout dataset (napari's "Add to training set").

Never overwrites: every call writes a new, uniquely named image (and mask)
and rewrites ``labels.csv`` atomically (temp file + ``os.replace``) while
holding ``labels.csv.lock`` so concurrent writers (two napari windows, a
script) cannot lose rows.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import re
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from napari_mtunet.preprocess import to_binary_mask

from .errors import DataError
from .io import validate_image_array
from .layouts.generic import LABELS_CSV
from .samples import Sample

LOCK_STALE_SECONDS = 60.0


def _lock_owner_is_dead(lock_path: Path) -> bool:
    """True when the lock was written on this host by a process that no longer exists."""
    try:
        pid_text, _, host = lock_path.read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    if host.strip() != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@contextmanager
def file_lock(lock_path: Path, timeout: float = 10.0) -> Iterator[None]:
    """Exclusive lock by atomic creation of ``lock_path``.

    A lock is broken when its writer (pid + host recorded in it) is dead, or when it is stale (> 60 s).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                if time.time() - lock_path.stat().st_mtime > LOCK_STALE_SECONDS or _lock_owner_is_dead(lock_path):
                    lock_path.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise DataError(f"could not acquire the lock within {timeout:.0f} s (another writer is busy; "
                                "delete the lock file if no other program is running)", lock_path,
                                kind="locked") from None
            time.sleep(0.02)
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.close(fd)
        yield
    finally:
        lock_path.unlink(missing_ok=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
) -> Sample:
    """Add one sample to a generic-layout dataset at ``root`` and return its :class:`Sample`.

    ``image``: (H, W) or (H, W, 3|4) array (8/16-bit, float or bool);
    ``mask``: (H, W) array, any non-zero = foreground, saved as 0/255 PNG;
    ``label``/``group``: the row appended to ``labels.csv``.  The file name is
    new (``<prefix>_<UTC time>_<random>``); nothing existing is overwritten.
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
    if label is not None and ("\n" in str(label) or not str(label).strip()):
        raise DataError(f"invalid class label {label!r}")
    img_bytes, ext = _encode_image(img)
    mask_bytes = None
    if m is not None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(m * np.uint8(255)).save(buf, format="PNG")
        mask_bytes = buf.getvalue()
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    if m is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    csv_path = root / LABELS_CSV
    with file_lock(root / (LABELS_CSV + ".lock"), lock_timeout):
        while True:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            stem = f"{_safe_prefix(prefix)}_{stamp}_{uuid.uuid4().hex[:8]}"
            taken = any(p.stem == stem for p in img_dir.glob(stem + ".*")) or (mask_dir / f"{stem}.png").exists()
            if not taken:
                break
        img_path = img_dir / f"{stem}{ext}"
        with open(img_path, "xb"):  # reserve the name; never overwrite
            pass
        _atomic_write_bytes(img_path, img_bytes)
        mask_path = None
        if mask_bytes is not None:
            mask_path = mask_dir / f"{stem}.png"
            with open(mask_path, "xb"):
                pass
            _atomic_write_bytes(mask_path, mask_bytes)
        header, rows = ["filename", "label"], []
        if csv_path.exists():
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = [h.strip() for h in next(reader, header)] or ["filename", "label"]
                rows = [r for r in reader if r]
        if "filename" not in header or "label" not in header:
            raise DataError(f"labels.csv has an unexpected header {header}; expected filename,label[,group]", csv_path,
                            kind="bad_csv")
        if group is not None and "group" not in header:
            header = header + ["group"]
        row = {"filename": img_path.name, "label": "" if label is None else str(label),
               "group": "" if group is None else str(group)}
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r + [""] * (len(header) - len(r)))
        w.writerow([row.get(h, "") for h in header])
        _atomic_write_bytes(csv_path, out.getvalue().encode("utf-8"))
    return Sample(image=img_path, label=label, masks=(mask_path,) if mask_path else (), group=group, source="generic",
                  mask_is_empty=bool(m is not None and not m.any()))
