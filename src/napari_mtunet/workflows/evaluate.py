"""The evaluation workflow: a checkpoint + a dataset -> metrics with 95% bootstrap CIs.

``split="auto"`` scores the checkpoint's own held-out test split when it was
trained on this dataset (the split is re-derived in memory from the run's
settings: same seed, same grouping; a checkpoint never decides where
anything is written), and every image otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig


class EvaluationError(ValueError):
    """The dataset cannot be scored with this checkpoint; the message says why."""


@dataclass
class EvaluationOutcome:
    report: Any  # training.EvaluationReport
    model_description: str
    split: str
    n_images: int


def evaluate(
    checkpoint: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    split: str = "auto",
    layout: str = "auto",
    device: str = "auto",
    threshold: float = 0.5,
    n_boot: int = 1000,
) -> EvaluationOutcome:
    from ..checkpoint import load_checkpoint
    from ..training import evaluate_model
    from .data import load, make_split, split_indices

    if split not in ("auto", "test", "val", "train", "all"):
        raise EvaluationError(f"split must be auto, test, val, train or all, got {split!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise EvaluationError(f"threshold must be in [0, 1], got {threshold}")
    model, info = load_checkpoint(checkpoint, device="cpu")
    run = info.run
    loaded = load(DataConfig(root=str(dataset), layout=layout))
    unknown = sorted({s.label for s in loaded.samples if s.label} - set(info.class_names))
    if unknown and model.classification_head is not None:
        raise EvaluationError(
            f"{dataset}: dataset classes {unknown} are unknown to the model {info.name} (classes {info.class_names})"
        )
    loaded.class_names = list(info.class_names)
    stored = run.data
    same_data = bool(stored.root) and Path(stored.root).resolve() == loaded.root.resolve()
    if split == "auto":
        split = "test" if same_data else "all"
    if split == "all":
        idx = None
    else:
        if not same_data:
            raise EvaluationError(
                f"{checkpoint} was trained on {stored.root or 'another dataset'}, not on {loaded.root}: "
                f"its {split} split does not exist here; use split 'all'"
            )
        cfg = stored.replace(split_file=None)  # re-derived in memory, never read from or written to a recorded path
        if cfg.max_samples:
            loaded = load(cfg.replace(root=str(loaded.root), layout=layout), class_names=info.class_names)
        idx = split_indices(loaded, make_split(loaded, cfg))[split]
        if len(idx) == 0:
            raise EvaluationError(f"{checkpoint}: its run has no {split} images (fraction 0); use another split")
    ds = loaded.dataset(idx, info.preprocessing)
    report = evaluate_model(model, ds, split=split, device=device, threshold=threshold, n_boot=n_boot,
                            postprocessing=info.postprocessing)
    return EvaluationOutcome(report=report, model_description=info.describe(), split=split, n_images=len(ds))
