"""Run-length encoding in the SIIM-ACR pneumothorax competition convention.

The competition's ``mask_functions.py`` defines the format used in
``train-rle.csv``:

- pixels are numbered **column-major** (down the first column, then the
  next: flat index ``i`` is row ``i % H``, column ``i // H``);
- the string is pairs ``start length``; each ``start`` is **relative**: the
  number of background pixels since the end of the previous run (the first
  one counts from pixel 0);
- ``-1`` (or an empty cell) means "no pneumothorax" (empty mask);
- several CSV rows for one image are separate lesions, OR-ed together.

(Most other Kaggle competitions use absolute, 1-based starts; these helpers
are for SIIM only.)
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

EMPTY_RLE = "-1"


def is_empty_rle(code: str | None) -> bool:
    """True for ``-1``, empty strings and NaN-like cells."""
    if code is None:
        return True
    c = str(code).strip()
    return c in ("", "-1", "nan", "NaN")


def rle_decode(code: str, shape: tuple[int, int], *, where: str | None = None) -> np.ndarray:
    """Decode a SIIM relative column-major RLE string into ``uint8 (H, W)`` in ``{0, 1}``."""
    h, w = int(shape[0]), int(shape[1])
    flat = np.zeros(h * w, dtype=np.uint8)
    if is_empty_rle(code):
        return flat.reshape(w, h).T.copy()
    try:
        values = [int(v) for v in str(code).split()]
    except ValueError as exc:
        raise DataError(f"RLE string contains a non-integer token ({exc})", where, kind="bad_rle") from exc
    if any(v > h * w for v in values):
        raise DataError(
            f"RLE string has an offset or run length of {max(values)}, but the image has only {h * w} pixels ({w}x{h})",
            where,
            kind="bad_rle",
        )
    nums = np.asarray(values, dtype=np.int64)
    if nums.size % 2:
        raise DataError(f"RLE string has an odd number of values ({nums.size})", where, kind="bad_rle")
    starts, lengths = nums[0::2], nums[1::2]
    if (starts < 0).any() or (lengths <= 0).any():
        raise DataError("RLE string has negative offsets or non-positive run lengths", where, kind="bad_rle")
    ends = np.cumsum(starts + lengths)
    begins = ends - lengths
    if ends.size and ends[-1] > h * w:
        raise DataError(
            f"RLE runs end at pixel {int(ends[-1])} but the image has only {h * w} pixels ({w}x{h})",
            where,
            kind="bad_rle",
        )
    for b, e in zip(begins, ends):
        flat[b:e] = 1
    return flat.reshape(w, h).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Encode a binary mask (non-zero = foreground) as a SIIM relative column-major RLE string.

    An empty mask encodes as ``"-1"``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"rle_encode expects a 2-D mask, got shape {m.shape}")
    flat = (m != 0).T.reshape(-1).astype(np.int8)
    if not flat.any():
        return EMPTY_RLE
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(np.diff(padded))
    begins, ends = changes[0::2], changes[1::2]
    lengths = ends - begins
    prev_end = np.concatenate([[0], ends[:-1]])
    rel = begins - prev_end
    return " ".join(f"{int(s)} {int(n)}" for s, n in zip(rel, lengths))
