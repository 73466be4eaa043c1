"""Reading a :class:`~napari_mtunet.data.samples.Sample` into arrays (:func:`load_sample`), and the public
import path of the readers it uses, one job per module:

- :mod:`.formats`: which files are images, sniffing the real format, the pixel limit, file checks;
- :mod:`.colour`: what every colour model becomes, or its refusal by name (docs/datasets.md's table);
- :mod:`.decoders`: PNG/JPEG/BMP (Pillow), TIFF (tifffile), DICOM (pydicom) -> validated arrays;
- :mod:`.pyramid`: windows of pyramidal/tiled TIFF slides;
- :mod:`.masks`: the mask rules (labels, colour, alpha; several masks ORed).

Every failure raises a :class:`~napari_mtunet.data.errors.DataError`
subclass whose message names the file and the problem.
"""

from __future__ import annotations

import numpy as np

from .colour import ALPHA_RULE, COLOUR_MODELS  # noqa: F401
from .decoders import ImageInfo, read_image, read_image_info, read_mask_array, validate_image_array
from .formats import (  # noqa: F401
    EXTENSIONS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    check_file,
    check_pixel_count,
    is_image_file,
    sniff_format,
)
from .masks import binarise_mask, read_mask
from .pyramid import read_region, tiff_levels
from .samples import Sample


def decode_sample_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray | None:
    """The sample's binary mask ``uint8 (H, W)`` or None when it has no mask annotation."""
    values = sample.mask_values
    if sample.masks:
        if sample.region is not None:
            parts = [
                binarise_mask(read_region(m, sample.region, sample.level, mask=True), values=values, where=str(m))
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


__all__ = [
    "ALPHA_RULE", "COLOUR_MODELS", "EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "ImageInfo", "Sample",
    "binarise_mask", "check_file", "check_pixel_count", "decode_sample_mask", "is_image_file", "load_sample",
    "read_image", "read_image_info", "read_mask", "read_mask_array", "read_region", "sniff_format", "tiff_levels",
    "validate_image_array",
]
