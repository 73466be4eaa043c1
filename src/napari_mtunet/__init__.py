"""napari-mtunet: joint classification and segmentation of medical images with a multi-task UNet.

The core (config, model, checkpoint, data, training, inference) imports no
Qt or napari; the napari widgets live in :mod:`napari_mtunet.widgets`.
Heavy modules are imported lazily so ``import napari_mtunet`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "config",
    "Preprocessing": "config",
    "TrainConfig": "config",
    "DataConfig": "config",
    "AugmentConfig": "config",
    "RunConfig": "config",
    "FinetuneConfig": "config",
    "Postprocessing": "config",
    "build_model": "model",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Predictor": "inference",
    "Prediction": "inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
