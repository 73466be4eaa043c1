"""napari dock widgets (the only part of napari-mtunet that imports Qt / napari).

- :class:`DatasetWidget`: inspect a dataset folder, preview samples, choose the split;
- :class:`TrainWidget`: train with live progress, plots and a Stop button;
- :class:`PredictWidget`: predict a layer / all layers / a folder into new Labels layers;
- :class:`AnnotateWidget`: correct, label, add to a training set, fine-tune.
"""

from __future__ import annotations

from typing import Any

from .._triton import guard_triton
from .._writer import find_source_image  # lives with the writer (a core module must not import the widgets)

guard_triton()  # before anything imports torchvision inside napari (see guard_triton)

from .annotate import AnnotateWidget  # noqa: E402
from .dataset import DatasetWidget  # noqa: E402
from .predict import PredictWidget  # noqa: E402
from .train import TrainWidget  # noqa: E402

PLUGIN = "napari-mtunet"

__all__ = ["AnnotateWidget", "DatasetWidget", "PredictWidget", "TrainWidget", "find_source_image", "open_predict_widget"]


def open_predict_widget(checkpoint: str, viewer: Any = None) -> PredictWidget:
    """Dock (or reuse) the Predict widget in ``viewer`` (default: the current one) with ``checkpoint``."""
    import napari

    from ._common import state_for

    viewer = viewer or napari.current_viewer()
    if viewer is None:
        raise RuntimeError("no napari viewer is open to show the Predict widget in")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    widget.set_checkpoint(checkpoint)
    state_for(viewer).set_checkpoint(checkpoint)
    return widget
