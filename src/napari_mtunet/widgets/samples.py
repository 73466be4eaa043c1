"""napari's sample-data entry points: the core's synthetic phantom (:mod:`napari_mtunet.sample_data`), with the
class of the slice on screen shown in the viewer's text overlay as for Dataset previews, without opening a
widget first.  Never imports torch (napari calls these on its GUI thread)."""

from __future__ import annotations

import sys


def _show_classes_in_viewer() -> None:
    if "napari" not in sys.modules:
        return
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        from ._session import state_for

        state_for(viewer)  # its class overlay follows the layers napari is about to add
    except Exception:  # noqa: BLE001 - showing the class is a convenience, never an error here
        return


def phantom_sample() -> list[tuple]:
    """A 12-slice phantom stack (image) and its lesion masks (labels), the class of each slice in metadata."""
    from ..sample_data import napari_phantom_sample

    _show_classes_in_viewer()
    return napari_phantom_sample()


def phantom_single_sample() -> list[tuple]:
    """One 256-px phantom image (2-D) with its lesion mask, for a quick single-image try."""
    from .. import layer_meta
    from ..sample_data import make_phantom

    _show_classes_in_viewer()
    ph = make_phantom(n=2, size=256, seed=11)
    meta = layer_meta.as_metadata(layer_meta.ground_truth([ph.labels[1]], ph.class_names, kind="sample",
                                                          is_stack=False, extra={"synthetic": True}))
    return [
        (ph.images[1], {"name": "phantom image (synthetic)", "metadata": meta}, "image"),
        (ph.masks[1].astype("uint8"), {"name": "phantom lesion", "metadata": meta}, "labels"),
    ]
