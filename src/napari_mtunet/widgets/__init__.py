"""napari dock widgets (the only part of napari-mtunet that imports Qt / napari).

- :class:`DatasetWidget`: inspect a dataset folder, preview samples, choose the split;
- :class:`TrainWidget`: train with live progress, plots and a Stop button;
- :class:`PredictWidget`: predict a layer / all layers / a folder into Labels layers; export the model;
- :class:`AnnotateWidget`: correct, confirm the class, add to a training set, fine-tune;
- :class:`SegmentWidget`: clicks and a box -> one object's mask and class (an interactive model) -> committed
  objects, one label each -> the training set.

The widgets run every job in the compute process (:mod:`napari_mtunet.compute`): napari's process never
imports torch.  Modules, one job each: ``_job`` (the job lifecycle and the dock's settings / watched
parts), ``_controls`` (pickers and labels), ``_layers`` (layers, their records, what is on screen),
``_overlay`` (the class on the canvas), ``_session`` (what one viewer's widgets share), ``_notify``,
``_settings``, ``_warmup`` (the compute process as the widgets see it), ``samples`` (napari's sample data).
"""

from __future__ import annotations

from typing import Any

from .._triton import guard_triton

guard_triton()  # napari's process never imports torchvision; if anything does, triton stays out of it

_WIDGETS = {"AnnotateWidget": "annotate", "DatasetWidget": "dataset", "PredictWidget": "predict",
            "SegmentWidget": "segment", "TrainWidget": "train"}

__all__ = list(_WIDGETS)


def __getattr__(name: str) -> Any:
    """The widget classes, imported on first use (``widgets.samples`` needs none of them)."""
    if name in _WIDGETS:
        from importlib import import_module

        return getattr(import_module(f".{_WIDGETS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
