"""Reading windows of (tiled, pyramidal) TIFF slides without decoding the whole slide.

:func:`read_region` reads ``(x, y, w, h)`` of one pyramid level: only the
tiles or strips overlapping the window are read and decoded (through
tifffile's own per-segment decoder, so every compression tifffile knows
works), pasted into the window, and the colour model applied as for whole
images (:mod:`.colour`).  docs/dev/tiff-windows.md measures this against
tifffile's ``aszarr`` + zarr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .colour import check_tiff_page, from_tiff
from .decoders import page_array, samples_last, tiff_error, yx
from .errors import DataError, UnsupportedFormatError
from .formats import check_file, check_pixel_count


def tiff_levels(path: str | Path) -> list[tuple[int, int]]:
    """``(height, width)`` of every pyramid level of a TIFF, largest first."""
    import tifffile

    p = check_file(path, what="TIFF slide")
    try:
        with tifffile.TiffFile(p) as tf:
            return [tuple(int(v) for v in yx(lv)) for lv in levels(tf)]  # type: ignore[misc]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise tiff_error(exc, p) from exc


def levels(tf) -> list:
    """Pyramid levels as tifffile pages, largest first (sub-IFDs, series levels or reduced pages)."""
    series = tf.series[0]
    lvls = list(series.levels)
    if len(lvls) > 1:
        return [lv.keyframe if hasattr(lv, "keyframe") else lv.pages[0] for lv in lvls]
    pages = list(tf.pages)
    if len(pages) > 1:
        return sorted(pages, key=lambda pg: -int(np.prod(yx(pg))))
    return [series.keyframe if hasattr(series, "keyframe") else pages[0]]


def read_region(
    path: str | Path, region: tuple[int, int, int, int] | None = None, level: int = 0, *, mask: bool = False
) -> np.ndarray:
    """Read ``region = (x, y, w, h)`` (pixels of ``level``) from a pyramidal/tiled TIFF.

    Only the tiles/strips overlapping the window are read and decoded, so a
    256x256 patch of a gigapixel slide costs a few tiles.  Areas outside the
    level are zero-padded.  ``region=None`` reads the whole level.  ``mask``:
    keep stored labels (palette indices, grey as stored), as for mask files.
    """
    import tifffile

    p = check_file(path, what="TIFF slide")
    try:
        with tifffile.TiffFile(p) as tf:
            lvls = levels(tf)
            if not 0 <= level < len(lvls):
                raise UnsupportedFormatError(
                    f"pyramid level {level} requested but the TIFF has {len(lvls)} level(s)", p
                )
            page = lvls[level]
            check_tiff_page(page, p)
            if region is None:
                return page_array(page, p, mask=mask)
            return from_tiff(read_window(tf, page, region, p), page, p, mask=mask)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise tiff_error(exc, p) from exc


def read_window(tf, page, region, p: Path) -> np.ndarray:
    """The raw samples ``(h, w[, samples])`` of ``region`` of ``page``, zero outside the page."""
    x, y, w, h = (int(v) for v in region)
    if w <= 0 or h <= 0:
        raise UnsupportedFormatError(f"empty region {region}", p)
    check_pixel_count(h, w, p, what=f"region {tuple(region)}")
    height, width = int(page.imagelength), int(page.imagewidth)
    spp = int(page.samplesperpixel)
    if page.planarconfig == 2 and spp > 1:
        # separate planes: decode the page (rare for slides)
        h_page, w_page = yx(page)
        check_pixel_count(h_page, w_page, p)
        return _crop_pad(samples_last(page.asarray(), page), x, y, w, h)
    out = np.zeros((h, w, spp), dtype=page.dtype)
    fh = tf.filehandle
    decode = page.decode
    jpegtables = getattr(page, "jpegtables", None)
    offsets, counts = page.dataoffsets, page.databytecounts
    if page.is_tiled:
        th, tw = int(page.tilelength), int(page.tilewidth)
        ntx = (width + tw - 1) // tw
        ty0, ty1 = max(0, y // th), min((height - 1) // th, (y + h - 1) // th)
        tx0, tx1 = max(0, x // tw), min((width - 1) // tw, (x + w - 1) // tw)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                idx = ty * ntx + tx
                _paste_segment(fh, decode, offsets, counts, idx, jpegtables, out, ty * th, tx * tw, x, y, w, h)
    else:
        rps = int(page.rowsperstrip) if page.rowsperstrip else height
        s0, s1 = max(0, y // rps), min((height - 1) // rps, (y + h - 1) // rps)
        for s in range(s0, s1 + 1):
            _paste_segment(fh, decode, offsets, counts, s, jpegtables, out, s * rps, 0, x, y, w, h)
    return out[..., 0] if out.shape[-1] == 1 else out


def _paste_segment(fh, decode, offsets, counts, idx, jpegtables, out, seg_y, seg_x, x, y, w, h) -> None:
    if idx >= len(offsets) or counts[idx] == 0:
        return
    fh.seek(offsets[idx])
    data = fh.read(counts[idx])
    if len(data) < counts[idx]:
        raise EOFError(f"segment {idx} is truncated ({len(data)} of {counts[idx]} bytes)")
    seg, _, _ = decode(data, idx, jpegtables=jpegtables)
    if seg is None:
        return
    seg = np.asarray(seg)
    seg = seg.reshape(seg.shape[-3], seg.shape[-2], seg.shape[-1])  # (length, width, samples)
    sy0, sx0 = max(y, seg_y), max(x, seg_x)
    sy1, sx1 = min(y + h, seg_y + seg.shape[0]), min(x + w, seg_x + seg.shape[1])
    if sy1 <= sy0 or sx1 <= sx0:
        return
    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = seg[sy0 - seg_y : sy1 - seg_y, sx0 - seg_x : sx1 - seg_x]


def _crop_pad(arr: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    out = np.zeros((h, w) + arr.shape[2:], dtype=arr.dtype)
    sy0, sx0 = max(0, y), max(0, x)
    sy1, sx1 = min(arr.shape[0], y + h), min(arr.shape[1], x + w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = arr[sy0:sy1, sx0:sx1]
    return out
