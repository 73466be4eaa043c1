"""Turning arrays as users have them into the model's input, and back.

Shared by the dataset pipeline and the Predictor so that training and
inference see identical pixels.  Numpy only (torch is imported lazily by the
callers): an image of any dtype/channel layout becomes ``float32 (H, W, 3)``
in ``[0, 1]``; the network applies the mean/std of its saved
:class:`~napari_mtunet.config.Preprocessing` itself.
"""

from __future__ import annotations

import numpy as np


class ImageFormatError(ValueError):
    """An array cannot be used as an image; the message says what is wrong."""


def _describe(where: str | None) -> str:
    return f"{where}: " if where else ""


def to_float_rgb(image: np.ndarray, *, where: str | None = None) -> np.ndarray:
    """Convert a 2-D image (grey, grey+1 channel, RGB or RGBA) to float32 RGB in [0, 1].

    - 8- and 16-bit integer dtypes are divided by their dtype maximum (uint8 by
      255, uint16 by 65535; signed ones shifted first; bool -> {0, 1}), so
      intensities mean the same across images; 32/64-bit integers have no such
      range and are min-max scaled per image, like floats;
    - float images within ``[0, 1]`` are kept, other float ranges are min-max
      scaled per image (documented: absolute float intensities are not
      comparable across files);
    - NaN or infinite pixels are rejected (they would poison the network).
    """
    pre = _describe(where)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        channels = 1
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        channels = arr.shape[-1]
    else:
        raise ImageFormatError(
            f"{pre}expected a 2-D image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageFormatError(f"{pre}image has an empty dimension: shape {arr.shape}")
    if channels == 4:
        arr = arr[..., :3]
    if arr.dtype == bool:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize > 2:
        # 32/64-bit integers have no fixed intensity range (dividing by 2**31 would make every image one grey):
        # min-max scaled per image, like floats outside [0, 1]
        out = scale_to_unit(arr, arr.min(), arr.max())
    elif np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = arr.astype(np.float32)
        if info.min < 0:
            out = (out - info.min) / float(info.max - info.min)
        else:
            out /= float(info.max)
    elif np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int((~finite).sum())
            raise ImageFormatError(f"{pre}image contains {n_bad} NaN or infinite pixel(s)")
        del finite
        lo, hi = arr.min(), arr.max()  # in the image's own precision (float64 ranges overflow float32)
        if lo < 0.0 or hi > 1.0:
            out = scale_to_unit(arr, lo, hi)
        else:
            out = arr.astype(np.float32, copy=True)
    else:
        raise ImageFormatError(f"{pre}unsupported pixel type {arr.dtype}")
    if out.ndim == 2:
        # a broadcast view, copied once below: np.repeat would hold the GIL for the whole copy
        # (0.6 s for a 6000 x 6000 image, during which napari's window froze)
        out = np.broadcast_to(out[..., None], out.shape + (3,))
    return np.ascontiguousarray(out, dtype=np.float32)


def scale_to_unit(arr: np.ndarray, lo, hi) -> np.ndarray:
    """Min-max scale finite floats from ``[lo, hi]`` to float32 ``[0, 1]`` without overflow.

    ``hi - lo`` overflows for ranges such as ``[-1e308, 1e308]`` (float64) or
    ``[-3e38, 3e38]`` (float32), and casting float64 values beyond 3.4e38 to
    float32 makes them infinite; so everything is first divided by
    ``max(|lo|, |hi|)`` in the image's own precision (at least float32).
    ``lo == hi`` gives zeros.
    """
    a = np.asarray(arr)
    work = np.result_type(a.dtype, np.float32)
    lo_w, hi_w = work.type(lo), work.type(hi)
    s = max(abs(lo_w), abs(hi_w))
    if not s > 0 or not hi_w > lo_w:
        return np.zeros(a.shape, np.float32)
    low, span = lo_w / s, hi_w / s - lo_w / s
    if not span > 0:  # a range too narrow to resolve after scaling
        return np.zeros(a.shape, np.float32)
    out = (a.astype(work) / s - low) / span
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def to_binary_mask(mask: np.ndarray, *, where: str | None = None) -> np.ndarray:
    """The mask rule: ``uint8 (H, W)`` in {0, 1} from a decoded mask.

    - ``(H, W)``: any non-zero value is foreground;
    - ``(H, W, 3)`` colour: a pixel is foreground when any channel is non-zero;
    - ``(H, W, 2)`` grey + alpha and ``(H, W, 4)`` RGBA (the alpha rule):
      alpha that is the same everywhere carries nothing and is ignored;
      otherwise transparent pixels (alpha 0) are background, and visible
      pixels are foreground when their colour is non-zero -- or all of them
      when every visible pixel has the same colour (a lesion drawn only in
      the alpha channel, as some annotation tools save it).
    """
    pre = _describe(where)
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ImageFormatError(f"{pre}mask contains NaN or infinite values")
        if arr.shape[-1] == 3:
            return arr.any(axis=-1).astype(np.uint8)
        colour, alpha = arr[..., :-1], arr[..., -1]
        painted = colour.any(axis=-1)
        if alpha.size == 0 or alpha.min() == alpha.max():
            return painted.astype(np.uint8)
        visible = alpha != 0
        shown = colour[visible]
        if len(shown) and (shown == shown[0]).all():
            return visible.astype(np.uint8)
        return (visible & painted).astype(np.uint8)
    if arr.ndim != 2:
        raise ImageFormatError(f"{pre}expected a 2-D mask, got shape {np.asarray(mask).shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ImageFormatError(f"{pre}mask contains NaN or infinite values")
    return (arr != 0).astype(np.uint8)


def split_stack(image: np.ndarray, rgb: bool | None = None) -> tuple[list[np.ndarray], bool]:
    """Split a napari-style array into 2-D images.

    Returns ``(images, is_stack)``.  ``(H, W)`` and ``(H, W, 3|4)`` are single
    images; ``(N, H, W)`` and ``(N, H, W, 3|4)`` are stacks.  ``rgb`` resolves
    the ``(3, H, W)``-versus-``(H, W, 3)`` ambiguity the same way napari does
    (last axis of size 3/4 means RGB unless told otherwise).
    """
    arr = image
    ndim = arr.ndim
    if ndim == 3 and arr.shape[-1] == 1 and rgb is None:  # (H, W, 1): one image, one channel
        return [arr[..., 0]], False
    if ndim == 2:
        return [arr], False
    last_is_rgb = arr.shape[-1] in (3, 4) if rgb is None else bool(rgb)
    if ndim == 3:
        if last_is_rgb:
            return [arr], False
        return [arr[i] for i in range(arr.shape[0])], True
    if ndim == 4 and last_is_rgb:
        return [arr[i] for i in range(arr.shape[0])], True
    raise ImageFormatError(
        f"cannot interpret an array of shape {arr.shape} as an image or a stack of images "
        "(expected (H, W), (H, W, 3|4), (N, H, W) or (N, H, W, 3|4))"
    )
