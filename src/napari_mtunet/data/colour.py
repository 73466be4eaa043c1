"""Colour models: what every pixel layout a reader can meet becomes, or its refusal by name.

The readers (:mod:`.decoders` for PNG/JPEG/BMP/TIFF/DICOM, :mod:`.pyramid`
for slide windows) hand their decoded pixels here with the file's colour
model.  The result is one of four layouts, in the file's own dtype:

- ``(H, W)`` grey (grey levels as displayed: "min is white" is inverted);
- ``(H, W, 3)`` RGB; ``(H, W, 4)`` RGBA;
- for masks only, ``(H, W, 2)`` grey + alpha, so the mask rule can use
  transparency (:func:`napari_mtunet.preprocess.to_binary_mask`).

Images and masks differ in one principle: **an image is read as it is
displayed** (palette colours, CMYK/YCbCr/LAB converted to RGB, inverted
grey turned back), **a mask is read by its stored labels** where it has them
(palette *indices*, grey levels as stored) and by its displayed colour
otherwise.  Nothing is guessed: a colour model without an unambiguous
conversion is refused with its name (:class:`UnsupportedColourModelError`).
:data:`COLOUR_MODELS` is the table of docs/datasets.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsupportedColourModelError

#: (colour model, where it is met, what an image becomes, what a mask becomes) -- docs/datasets.md's table.
COLOUR_MODELS: tuple[tuple[str, str, str, str], ...] = (
    ("bilevel (1-bit)", "PNG, BMP, TIFF", "grey 0/1", "stored value: 1 is foreground"),
    ("grey 8/16-bit (L, I;16, MinIsBlack, MONOCHROME2)", "all formats",
     "grey, scaled by the dtype's range (uint16 / 65535)", "stored value: non-zero is foreground"),
    ("grey, min-is-white (TIFF MinIsWhite, DICOM MONOCHROME1)", "TIFF, DICOM",
     "inverted to min-is-black over its bits per sample", "stored value (not inverted): non-zero is foreground"),
    ("grey + alpha (LA, La, TIFF grey with one extra sample)", "PNG, TIFF",
     "grey, alpha ignored", "the alpha rule (below)"),
    ("RGB", "all formats", "RGB", "any non-zero channel is foreground"),
    ("RGBA / RGBa / RGBX (TIFF RGB with one extra sample)", "PNG, BMP, TIFF",
     "RGB, alpha ignored (premultiplied colours as stored)", "the alpha rule (below)"),
    ("palette (P, TIFF Palette, DICOM PALETTE COLOR)", "PNG, BMP, TIFF, DICOM",
     "the palette's RGB colours (TIFF's 16-bit colour map shifted to 8 bits, as tifffile and libtiff do)",
     "palette index: 0 is background, whatever its colour"),
    ("palette with transparency (P + tRNS, PA)", "PNG",
     "the palette's colours as RGB, alpha ignored", "palette index: 0 and fully transparent indices are background"),
    ("CMYK (JPEG, TIFF Separated with ink set CMYK)", "JPEG, TIFF",
     "RGB = (1 - C)(1 - K), ... (Pillow's conversion, no ICC colour management)",
     "converted to RGB, then any non-zero channel"),
    ("other inks (TIFF Separated, ink set not CMYK or not 4 inks)", "TIFF", "refused by name", "refused by name"),
    ("YCbCr (JPEG, TIFF YCbCr, DICOM YBR_FULL/YBR_FULL_422)", "JPEG, TIFF, DICOM",
     "RGB by the file's YCbCr coefficients and reference black/white (TIFF defaults: BT.601, full range)",
     "converted to RGB, then any non-zero channel"),
    ("YCbCr subsampled without JPEG, DICOM YBR_PARTIAL_*", "TIFF, DICOM", "refused by name", "refused by name"),
    ("CIE L*a*b* 8-bit (Pillow LAB, TIFF CIELab / ICCLab)", "TIFF",
     "sRGB through LittleCMS (Pillow's ImageCms, D50 Lab)", "converted to RGB, then any non-zero channel"),
    ("ITU L*a*b*, 16-bit L*a*b*, LogL/LogLuv, CFA (raw Bayer), TIFF transparency mask", "TIFF",
     "refused by name", "refused by name"),
    ("HSV", "Pillow images", "RGB", "converted to RGB, then any non-zero channel"),
    ("float (TIFF float16/32/64, Pillow F)", "TIFF, PNG via Pillow",
     "values in [0, 1] kept, other ranges min-max scaled per image; NaN/inf refused", "non-zero is foreground"),
    ("signed 8/16-bit integers", "TIFF, DICOM", "scaled by the dtype's range (int16: -32768 -> 0, 32767 -> 1)",
     "non-zero is foreground"),
    ("32/64-bit integers (Pillow I, TIFF uint32/int32)", "PNG via Pillow, TIFF",
     "min-max scaled per image like floats (no fixed range)", "non-zero is foreground"),
    ("more than one extra sample (e.g. RGB + 2 channels)", "TIFF", "refused by name", "refused by name"),
)

#: The alpha rule for masks, as the table cites it.
ALPHA_RULE = (
    "alpha that is the same everywhere is ignored; otherwise transparent pixels (alpha 0) are background and "
    "visible ones are foreground when their colour is non-zero -- or all of them, when every visible pixel has "
    "the same colour (the lesion is drawn in the alpha channel)"
)


def refuse(model: str, where: str | Path | None, hint: str = "") -> UnsupportedColourModelError:
    text = f"colour model {model} is not supported (it is refused rather than guessed at)"
    return UnsupportedColourModelError(text + (f"; {hint}" if hint else "; convert the file to RGB or greyscale"),
                                       where)


# --------------------------------------------------------------------------- conversions


def invert_grey(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Min-is-white grey to min-is-black over ``bits`` bits per sample (the dtype's range when not given)."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return ~a
    if a.dtype.kind == "u":
        top = np.iinfo(a.dtype).max if not bits or bits >= 8 * a.itemsize else (1 << int(bits)) - 1
        return (top - np.minimum(a, top)).astype(a.dtype)
    if a.dtype.kind == "i":
        info = np.iinfo(a.dtype)
        return (info.max + info.min - a.astype(np.int64)).clip(info.min, info.max).astype(a.dtype)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return (1.0 - a).astype(a.dtype)
    return (-a).astype(a.dtype)  # float outside [0, 1]: min-max scaled later, so negating inverts


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """CMYK (any unsigned dtype) to RGB in the same dtype: ``R = (max - C)(max - K) / max`` (Pillow's formula)."""
    a = np.asarray(cmyk)
    if a.dtype.kind != "u":
        raise ValueError(f"CMYK needs unsigned integer samples, got {a.dtype}")
    top = float(np.iinfo(a.dtype).max)
    x = a.astype(np.float64)
    nk = top - x[..., 3:4]
    rgb = (top - x[..., :3]) * nk / top
    return np.clip(np.rint(rgb), 0, top).astype(a.dtype)


def ycbcr_to_rgb(ycc: np.ndarray, coefficients: Any = None, reference: Any = None) -> np.ndarray:
    """YCbCr to RGB (TIFF 6.0, section 21): ``coefficients`` = LumaRed, LumaGreen, LumaBlue (BT.601 by default),
    ``reference`` = ReferenceBlackWhite (full range by default)."""
    a = np.asarray(ycc)
    if a.dtype.kind != "u":
        raise ValueError(f"YCbCr needs unsigned integer samples, got {a.dtype}")
    top = float(np.iinfo(a.dtype).max)
    half = float(1 << (8 * a.itemsize - 1))
    lr, lg, lb = (float(v) for v in (coefficients if coefficients is not None else (0.299, 0.587, 0.114)))
    ref = [float(v) for v in (reference if reference is not None else (0, top, half, top, half, top))]
    x = a.astype(np.float64)
    y = (x[..., 0] - ref[0]) * top / max(ref[1] - ref[0], 1e-9)
    cb = (x[..., 1] - ref[2]) * (half - 1) / max(ref[3] - ref[2], 1e-9)
    cr = (x[..., 2] - ref[4]) * (half - 1) / max(ref[5] - ref[4], 1e-9)
    r = cr * (2 - 2 * lr) + y
    b = cb * (2 - 2 * lb) + y
    g = (y - lb * b - lr * r) / lg
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, top).astype(a.dtype)


def lab_to_rgb(lab: np.ndarray, *, icc_offset: bool = False) -> np.ndarray:
    """8-bit CIE L*a*b* (Pillow's LAB: a*, b* as signed bytes) to 8-bit sRGB through LittleCMS.

    ``icc_offset``: a*, b* stored unsigned with an offset of 128 (TIFF ICCLab).
    """
    from PIL import Image, ImageCms

    a = np.ascontiguousarray(lab, dtype=np.uint8)
    if icc_offset:
        a = a.copy()
        a[..., 1:] = (a[..., 1:].astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    im = Image.frombuffer("LAB", (a.shape[1], a.shape[0]), a.tobytes(), "raw", "LAB", 0, 1)
    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return np.asarray(ImageCms.applyTransform(im, transform))


def colour_map_8bit(cmap: np.ndarray) -> np.ndarray:
    """A TIFF colour map (3, N) as 8-bit RGB: 16-bit values shifted right by 8, or used as they are when every
    value already fits in 8 bits (maps written 8-bit by mistake; tifffile and libtiff do the same)."""
    c = np.asarray(cmap)
    if c.size and c.max() > 255:
        c = c >> 8
    return c.astype(np.uint8)


# --------------------------------------------------------------------------- Pillow images


def _palette_alpha(im) -> np.ndarray | None:
    """Per-index alpha of a palette image with transparency (``tRNS``), or None."""
    t = im.info.get("transparency")
    if t is None:
        return None
    n = 256
    alpha = np.full(n, 255, np.uint8)
    if isinstance(t, int):
        if 0 <= t < n:
            alpha[t] = 0
    elif isinstance(t, (bytes, bytearray)):
        values = np.frombuffer(bytes(t[:n]), np.uint8)
        alpha[: len(values)] = values
    return alpha


def from_pil(im, where: str | Path | None, *, mask: bool) -> np.ndarray:
    """A loaded Pillow image as a standard layout (see the module docstring)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool)
    if mode in ("L", "RGB", "RGBA", "F"):
        return np.asarray(im)
    if mode.startswith("I;16") and not mode.endswith("S"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)  # 16-bit PNGs are opened as 32-bit 'I' by some Pillow versions
        return arr
    if mode in ("LA", "La"):
        if not mask:
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("LA") if mode == "La" else im)
    if mode in ("P", "PA"):
        if mask:
            arr = np.asarray(im)
            if mode == "PA":  # index + alpha: the alpha rule applies
                return arr
            alpha = _palette_alpha(im)
            if alpha is not None:
                arr = np.where(alpha[arr] == 0, 0, arr).astype(arr.dtype)
            return arr
        has_alpha = "transparency" in im.info or mode == "PA"
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBa",):
        return np.asarray(im.convert("RGBA"))
    if mode in ("CMYK", "YCbCr", "HSV", "RGBX"):
        return np.asarray(im.convert("RGB"))
    if mode == "LAB":
        return lab_to_rgb(np.asarray(im))
    raise refuse(f"{mode!r} (Pillow pixel mode)", where)


def pil_layout(mode: str) -> tuple[int, str]:
    """``(channels, dtype)`` that :func:`from_pil` gives an image of this Pillow mode (for header-only info)."""
    if mode == "1":
        return 1, "bool"
    if mode in ("L", "LA", "La"):
        return 1, "uint8"
    if mode == "F":
        return 1, "float32"
    if mode.startswith("I"):
        return 1, "uint16" if mode.startswith("I;16") or mode == "I" else "int32"
    if mode in ("RGBA", "RGBa", "PA"):
        return 4, "uint8"
    return 3, "uint8"


# --------------------------------------------------------------------------- TIFF


def _tiff_colour_samples(page, where) -> tuple[str, int]:
    """``(model, colour samples)`` of a TIFF page, refusing models without an unambiguous conversion."""
    import tifffile

    P = tifffile.PHOTOMETRIC
    pm = int(page.photometric)
    if pm in (P.MINISBLACK, P.MINISWHITE):
        return ("minisblack" if pm == P.MINISBLACK else "miniswhite"), 1
    if pm == P.RGB:
        return "rgb", 3
    if pm == P.PALETTE:
        return "palette", 1
    if pm == P.YCBCR:
        return "ycbcr", 3
    if pm == P.SEPARATED:
        inkset = page.tags.valueof(332, 1)  # InkSet: 1 = CMYK
        inks = page.tags.valueof(334, 4)  # NumberOfInks
        if inkset != 1 or inks != 4:
            raise refuse(f"'separated' (TIFF ink set {inkset}, {inks} inks)", where,
                         "only CMYK (4 inks, ink set 1) is converted")
        return "cmyk", 4
    if pm in (P.CIELAB, P.ICCLAB):
        return ("cielab" if pm == P.CIELAB else "icclab"), 3
    name = getattr(P(pm), "name", str(pm)) if pm in {int(v) for v in P} else str(pm)
    raise refuse(f"{name!r} (TIFF photometric interpretation {pm})", where)


def check_tiff_page(page, where: str | Path | None) -> tuple[str, int]:
    """Refuse, before decoding, a page whose colour model has no unambiguous conversion; ``(model, colour samples)``."""
    model, colour = _tiff_colour_samples(page, where)
    if model == "ycbcr" and not _tiff_decoded_as_rgb(page):
        sub = page.tags.valueof(530, (2, 2))  # YCbCrSubSampling (TIFF's default is 2 x 2)
        if tuple(int(v) for v in np.asarray(sub).reshape(-1)) != (1, 1):
            raise refuse(f"'YCbCr' with chroma subsampling {tuple(int(v) for v in np.asarray(sub).reshape(-1))} "
                         "and no JPEG compression", where)
    return model, colour


def from_tiff(arr: np.ndarray, page, where: str | Path | None, *, mask: bool) -> np.ndarray:
    """Decoded TIFF samples (``(H, W)``, ``(H, W, S)``; planes already moved last) as a standard layout."""
    model, colour = check_tiff_page(page, where)
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise refuse(f"with sample array shape {tuple(np.shape(arr))}", where, "expected (height, width, samples)")
    extra = a.shape[-1] - colour
    if model == "ycbcr" and a.shape[-1] >= 3 and _tiff_decoded_as_rgb(page):
        model = "rgb"
    if extra < 0:
        raise refuse(f"{model!r} with {a.shape[-1]} sample(s) per pixel (needs {colour})", where)
    if extra > 1:
        raise refuse(f"{model!r} with {extra} extra samples", where, "save at most one extra (alpha) channel")
    col, alpha = a[..., :colour], (a[..., colour] if extra else None)
    if model in ("minisblack", "miniswhite", "palette"):
        g = col[..., 0]
        if model == "miniswhite" and not mask:
            g = invert_grey(g, int(getattr(page, "bitspersample", 0) or 0))
        if model == "palette" and not mask:
            cmap = page.colormap
            bits = int(page.bitspersample)
            if cmap is None or np.asarray(cmap).shape[-1] < (1 << bits) or g.dtype.kind != "u":
                raise refuse("'palette' without a usable colour map", where)
            rgb = np.take(colour_map_8bit(cmap), g, axis=1)
            return np.moveaxis(rgb, 0, -1) if alpha is None else np.concatenate(
                [np.moveaxis(rgb, 0, -1), _as_dtype(alpha, np.uint8)[..., None]], axis=-1)
        if alpha is None:
            return g
        return np.stack([g, alpha], axis=-1) if mask else g
    if model == "cmyk":
        rgb = cmyk_to_rgb(col)
    elif model == "ycbcr":
        rgb = ycbcr_to_rgb(col, _rationals(page.tags.valueof(529), 3), _rationals(page.tags.valueof(532), 6))
    elif model in ("cielab", "icclab"):
        if col.dtype != np.uint8:
            raise refuse(f"'L*a*b*' with {col.dtype} samples", where, "only 8-bit L*a*b* is converted")
        rgb = lab_to_rgb(col, icc_offset=model == "icclab")
    else:
        rgb = col
    if alpha is None:
        return rgb
    return np.concatenate([rgb, _as_dtype(alpha, rgb.dtype)[..., None]], axis=-1)


def _rationals(value: Any, n: int) -> list[float] | None:
    """A TIFF RATIONAL tag as ``n`` floats (tifffile gives numerator, denominator pairs flattened)."""
    if value is None:
        return None
    flat = [float(v) for v in np.asarray(value).reshape(-1)]
    if len(flat) == 2 * n:
        return [a / b if b else 0.0 for a, b in zip(flat[0::2], flat[1::2])]
    return flat if len(flat) == n else None


def _as_dtype(alpha: np.ndarray, dtype) -> np.ndarray:
    """Alpha in the colour's dtype (rescaled between integer ranges)."""
    a = np.asarray(alpha)
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if a.dtype.kind == "u" and dtype.kind == "u":
        return (a.astype(np.float64) * np.iinfo(dtype).max / np.iinfo(a.dtype).max).round().astype(dtype)
    return a.astype(dtype)


def _tiff_decoded_as_rgb(page) -> bool:
    """JPEG-compressed YCbCr: the JPEG decoder already returns RGB (tifffile and libtiff alike)."""
    return int(getattr(page, "compression", 1)) in (6, 7)


def tiff_layout(page) -> tuple[int, str]:
    """``(channels, dtype)`` that :func:`from_tiff` gives an image of this page (for header-only info)."""
    try:
        model, colour = _tiff_colour_samples(page, None)
    except UnsupportedColourModelError:
        return int(getattr(page, "samplesperpixel", 1)), str(page.dtype)
    spp = int(getattr(page, "samplesperpixel", 1))
    if model in ("minisblack", "miniswhite"):
        return 1, str(page.dtype)
    if model == "palette":
        return (3 if spp == 1 else 4), "uint8"
    channels = 3 + (1 if spp > colour else 0)
    return channels, ("uint8" if model in ("cielab", "icclab") else str(page.dtype))


# --------------------------------------------------------------------------- DICOM


def from_dicom(arr: np.ndarray, ds, where: str | Path | None, *, mask: bool) -> np.ndarray:
    """A DICOM frame (pydicom's ``pixel_array``) as a standard layout."""
    import pydicom

    pi = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    a = np.asarray(arr)
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if a.ndim != 2:
            raise refuse(f"{pi!r} with pixel array shape {a.shape}", where)
        if pi == "MONOCHROME1" and not mask:
            a = invert_grey(a, int(getattr(ds, "BitsStored", 0) or 0))
        return a
    if pi == "PALETTE COLOR":
        if mask:
            return a
        from pydicom.pixels import apply_color_lut

        return np.asarray(apply_color_lut(a, ds))
    if pi in ("RGB", "YBR_ICT", "YBR_RCT"):  # JPEG 2000 decoders return RGB for ICT/RCT
        return a
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        if int(pydicom.__version__.split(".")[0]) >= 3:
            return a  # pydicom 3 converts YBR_FULL(_422) to RGB when it decodes (its default as_rgb=True)
        from pydicom.pixels import convert_color_space

        return np.asarray(convert_color_space(a, pi, "RGB"))
    raise refuse(f"{pi!r} (DICOM photometric interpretation)", where)
