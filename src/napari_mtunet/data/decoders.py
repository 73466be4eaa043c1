"""Decoding one image file (PNG, JPEG, BMP, TIFF, DICOM) into a validated numpy array.

:func:`read_image` returns the pixels in their native dtype, shaped
``(H, W)`` (grey) or ``(H, W, 3|4)`` (RGB/RGBA), every colour model
converted or refused by name (:mod:`.colour`); conversion to the model's
float RGB is :func:`napari_mtunet.preprocess.to_float_rgb` (the only
converter).  :func:`read_mask_array` is the same decoding for masks, which
keep their stored labels (palette indices, grey levels) and their alpha.
Every failure raises a :class:`~.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import check_tiff_page, from_dicom, from_pil, from_tiff, pil_layout, tiff_layout
from .errors import (
    DataError,
    ImageTooLargeError,
    OptionalDependencyError,
    UnsupportedFormatError,
)
from .formats import MAX_IMAGE_PIXELS, check_file, check_pixel_count, classify_decode_error, resolve_format

#: EXIF orientation values that swap width and height (rotations by 90/270 degrees).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


# --------------------------------------------------------------------------- Pillow formats


def _exif_orientation(im) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: no rotation
        return 1
    return value if 1 <= value <= 8 else 1


def _read_pil(p: Path, *, mask: bool = False) -> np.ndarray:
    """Decode with Pillow; the EXIF orientation is applied (pixels as viewers show them)."""
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
            return from_pil(im, p, mask=mask)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check at open (same threshold)
        raise ImageTooLargeError(
            f"more pixels than the limit of {MAX_IMAGE_PIXELS:,} for any format (decompression bomb guard; {exc})", p
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(f"not a readable image ({exc})", p) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a DataError naming the file
        raise classify_decode_error(exc, p) from exc


# --------------------------------------------------------------------------- TIFF


def yx(page_or_series) -> tuple[int, int]:
    """``(height, width)`` of a tifffile page, level or series."""
    axes = page_or_series.axes
    shape = page_or_series.shape
    return shape[axes.index("Y")], shape[axes.index("X")]


def main_pages(tf) -> list:
    """Top-level TIFF pages that are not reduced-resolution (pyramid) levels."""
    pages = [pg for pg in tf.pages]
    main = [pg for pg in pages if not getattr(pg, "is_reduced", False)]
    return main or pages[:1]


def samples_last(arr: np.ndarray, page) -> np.ndarray:
    """A decoded page or window as ``(H, W)`` or ``(H, W, samples)`` (separate planes moved last)."""
    a = np.asarray(arr)
    spp = int(getattr(page, "samplesperpixel", 1))
    if a.ndim == 3 and spp > 1 and getattr(page, "planarconfig", 1) == 2 and a.shape[0] == spp:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise UnsupportedFormatError(f"unsupported TIFF page shape {a.shape} (expected one 2-D image)", None)
    return a


def page_array(page, p: Path, *, mask: bool = False) -> np.ndarray:
    """One TIFF page decoded whole, colour model applied."""
    h, w = yx(page)
    check_pixel_count(h, w, p)
    check_tiff_page(page, p)
    try:
        arr = samples_last(page.asarray(), page)
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(exc.detail, p) from None
    return from_tiff(arr, page, p, mask=mask)


def tiff_error(exc: Exception, p: Path) -> DataError:
    """A tifffile/imagecodecs exception as a DataError naming the file."""
    import tifffile

    low = str(exc).lower()
    if "imagecodecs" in low or ("compression" in low and "not" in low):
        return OptionalDependencyError(
            f"TIFF compression not supported without the 'imagecodecs' package ({exc}); pip install imagecodecs", p)
    if isinstance(exc, tifffile.TiffFileError) and not any(w in low for w in ("truncat", "eof", "invalid")):
        return UnsupportedFormatError(f"not a valid TIFF file ({exc})", p)
    return classify_decode_error(exc, p)


def _read_tiff(p: Path, page: int | None, *, mask: bool = False) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            main = main_pages(tf)
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
            return page_array(main[page], p, mask=mask)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise tiff_error(exc, p) from exc


# --------------------------------------------------------------------------- DICOM


def _read_dicom(p: Path, *, mask: bool = False) -> np.ndarray:
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
        raise classify_decode_error(exc, p) from exc
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1 or (arr.ndim == 3 and spp == 1) or arr.ndim > 3:
        raise UnsupportedFormatError(f"multi-frame DICOM ({frames} frames) is not supported", p)
    return from_dicom(arr, ds, p, mask=mask)


# --------------------------------------------------------------------------- public readers


def read_image(path: str | Path, *, page: int | None = None) -> np.ndarray:
    """Read an image file into a validated native-dtype array ``(H, W)`` or ``(H, W, 3|4)``.

    Supports PNG, JPEG, BMP (Pillow), TIFF (tifffile; 8/16-bit, float,
    multi-page with ``page=``) and DICOM (optional ``pydicom``).  The format is
    taken from the file content, so a JPEG saved as ``.png`` still reads.
    Every colour model is converted as docs/datasets.md's table says, or
    refused by name (:class:`~.errors.UnsupportedColourModelError`).
    """
    return read_any(path, page=page, mask=False)


def read_mask_array(path: str | Path, *, page: int | None = None) -> np.ndarray:
    """Decode a mask file: its stored labels (palette indices, grey levels as stored), colour and alpha kept."""
    return read_any(path, page=page, mask=True)


def read_any(path: str | Path, *, page: int | None, mask: bool) -> np.ndarray:
    p = check_file(path, what="mask file" if mask else "image file")
    fmt = resolve_format(p)
    if fmt == "tiff":
        arr = _read_tiff(p, page, mask=mask)
    elif fmt == "dicom":
        if page not in (None, 0):
            raise UnsupportedFormatError(f"page {page} requested but DICOM files are read one frame each", p)
        arr = _read_dicom(p, mask=mask)
    else:
        if page not in (None, 0):
            raise UnsupportedFormatError(f"page {page} requested but {fmt.upper()} files have one page", p)
        arr = _read_pil(p, mask=mask)
    return validate_image_array(arr, where=str(p), allow_grey_alpha=mask)


def validate_image_array(arr: np.ndarray, *, where: str | None = None, allow_grey_alpha: bool = False) -> np.ndarray:
    """Check an array is a 2-D image (grey/RGB/RGBA) with finite values; returns it (``(H, W, 1)`` squeezed)."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    ok = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in ((2, 3, 4) if allow_grey_alpha else (3, 4)))
    if not ok:
        raise UnsupportedFormatError(f"expected an image (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}", where)
    if 0 in a.shape[:2]:
        raise UnsupportedFormatError(f"image has an empty dimension: shape {a.shape}", where)
    if a.dtype.kind not in "buif":
        raise UnsupportedFormatError(f"unsupported pixel type {a.dtype}", where)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise UnsupportedFormatError(f"image contains {int((~np.isfinite(a)).sum())} NaN/infinite pixel(s)", where)
    return a


@dataclass(frozen=True)
class ImageInfo:
    """Header information of an image file (no full decode): the layout :func:`read_image` will return."""

    height: int
    width: int
    channels: int
    dtype: str
    pages: int = 1
    format: str = ""


def read_image_info(path: str | Path) -> ImageInfo:
    """Size, channels, dtype and page count from the file header (fast; detects most broken files)."""
    p = check_file(path, what="image file")
    fmt = resolve_format(p)
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                main = main_pages(tf)
                pg = main[0]
                h, w = yx(pg)
                channels, dtype = tiff_layout(pg)
                return ImageInfo(int(h), int(w), channels, dtype, len(main), fmt)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise classify_decode_error(exc, p) from exc
    if fmt == "dicom":
        arr = _read_dicom(p)
        return ImageInfo(arr.shape[0], arr.shape[1], 1 if arr.ndim == 2 else arr.shape[2], str(arr.dtype), 1, fmt)
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size
            mode = im.mode
            has_transparency = "transparency" in im.info
            if _exif_orientation(im) in _SWAPPING_ORIENTATIONS:
                w, h = h, w  # as read_image returns it
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"more pixels than the limit of {MAX_IMAGE_PIXELS:,} for any format (decompression bomb guard; {exc})", p
        ) from exc
    except Exception as exc:  # noqa: BLE001
        raise classify_decode_error(exc, p) from exc
    channels, dtype = pil_layout(mode)
    if mode == "P" and has_transparency:
        channels = 4
    return ImageInfo(h, w, channels, dtype, 1, fmt)
