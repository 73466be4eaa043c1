"""napari's sample-data entry points: the core's synthetic phantom (:mod:`napari_mtunet._sample_data`),
with the class of the slice on screen shown in the viewer's text overlay as for Dataset previews, without
opening a widget first.  Never imports torch (napari calls these on its GUI thread)."""

from __future__ import annotations

import sys

from .. import _sample_data


def _show_classes_in_viewer() -> None:
    if "napari" not in sys.modules:
        return
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        from ._common import state_for

        state_for(viewer)  # its class overlay follows the layers napari is about to add
    except Exception:  # noqa: BLE001 - showing the class is a convenience, never an error here
        return


def phantom_sample() -> list[tuple]:
    """A 12-slice phantom stack (image) and its lesion masks (labels), the class of each slice in metadata."""
    _show_classes_in_viewer()
    return _sample_data.phantom_sample()


def phantom_single_sample() -> list[tuple]:
    """One 256-px phantom image (2-D) with its lesion mask."""
    _show_classes_in_viewer()
    return _sample_data.phantom_single_sample()
