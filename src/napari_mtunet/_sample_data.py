"""napari sample data: the built-in SYNTHETIC ultrasound phantom (no patient data, no download)."""

from __future__ import annotations

from .sample_data import napari_phantom_sample


def phantom_sample() -> list[tuple]:
    """A 12-slice phantom stack (image) and its lesion masks (labels), classes per slice in metadata."""
    layers = napari_phantom_sample()
    out = []
    for data, kwargs, kind in layers:
        meta = dict(kwargs.get("metadata", {}))
        mt = dict(meta.get("mtunet", {}))
        mt.setdefault("kind", "sample")
        mt.setdefault("is_stack", True)
        meta["mtunet"] = mt
        out.append((data, {**kwargs, "metadata": meta}, kind))
    return out


def phantom_single_sample() -> list[tuple]:
    """One 256-px phantom image (2-D) with its lesion mask, for a quick single-image try."""
    from .sample_data import make_phantom

    ph = make_phantom(n=2, size=256, seed=11)
    meta = {"mtunet": {"kind": "sample", "is_stack": False, "class_name": ph.labels[1], "classes": [ph.labels[1]],
                       "class_names": ph.class_names, "synthetic": True}}
    return [
        (ph.images[1], {"name": "phantom image (synthetic)", "metadata": meta}, "image"),
        (ph.masks[1].astype("uint8"), {"name": "phantom lesion", "metadata": meta}, "labels"),
    ]
