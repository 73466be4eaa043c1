"""The mask rules: mask files (one or several per image) into one binary ``uint8 (H, W)`` mask in {0, 1}.

- palette masks are read by *index* (0 is background, whatever its colour;
  fully transparent indices too), grey masks by their stored value;
- colour masks: a pixel is foreground when any channel is non-zero;
- masks with alpha follow the alpha rule
  (:func:`napari_mtunet.preprocess.to_binary_mask`): a lesion drawn only in
  the alpha channel is found, constant alpha is ignored;
- ``values`` selects label values instead (PANDA's cancer grades; first channel);
- several masks of one image are ORed; a mask of another size than its
  image is a :class:`~.errors.MaskMismatchError` naming both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from napari_mtunet.preprocess import ImageFormatError, to_binary_mask

from .decoders import read_mask_array
from .errors import MaskMismatchError, MissingFileError, UnsupportedFormatError


def binarise_mask(raw: np.ndarray, *, values: Iterable[int] | None = None, where: str | None = None) -> np.ndarray:
    """Binarise a decoded mask: the mask rule, or membership in ``values`` (first channel)."""
    if values is None:
        try:
            return to_binary_mask(raw, where=where)
        except ImageFormatError as exc:
            raise UnsupportedFormatError(str(exc).split(": ", 1)[-1], where) from exc
    arr = np.asarray(raw)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return np.isin(arr, np.asarray(list(values))).astype(np.uint8)


def read_mask(
    paths: str | Path | Sequence[str | Path],
    *,
    shape: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
    values: Iterable[int] | None = None,
    page: int | None = None,
) -> np.ndarray:
    """Read and OR one or several mask files into ``uint8 (H, W)`` in ``{0, 1}`` (see the module docstring).

    JPEG/PNG EXIF orientation is applied, as for images.  ``shape`` = the
    image's ``(H, W)``: a mask of a different size raises
    :class:`MaskMismatchError` naming both files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise MissingFileError("no mask file given", image_path)
    out: np.ndarray | None = None
    for mp in paths:
        m = binarise_mask(read_mask_array(mp, page=page), values=values, where=str(mp))
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
