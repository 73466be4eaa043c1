"""What the napari widgets run in the compute process (:mod:`napari_mtunet.compute`): the workflows, returning
small results that napari's process reads without importing anything heavy.

Each function is a thin wrapper: it calls one workflow and returns what the
widget shows, as a plain dataclass of this module or of
:mod:`napari_mtunet.layer_meta` (a :class:`TrainSummary` instead of the
trainer's result, which holds the model).  Why it matters: napari's process
unpickles each result in a helper thread, and a result whose class lives in
:mod:`napari_mtunet.workflows` would make that thread import the workflows
package -- pure Python that holds the GIL in small slices, each of which the
GUI thread then waits for (py-spy caught it stalling a first prediction).
So this module imports nothing heavy at import time.

The Predictor used for layers and folders is kept between jobs, so the model
loads once per session, in the compute process.  Qt-free and napari-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_PREDICTORS: list[Any] = []


def predictors() -> Any:
    """The compute process's model cache (one model, as in the Predict widget; reloaded when the file changes)."""
    if not _PREDICTORS:
        from .workflows.predict_layers import PredictorCache

        _PREDICTORS.append(PredictorCache())
    return _PREDICTORS[0]


# --------------------------------------------------------------------------- prediction


def predict_layer(params: dict[str, Any], data: Any, rgb: bool, name: str, gradcam: bool = False,
                  cancel: Any = None) -> Iterator[Any]:
    """One layer's data -> :class:`~napari_mtunet.layer_meta.LayerPrediction` (None if stopped)."""
    from .workflows.predict_layers import iter_predict_array

    return (yield from iter_predict_array(predictors(), params, data, rgb, name, gradcam, cancel=cancel))


def predict_layers(params: dict[str, Any], jobs: list, gradcam: bool, cancel: Any = None) -> Iterator[Any]:
    """Several layers: each result (or error, named by its layer) is yielded as ``{"result": ...}`` /
    ``{"error": message}`` as soon as it is ready, so one bad layer does not stop the others."""
    from .workflows.predict_layers import iter_predict_array

    for data, rgb, name in jobs:
        if cancel is not None and cancel.cancelled:
            return None
        try:
            res = yield from iter_predict_array(predictors(), params, data, rgb, name, gradcam, cancel=cancel)
            if res is not None:
                yield {"result": res}
        except Exception as exc:  # noqa: BLE001 - report and go on with the next layer
            yield {"error": f"layer {name!r}: {str(exc).strip() or type(exc).__name__}"}
    return None


@dataclass
class FolderSummary:
    """A folder prediction, as the Predict widget reports it."""

    out_dir: str
    csv_path: str
    n_ok: int
    n_done: int
    n_total: int
    complete: bool
    text: str
    failures: list[str] = field(default_factory=list)  # "file: reason" of each file skipped

    def summary(self) -> str:
        return self.text


def predict_folder(params: dict[str, Any], folder: str, out: str, cancel: Any = None) -> Iterator[Any]:
    """Every image of ``folder`` -> masks and a CSV in ``out`` (:func:`~napari_mtunet.workflows.iter_predict_files`)."""
    from .workflows import iter_predict_files

    predictor = predictors().get(params["checkpoint"], params["device"], params["threshold"], params["mode"],
                                 params["tile_size"])
    res = yield from iter_predict_files(predictor, [folder], out, mode=params["mode"], cancel=cancel)
    return FolderSummary(out_dir=str(res.out_dir), csv_path=str(res.csv_path), n_ok=res.n_ok, n_done=res.n_done,
                         n_total=res.n_total, complete=res.complete, text=res.summary(), failures=list(res.failures))


def release_model() -> None:
    """Forget the loaded model (the Predict dock was closed): its memory goes back."""
    if _PREDICTORS:
        _PREDICTORS[0].clear()


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


@dataclass
class FinetuneSummary:
    """A fine-tuning run, as the Annotate widget shows it."""

    child: str | None
    metrics: dict[str, Any]
    text: str

    def summary(self) -> str:
        return self.text


def finetune(checkpoint: str, dataset: str, out_dir: str | os.PathLike, config: Any,
             cancel: Any = None, unlabelled: Any = None, unlabelled_name: str | None = None) -> Iterator[Any]:
    """:func:`~napari_mtunet.workflows.iter_finetune`, returning a :class:`FinetuneSummary`.  ``unlabelled``:
    uncorrected images of the same scanner (a folder and/or arrays of open image layers)."""
    from .workflows import iter_finetune

    outcome = yield from iter_finetune(checkpoint, dataset, out_dir, config=config, cancel=cancel,
                                       unlabelled=unlabelled or None, unlabelled_name=unlabelled_name)
    if outcome is None:
        return None
    return FinetuneSummary(child=str(outcome.child) if outcome.child is not None else None,
                           metrics=dict(outcome.metrics), text=outcome.summary())


# --------------------------------------------------------------------------- corrections


@dataclass
class Added:
    """A sample added to a training-set folder (what Undo needs)."""

    root: str
    path: str
    label: str | None


def add_samples(root: str, items: list, *, group: str | None = None, source: str | None = None,
                model: str | None = None) -> list[Added]:
    """:func:`napari_mtunet.workflows.annotate.add_samples`, returning what Undo needs."""
    from .workflows.annotate import add_samples as add

    return [Added(s.root, s.path, s.label) for s in add(root, items, group=group, source=source, model=model)]


def undo_sample(root: str, path: str) -> list[str]:
    """Remove a sample added by :func:`add_samples` (its row in ``labels.csv``, its image and mask)."""
    from .data.writer import remove_generic_sample

    return [str(p) for p in remove_generic_sample(root, Path(path).name)]


# --------------------------------------------------------------------------- datasets


@dataclass
class DatasetCheck:
    """A dataset as the Dataset widget shows it: the report's text, its problems, the samples to preview."""

    root: str
    layout: str | None
    summary: str
    problems: list[str]
    samples: list[Any]  # data.samples.Sample (a light module)


def check_dataset(root: str, layout: str, strict: bool) -> DatasetCheck:
    """Read and check the dataset ``root`` (:func:`napari_mtunet.data.load_dataset`)."""
    from .previews import load_dataset_report

    report = load_dataset_report(root, layout=layout, strict=strict)
    s = report.summary
    text = s.format() if hasattr(s, "format") else str(s)
    return DatasetCheck(root=str(root), layout=getattr(report, "layout", None), summary=text,
                        problems=[str(p) for p in report.problems], samples=list(report.samples))


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
