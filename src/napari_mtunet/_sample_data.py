"""napari sample data: the built-in SYNTHETIC ultrasound phantom (no patient data, no download)."""

from __future__ import annotations

from .sample_data import napari_phantom_sample


def phantom_sample() -> list[tuple]:
    """A 12-slice phantom stack (image) and its lesion masks (labels), the class of each slice in metadata."""
    return napari_phantom_sample()


def phantom_single_sample() -> list[tuple]:
    """One 256-px phantom image (2-D) with its lesion mask, for a quick single-image try."""
    from . import layer_meta
    from .sample_data import make_phantom

    ph = make_phantom(n=2, size=256, seed=11)
    meta = layer_meta.as_metadata(layer_meta.ground_truth([ph.labels[1]], ph.class_names, kind="sample",
                                                          is_stack=False, extra={"synthetic": True}))
    return [
        (ph.images[1], {"name": "phantom image (synthetic)", "metadata": meta}, "image"),
        (ph.masks[1].astype("uint8"), {"name": "phantom lesion", "metadata": meta}, "labels"),
    ]
