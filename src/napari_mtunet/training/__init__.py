"""Training engine, losses, metrics and evaluation (Qt-free)."""

from ..events import (
    BatchEnd,
    Callback,
    CancelToken,
    CheckpointSaved,
    EpochEnd,
    Failed,
    Finished,
    History,
    Progress,
    Status,
    TrainEvent,
)
from .engine import BEST_NAME, LAST_NAME, MONITORS, FitResult, Trainer, TrainingError, dataset_labels, train
from .evaluate import DatasetPredictions, evaluate_model, predict_dataset, report_from_predictions
from .finetune import parent_record
from .losses import MultiTaskLoss, balanced_class_weights
from .metrics import EvaluationReport, MetricValue, classification_metrics, segmentation_metrics

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "MONITORS",
    "BatchEnd",
    "Callback",
    "CancelToken",
    "CheckpointSaved",
    "DatasetPredictions",
    "EpochEnd",
    "EvaluationReport",
    "Failed",
    "Finished",
    "FitResult",
    "History",
    "MetricValue",
    "MultiTaskLoss",
    "Progress",
    "Status",
    "TrainEvent",
    "Trainer",
    "TrainingError",
    "balanced_class_weights",
    "classification_metrics",
    "dataset_labels",
    "evaluate_model",
    "parent_record",
    "predict_dataset",
    "report_from_predictions",
    "segmentation_metrics",
    "train",
]
