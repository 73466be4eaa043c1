"""The paper's experiments in one call: ``mtunet experiment DATASET --preset paper``.

For each encoder (default VGG16 and MobileNetV2) and each of k folds
(stratified by class, grouped by patient / duplicate cluster):

- ``baselines``: the multi-task model (both heads, w_seg:w_cls = 5:1) vs the
  single-task segmentation UNet (``seg_only``) vs the classification-only
  encoder (``cls_only``);
- ``ablation``: the multi-task model without skip connections (``multi_noskip``);
- ``weights``: task-weight sweep 1:1, 2:1, 5:1 (= ``multi``), 10:1, 1:2, 1:5, 1:10.

Every run trains on the fold's training part (a stratified 15% of it held
out for early stopping / best-checkpoint selection) and is scored on the
fold's test part.  Paired t-tests (scipy ``ttest_rel``) compare the
multi-task model with each baseline on the same folds; out-of-fold
predictions pooled over all folds give metrics with 95% bootstrap CIs.

Outputs in ``OUT``: ``settings.json``, ``runs/<encoder>/<variant>/fold<k>/``
(``result.json``, ``predictions.npz``, ``best.safetensors``),
``results.csv`` (one row per run), ``summary.csv``, ``tests.csv``,
``report.md`` and PNG figures.  Finished runs are never redone; an
interrupted run continues from its ``last.safetensors``.

One job per module: :mod:`.plan` (the settings, the runs they plan and each
run's configuration), :mod:`.run` (training and scoring the runs through the
training workflow), :mod:`.statistics` (paired tests over folds, pooled
out-of-fold metrics), :mod:`.report` (the CSV tables and ``report.md``),
:mod:`.figures` (the PNG figures).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .plan import METRIC_KEYS, STUDIES, WEIGHT_SWEEP, ExperimentSettings, RunSpec, parse_ratios, plan_runs, run_config_for

#: Imported on first use: planning (what ``mtunet --help`` needs) stays free of torch and matplotlib.
_LAZY = {
    "run_experiment": "run",
    "write_report": "report",
    "load_results": "statistics",
    "paired_tests": "statistics",
    "pooled_oof": "statistics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METRIC_KEYS",
    "STUDIES",
    "WEIGHT_SWEEP",
    "ExperimentSettings",
    "RunSpec",
    "load_results",
    "paired_tests",
    "parse_ratios",
    "plan_runs",
    "pooled_oof",
    "run_config_for",
    "run_experiment",
    "write_report",
]
