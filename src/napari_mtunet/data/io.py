"""Reading images and masks from files into validated numpy arrays.

- :func:`read_image` returns the pixels in their native dtype, shaped
  ``(H, W)`` (grey) or ``(H, W, 3|4)`` (RGB/RGBA); conversion to the model's
  float RGB is :func:`napari_mtunet.preprocess.to_float_rgb` (the only
  converter).
- :func:`read_mask` reads one or several mask files, checks their size and
  ORs them into ``uint8 (H, W)`` in ``{0, 1}``.
- :func:`read_region` reads a window of one pyramid level of a (tiled) TIFF
  without decoding the whole slide.
- :func:`load_sample` turns a :class:`~napari_mtunet.data.samples.Sample`
  into ``(image, mask | None)``.

Every failure raises a :class:`~napari_mtunet.data.errors.DataError`
subclass whose message names the file and the problem.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from napari_mtunet.preprocess import ImageFormatError, to_binary_mask

from .errors import (
    DataError,
    EmptyFileError,
    FilePermissionError,
    ImageTooLargeError,
    MaskMismatchError,
    MissingFileError,
    OptionalDependencyError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from .samples import Sample

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
#: and TIFF now share one limit.  Gigapixel slides are read in windows
#: (:func:`read_region`), each of which must fit.
MAX_IMAGE_PIXELS = 178_956_970

#: EXIF orientation values that swap width and height (rotations by 90/270 degrees).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


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


def is_image_file(path: str | Path) -> bool:
    """True when the extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _format_from_extension(path: Path) -> str | None:
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


def _resolve_format(p: Path) -> str:
    by_ext = _format_from_extension(p)
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


def _classify_decode_error(exc: BaseException, p: Path) -> DataError:
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    truncated_words = ("truncat", "eof", "end of file", "broken", "unexpected end", "not enough", "incomplete",
                       "buffer is too small", "out of range", "premature")
    if isinstance(exc, (EOFError, struct.error, zlib.error)) or any(w in low for w in truncated_words):
        return TruncatedFileError(f"file is truncated or corrupt ({msg})", p)
    if isinstance(exc, PermissionError):
        return FilePermissionError("no permission to read this file", p)
    return UnreadableFileError(f"cannot decode image ({type(exc).__name__}: {msg})", p)


# --------------------------------------------------------------------------- PIL formats


def _pil_to_array(im, p: Path) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool)
    if mode in ("L", "RGB", "RGBA", "F", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return arr
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)  # 16-bit PNGs are opened as 32-bit 'I' by some Pillow versions
        return arr
    if mode == "LA":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = "transparency" in im.info or mode == "PA"
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        return np.asarray(im.convert("RGB"))
    raise UnsupportedFormatError(f"unsupported pixel mode {mode!r}", p)


def _exif_orientation(im) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: no rotation
        return 1
    return value if 1 <= value <= 8 else 1


def _read_pil(p: Path, *, palette_indices: bool = False) -> np.ndarray:
    """Decode with Pillow; the EXIF orientation is applied (pixels as viewers show them).

    ``palette_indices``: palette ("P") images give their palette *indices*
    instead of colours (used for masks: index 0 is background).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            check_pixel_count(im.size[1], im.size[0], p)
            if getattr(im, "n_frames", 1) > 1:
                raise UnsupportedFormatError(
                    f"file has {im.n_frames} frames; only single-frame images are supported", p
                )
            im.load()
            if _exif_orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            if palette_indices and im.mode in ("P", "PA"):
                arr = np.asarray(im)
                return arr[..., 0] if arr.ndim == 3 else arr
            return _pil_to_array(im, p)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check at open (same threshold)
        raise ImageTooLargeError(
            f"more pixels than the limit of {MAX_IMAGE_PIXELS:,} for any format (decompression bomb guard; {exc})", p
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(f"not a readable image ({exc})", p) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a DataError naming the file
        raise _classify_decode_error(exc, p) from exc


# --------------------------------------------------------------------------- TIFF


def _main_pages(tf) -> list:
    """Top-level TIFF pages that are not reduced-resolution (pyramid) levels."""
    pages = [pg for pg in tf.pages]
    main = [pg for pg in pages if not getattr(pg, "is_reduced", False)]
    return main or pages[:1]


def _page_array(page, p: Path) -> np.ndarray:
    h, w = _yx(page)
    check_pixel_count(h, w, p)
    arr = page.asarray()
    return _normalise_tiff_array(arr, page, p)


def _normalise_tiff_array(arr: np.ndarray, page, p: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and getattr(page, "planarconfig", 1) == 2 and arr.shape[0] in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise UnsupportedFormatError(f"unsupported TIFF page shape {arr.shape} (expected (H, W) or (H, W, 3|4))", p)
    return arr


def _read_tiff(p: Path, page: int | None) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            main = _main_pages(tf)
            if page is None:
                if len(main) > 1:
                    raise UnsupportedFormatError(
                        f"multi-page TIFF with {len(main)} pages; choose one with page=0..{len(main) - 1} "
                        "(the generic layout turns each page into a sample)",
                        p,
                    )
                page = 0
            if not 0 <= page < len(main):
                raise UnsupportedFormatError(f"page {page} requested but the TIFF has {len(main)} page(s)", p)
            return _page_array(main[page], p)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        low = str(exc).lower()
        if "imagecodecs" in low or "compression" in low and "not" in low:
            raise OptionalDependencyError(
                f"TIFF compression not supported without the 'imagecodecs' package ({exc}); "
                "pip install imagecodecs",
                p,
            ) from exc
        if isinstance(exc, tifffile.TiffFileError) and not any(w in low for w in ("truncat", "eof", "invalid")):
            raise UnsupportedFormatError(f"not a valid TIFF file ({exc})", p) from exc
        raise _classify_decode_error(exc, p) from exc


def tiff_levels(path: str | Path) -> list[tuple[int, int]]:
    """``(height, width)`` of every pyramid level of a TIFF, largest first."""
    import tifffile

    p = check_file(path, what="TIFF slide")
    try:
        with tifffile.TiffFile(p) as tf:
            return [tuple(int(v) for v in _yx(lv)) for lv in _levels(tf)]  # type: ignore[misc]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _classify_decode_error(exc, p) from exc


def _yx(page_or_series) -> tuple[int, int]:
    axes = page_or_series.axes
    shape = page_or_series.shape
    return shape[axes.index("Y")], shape[axes.index("X")]


def _levels(tf) -> list:
    """Pyramid levels as tifffile pages, largest first (sub-IFDs, series levels or reduced pages)."""
    series = tf.series[0]
    levels = list(series.levels)
    if len(levels) > 1:
        return [lv.keyframe if hasattr(lv, "keyframe") else lv.pages[0] for lv in levels]
    pages = list(tf.pages)
    if len(pages) > 1:
        pages = sorted(pages, key=lambda pg: -int(np.prod(_yx(pg))))
        return pages
    return [series.keyframe if hasattr(series, "keyframe") else pages[0]]


def read_region(
    path: str | Path, region: tuple[int, int, int, int] | None = None, level: int = 0
) -> np.ndarray:
    """Read ``region = (x, y, w, h)`` (pixels of ``level``) from a pyramidal/tiled TIFF.

    Only the tiles/strips overlapping the window are read and decoded, so a
    256x256 patch of a gigapixel slide costs a few tiles.  Areas outside the
    level are zero-padded.  ``region=None`` reads the whole level.
    """
    import tifffile

    p = check_file(path, what="TIFF slide")
    try:
        with tifffile.TiffFile(p) as tf:
            levels = _levels(tf)
            if not 0 <= level < len(levels):
                raise UnsupportedFormatError(
                    f"pyramid level {level} requested but the TIFF has {len(levels)} level(s)", p
                )
            page = levels[level]
            if region is None:
                return _page_array(page, p)
            return _read_window(tf, page, region, p)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        low = str(exc).lower()
        if "imagecodecs" in low:
            raise OptionalDependencyError(
                f"this TIFF needs the 'imagecodecs' package to decode ({exc}); pip install imagecodecs", p
            ) from exc
        raise _classify_decode_error(exc, p) from exc


def _read_window(tf, page, region, p: Path) -> np.ndarray:
    x, y, w, h = (int(v) for v in region)
    if w <= 0 or h <= 0:
        raise UnsupportedFormatError(f"empty region {region}", p)
    check_pixel_count(h, w, p, what=f"region {tuple(region)}")
    height, width = int(page.imagelength), int(page.imagewidth)
    spp = int(page.samplesperpixel)
    dtype = page.dtype
    out = np.zeros((h, w, spp), dtype=dtype)
    fh = tf.filehandle
    decode = page.decode
    jpegtables = getattr(page, "jpegtables", None)
    offsets, counts = page.dataoffsets, page.databytecounts
    if page.planarconfig == 2 and spp > 1:
        # separate planes: fall back to decoding the page (rare for slides)
        full = _page_array(page, p)
        return _crop_pad(full, x, y, w, h)
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
    if out.shape[-1] == 1:
        out = out[..., 0]
    return _normalise_tiff_array(out, page, p) if out.ndim == 3 else out


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


# --------------------------------------------------------------------------- DICOM


def _read_dicom(p: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:
        raise OptionalDependencyError(
            "reading DICOM needs the optional 'pydicom' package: pip install 'napari-mtunet[dicom]'", p
        ) from exc
    try:
        ds = pydicom.dcmread(p)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        check_pixel_count(rows, cols * max(frames, 1), p)
        arr = np.asarray(ds.pixel_array)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _classify_decode_error(exc, p) from exc
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        raise UnsupportedFormatError(f"multi-frame DICOM ({arr.shape[0]} frames) is not supported", p)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" and np.issubdtype(arr.dtype, np.integer):
        arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind == "u" else arr.max() - arr
    return arr


# --------------------------------------------------------------------------- public readers


def read_image(path: str | Path, *, page: int | None = None) -> np.ndarray:
    """Read an image file into a validated native-dtype array ``(H, W)`` or ``(H, W, 3|4)``.

    Supports PNG, JPEG, BMP (Pillow), TIFF (tifffile; 8/16-bit, float,
    multi-page with ``page=``) and DICOM (optional ``pydicom``).  The format is
    taken from the file content, so a JPEG saved as ``.png`` still reads.
    """
    return _read_any(path, page=page, mask=False)


def _read_any(path: str | Path, *, page: int | None, mask: bool) -> np.ndarray:
    p = check_file(path, what="mask file" if mask else "image file")
    fmt = _resolve_format(p)
    if fmt == "tiff":
        arr = _read_tiff(p, page)
    elif fmt == "dicom":
        arr = _read_dicom(p)
    else:
        if page not in (None, 0):
            raise UnsupportedFormatError(f"page {page} requested but {fmt.upper()} files have one page", p)
        arr = _read_pil(p, palette_indices=mask)
    return validate_image_array(arr, where=str(p))


def validate_image_array(arr: np.ndarray, *, where: str | None = None) -> np.ndarray:
    """Check an array is a 2-D image (grey/RGB/RGBA) with finite values; returns it unchanged."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    ok = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))
    if not ok:
        raise UnsupportedFormatError(f"expected an image (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}", where)
    if 0 in a.shape[:2]:
        raise UnsupportedFormatError(f"image has an empty dimension: shape {a.shape}", where)
    if a.dtype.kind not in "buif":
        raise UnsupportedFormatError(f"unsupported pixel type {a.dtype}", where)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise UnsupportedFormatError(f"image contains {int((~np.isfinite(a)).sum())} NaN/infinite pixel(s)", where)
    return a


def read_mask(
    paths: str | Path | Sequence[str | Path],
    *,
    shape: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
    values: Iterable[int] | None = None,
    page: int | None = None,
) -> np.ndarray:
    """Read and OR one or several mask files into ``uint8 (H, W)`` in ``{0, 1}``.

    Any non-zero pixel (in any channel) is foreground, unless ``values`` lists
    the label values that count as foreground (e.g. PANDA cancer grades; read
    from the first channel).  Palette ("P") PNG/BMP/TIFF masks are read by
    palette *index*, not colour: index 0 is background, whatever colour the
    palette gives it.  JPEG/PNG EXIF orientation is applied, as for images.
    ``shape`` = the image's ``(H, W)``: a mask of a different size raises
    :class:`MaskMismatchError` naming both files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise MissingFileError("no mask file given", image_path)
    out: np.ndarray | None = None
    for mp in paths:
        raw = _read_any(mp, page=page, mask=True)
        m = binarise_mask(raw, values=values, where=str(mp))
        if shape is not None and tuple(m.shape) != tuple(shape[:2]):
            img = f" of image {image_path}" if image_path else ""
            raise MaskMismatchError(
                f"mask size {m.shape[1]}x{m.shape[0]} (WxH) differs from the size {shape[1]}x{shape[0]}{img}",
                mp,
            )
        if out is None:
            out = m
        elif out.shape != m.shape:
            raise MaskMismatchError(
                f"mask size {m.shape[1]}x{m.shape[0]} differs from the other mask(s) of the same image "
                f"({out.shape[1]}x{out.shape[0]}; first: {paths[0]})",
                mp,
            )
        else:
            out |= m
    assert out is not None
    return out


def binarise_mask(raw: np.ndarray, *, values: Iterable[int] | None = None, where: str | None = None) -> np.ndarray:
    """Binarise a decoded mask: non-zero (any channel) or membership in ``values`` (first channel)."""
    if values is None:
        try:
            return to_binary_mask(raw, where=where)
        except ImageFormatError as exc:
            raise UnsupportedFormatError(str(exc).split(": ", 1)[-1], where) from exc
    arr = np.asarray(raw)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return np.isin(arr, np.asarray(list(values))).astype(np.uint8)


@dataclass(frozen=True)
class ImageInfo:
    """Header information of an image file (no full decode)."""

    height: int
    width: int
    channels: int
    dtype: str
    pages: int = 1
    format: str = ""


def read_image_info(path: str | Path) -> ImageInfo:
    """Size, channels, dtype and page count from the file header (fast; detects most broken files)."""
    p = check_file(path, what="image file")
    fmt = _resolve_format(p)
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                main = _main_pages(tf)
                pg = main[0]
                h, w = _yx(pg)
                spp = int(getattr(pg, "samplesperpixel", 1))
                return ImageInfo(int(h), int(w), spp, str(pg.dtype), len(main), fmt)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _classify_decode_error(exc, p) from exc
    if fmt == "dicom":
        arr = _read_dicom(p)
        return ImageInfo(arr.shape[0], arr.shape[1], 1 if arr.ndim == 2 else arr.shape[2], str(arr.dtype), 1, fmt)
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size
            mode = im.mode
            if _exif_orientation(im) in _SWAPPING_ORIENTATIONS:
                w, h = h, w  # as read_image returns it
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"more pixels than the limit of {MAX_IMAGE_PIXELS:,} for any format (decompression bomb guard; {exc})", p
        ) from exc
    except Exception as exc:  # noqa: BLE001
        raise _classify_decode_error(exc, p) from exc
    channels = {"1": 1, "L": 1, "P": 3, "LA": 1, "I": 1, "F": 1, "RGB": 3, "RGBA": 4, "CMYK": 3}.get(
        mode, 1 if mode.startswith("I;16") else 3
    )
    dtype = {"1": "bool", "F": "float32"}.get(mode, "uint16" if mode.startswith("I") else "uint8")
    return ImageInfo(h, w, channels, dtype, 1, fmt)


def decode_sample_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray | None:
    """The sample's binary mask ``uint8 (H, W)`` or None when it has no mask annotation."""
    values = sample.mask_values
    if sample.masks:
        if sample.region is not None:
            parts = [
                binarise_mask(read_region(m, sample.region, sample.level), values=values, where=str(m))
                for m in sample.masks
            ]
            out = parts[0]
            for q in parts[1:]:
                out |= q
            return out
        return read_mask(sample.masks, shape=shape, image_path=sample.image, values=values, page=sample.page)
    if sample.rle:
        from .rle import rle_decode

        out = np.zeros(shape, dtype=np.uint8)
        for code in sample.rle:
            out |= rle_decode(code, shape, where=str(sample.image))
        return out
    if sample.mask_is_empty:
        return np.zeros(shape, dtype=np.uint8)
    return None


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a sample: ``(image native dtype (H, W[, C]), mask uint8 (H, W) {0,1} | None)``."""
    if sample.region is not None:
        image = validate_image_array(read_region(sample.image, sample.region, sample.level), where=sample.id)
    else:
        image = read_image(sample.image, page=sample.page)
    mask = decode_sample_mask(sample, image.shape[:2])
    return image, mask
