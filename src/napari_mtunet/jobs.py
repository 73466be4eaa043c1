"""What the napari widgets run in the compute process (:mod:`napari_mtunet.compute`): the workflows, with
results napari's process can unpickle without importing torch.

Each function is a thin wrapper: it calls one workflow and returns what the
widget shows (a :class:`TrainSummary` instead of the trainer's result, which
holds the model; a fine-tuning outcome without it).  The Predictor used for
layers and folders is kept between jobs (:data:`PREDICTORS`), so the model
loads once per session, in the compute process.  Qt-free and napari-free;
nothing here is imported by napari's process except to unpickle results.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from .workflows.predict_layers import PredictorCache

#: The compute process's loaded model (one, as in the Predict widget): reloaded when the file changes.
PREDICTORS = PredictorCache()


# --------------------------------------------------------------------------- prediction


def predict_layer(params: dict[str, Any], data: Any, rgb: bool, name: str, gradcam: bool = False,
                  cancel: Any = None) -> Iterator[Any]:
    """One layer's data -> :class:`~napari_mtunet.workflows.predict_layers.LayerPrediction` (None if stopped)."""
    from .workflows.predict_layers import iter_predict_array

    return (yield from iter_predict_array(PREDICTORS, params, data, rgb, name, gradcam, cancel=cancel))


def predict_layers(params: dict[str, Any], jobs: list, gradcam: bool, cancel: Any = None) -> Iterator[Any]:
    """Several layers: each result (or error, named by its layer) is yielded as ``{"result": ...}`` /
    ``{"error": message}`` as soon as it is ready, so one bad layer does not stop the others."""
    from .workflows.predict_layers import iter_predict_array

    for data, rgb, name in jobs:
        if cancel is not None and cancel.cancelled:
            return None
        try:
            res = yield from iter_predict_array(PREDICTORS, params, data, rgb, name, gradcam, cancel=cancel)
            if res is not None:
                yield {"result": res}
        except Exception as exc:  # noqa: BLE001 - report and go on with the next layer
            yield {"error": f"layer {name!r}: {str(exc).strip() or type(exc).__name__}"}
    return None


def predict_folder(params: dict[str, Any], folder: str, out: str, cancel: Any = None) -> Iterator[Any]:
    """Every image of ``folder`` -> masks and a CSV in ``out`` (:func:`~napari_mtunet.workflows.iter_predict_files`)."""
    from .workflows import iter_predict_files

    predictor = PREDICTORS.get(params["checkpoint"], params["device"], params["threshold"], params["mode"],
                               params["tile_size"])
    return (yield from iter_predict_files(predictor, [folder], out, mode=params["mode"], cancel=cancel))


def release_model() -> None:
    """Forget the loaded model (the Predict dock was closed): its memory goes back."""
    PREDICTORS.clear()


# --------------------------------------------------------------------------- training and fine-tuning


@dataclass
class TrainSummary:
    """What the Train widget shows of a finished (or stopped) run."""

    out_dir: str
    reason: str
    epochs_run: int
    best_epoch: int
    best_value: float
    monitor: str
    best_checkpoint: str | None
    test_scalars: dict[str, float] = field(default_factory=dict)


def train(run: Any, out_dir: str | os.PathLike, cancel: Any = None) -> Iterator[Any]:
    """:func:`~napari_mtunet.workflows.iter_train`, returning a :class:`TrainSummary`."""
    from .workflows import iter_train

    outcome = yield from iter_train(run, out_dir, cancel=cancel)
    fit = outcome.fit
    return TrainSummary(
        out_dir=str(outcome.out_dir), reason=fit.reason, epochs_run=fit.epochs_run, best_epoch=fit.best_epoch,
        best_value=float(fit.best_value), monitor=fit.monitor,
        best_checkpoint=str(fit.best_checkpoint) if fit.best_checkpoint is not None else None,
        test_scalars=dict(outcome.test_report.scalars()) if outcome.test_report is not None else {},
    )


def finetune(checkpoint: str, dataset: str, out_dir: str | os.PathLike, config: Any,
             cancel: Any = None) -> Iterator[Any]:
    """:func:`~napari_mtunet.workflows.iter_finetune`; the outcome without the trainer's result (the model)."""
    from .workflows import iter_finetune

    outcome = yield from iter_finetune(checkpoint, dataset, out_dir, config=config, cancel=cancel)
    return dataclasses.replace(outcome, fit=None) if outcome is not None else None


# --------------------------------------------------------------------------- datasets


def check_dataset(root: str, layout: str, strict: bool) -> Any:
    """The dataset report (samples, problems, summary) of ``root``."""
    from .previews import load_dataset_report

    return load_dataset_report(root, layout=layout, strict=strict)


def preview_samples(samples: list[Any], n: int, name: str, root: str, layout: str | None) -> list[tuple]:
    """An even spread of ``n`` samples (and so of their classes) as napari layer data."""
    from .previews import dataset_layer_data

    total = len(samples)
    if total > n:
        step = total / n
        samples = [samples[int(i * step)] for i in range(n)]
    return dataset_layer_data(samples, name=name, root=root, layout=layout, n_total=total)


def export(checkpoint: str, out: str, fmt: str) -> str:
    """Export a model (ONNX or bioimage.io); returns the written path."""
    from .export import export_model

    return str(export_model(checkpoint, out, fmt))
