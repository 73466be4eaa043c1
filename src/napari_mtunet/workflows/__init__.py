"""The workflows: what a user does, written once, under the CLI, the widgets, the demo and the experiments.

Each long workflow is a generator of :mod:`napari_mtunet.events` that
``return``-s its outcome; run it with :func:`napari_mtunet.events.drive`
(the CLI, the API) or iterate it in a worker thread (the napari widgets).
A :class:`~napari_mtunet.events.CancelToken` stops it between batches/files.

============================  =================================================
``data.load`` / ``prepare``   dataset -> checked samples -> split -> torch datasets
``train.iter_train``          run config + folder -> checkpoints, split, test report
``finetune.iter_finetune``    checkpoint + corrections -> child checkpoint + evidence
``evaluate.evaluate``         checkpoint + dataset -> metrics with 95% CIs
``predict.iter_predict_files`` images -> masks + predictions.csv in a folder
``demo.iter_demo``            the synthetic-phantom demo
============================  =================================================
"""

from .data import LoadedData, PreparedData, load, prepare
from .demo import iter_demo
from .evaluate import EvaluationError, EvaluationOutcome, evaluate
from .finetune import FinetuneError, FinetuneOutcome, iter_finetune
from .predict import PredictFilesError, PredictFilesOutcome, iter_predict_files
from .train import RunFolderError, TrainOutcome, iter_train

__all__ = [
    "EvaluationError", "EvaluationOutcome", "FinetuneError", "FinetuneOutcome", "LoadedData", "PredictFilesError",
    "PredictFilesOutcome", "PreparedData", "RunFolderError", "TrainOutcome", "evaluate", "iter_demo",
    "iter_finetune", "iter_predict_files", "iter_train", "load", "prepare",
]
