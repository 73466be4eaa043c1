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


def _select(checkpoint, dataset, split: str, layout: str, layout_options: dict[str, Any] | None):
    """(model, info, loaded dataset, indices or None for all, the split scored) for an evaluation.

    ``layout_options`` None: the run's own options when ``dataset`` is the folder it was trained on or a folder
    above it (PANDA patches at the level trained on, so its split is found again), none otherwise."""
    from ..checkpoint import load_checkpoint
    from ..data.loading import dataset_root
    from .data import load, make_split, split_indices

    if split not in ("auto", "test", "val", "train", "all"):
        raise EvaluationError(f"split must be auto, test, val, train or all, got {split!r}")
    model, info = load_checkpoint(checkpoint, device="cpu")
    run = info.run
    stored = run.data
    if layout_options is None:
        trained_on = Path(stored.root).resolve() if stored.root else None
        here = Path(dataset).resolve()
        holds_it = trained_on is not None and (trained_on == here or here in trained_on.parents)
        layout_options = stored.layout_options if holds_it else {}
    loaded = load(DataConfig(root=str(dataset), layout=layout, layout_options=dict(layout_options)))
    unknown = sorted({s.label for s in loaded.samples if s.label} - set(info.class_names))
    if unknown and model.classification_head is not None:
        raise EvaluationError(
            f"{dataset}: dataset classes {unknown} are unknown to the model {info.name} (classes {info.class_names})"
        )
    loaded.class_names = list(info.class_names)
    # The folder the run read its images from, as the layout resolves it (trained on busi/, evaluated on
    # busi/Dataset_BUSI_with_GT/ or the other way round: the same images, so the same split).
    trained_root = dataset_root(stored.root, stored.layout) if stored.root else None
    same_data = trained_root is not None and trained_root == loaded.root.resolve()
    if split == "auto":
        split = "test" if same_data else "all"
    if split == "all":
        return model, info, loaded, None, split
    if not same_data:
        raise EvaluationError(
            f"{checkpoint} was trained on {stored.root or 'another dataset'}, not on {loaded.root}: "
            f"its {split} split does not exist here; use split 'all'"
        )
    cfg = stored.replace(split_file=None)  # re-derived in memory, never read from or written to a recorded path
    if cfg.max_samples:
        loaded = load(cfg.replace(root=str(loaded.root), layout=layout, layout_options=dict(layout_options)),
                      class_names=info.class_names)
    idx = split_indices(loaded, make_split(loaded, cfg))[split]
    if len(idx) == 0:
        raise EvaluationError(f"{checkpoint}: its run has no {split} images (fraction 0); use another split")
    return model, info, loaded, idx, split


def evaluate(
    checkpoint: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    split: str = "auto",
    layout: str = "auto",
    device: str = "auto",
    threshold: float = 0.5,
    n_boot: int = 1000,
    layout_options: dict[str, Any] | None = None,
) -> EvaluationOutcome:
    from ..training import evaluate_model

    if not 0.0 <= float(threshold) <= 1.0:
        raise EvaluationError(f"threshold must be in [0, 1], got {threshold}")
    model, info, loaded, idx, split = _select(checkpoint, dataset, split, layout, layout_options)
    ds = loaded.dataset(idx, info.preprocessing)
    report = evaluate_model(model, ds, split=split, device=device, threshold=threshold, n_boot=n_boot,
                            postprocessing=info.postprocessing)
    return EvaluationOutcome(report=report, model_description=info.describe(), split=split, n_images=len(ds))


def evaluate_interactive(
    checkpoint: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    split: str = "auto",
    layout: str = "auto",
    device: str = "auto",
    max_clicks: int = 20,
    stop_iou: float = 0.90,
    n_boot: int = 1000,
    progress: Any = None,
    layout_options: dict[str, Any] | None = None,
) -> EvaluationOutcome:
    """The simulated user (box prompt, then clicks; RITM protocol) on every image with an object in the split,
    through the Predictor at each image's own resolution (:mod:`napari_mtunet.training.interactive`)."""
    from ..data.io import load_sample
    from ..inference import Predictor
    from ..training.interactive import evaluate_interactive as run_protocol

    model, info, loaded, idx, split = _select(checkpoint, dataset, split, layout, layout_options)
    if not model.config.prompts:
        raise EvaluationError(f"{checkpoint}: the model {info.name} was trained without prompts; interactive "
                              "evaluation needs a model trained with --interactive")
    predictor = Predictor(checkpoint, device=device)
    indices = range(len(loaded.samples)) if idx is None else [int(i) for i in idx]

    def items():
        for i in indices:
            sample = loaded.samples[i]
            image, mask = load_sample(sample)
            if mask is None:
                continue
            yield sample.id, image, mask > 0, loaded.label_index(sample)

    report = run_protocol(predictor, items(), split=split, max_clicks=max_clicks, stop_iou=stop_iou, n_boot=n_boot,
                          progress=progress)
    return EvaluationOutcome(report=report, model_description=info.describe(), split=split, n_images=report.n)
