"""Run a model over a dataset and build the :class:`~.metrics.EvaluationReport`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .metrics import (
    N_BOOTSTRAP,
    EvaluationReport,
    balanced_accuracy,
    classification_metrics,
    dice_iou_from_sums,
    pooled_dice,
    seg_sums,
    segmentation_metrics,
)


@dataclass
class DatasetPredictions:
    """Model outputs for every item of a dataset, in dataset order."""

    index: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) int, -1 = none
    has_label: np.ndarray  # (N,) bool
    has_mask: np.ndarray  # (N,) bool
    probabilities: np.ndarray | None  # (N, C)
    pred_masks: np.ndarray | None  # (N, H, W) bool
    true_masks: np.ndarray | None  # (N, H, W) bool


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
    batch_size: int = 16,
    postprocessing=None,
) -> DatasetPredictions:
    """Model outputs for every item, in order; ``postprocessing`` (a
    :class:`~napari_mtunet.config.Postprocessing`) applies test-time augmentation and small-lesion
    removal exactly as the Predictor does."""
    from ..device import resolve_device
    from ..postprocess import consistent_class_probabilities, forward, no_lesion_index, remove_small_lesions

    tta = bool(getattr(postprocessing, "hflip_tta", False))
    nl = no_lesion_index(postprocessing, list(getattr(getattr(model, "config", None), "class_names", None) or []))
    min_fraction = float(getattr(postprocessing, "min_lesion_fraction", 0.0) or 0.0)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    model = model.to(dev).eval()
    idx, labels, has_label, has_mask, probs, pmask, tmask = [], [], [], [], [], [], []
    for batch in loader:
        x = batch["image"].to(dev)
        out = forward(model, x, hflip_tta=tta)
        n = len(x)
        _refuse_non_finite(out, batch, n)
        idx.append(np.asarray(batch.get("index", torch.arange(n))).reshape(-1))
        labels.append(batch["label"].numpy().reshape(-1))
        has_label.append(np.asarray(batch.get("has_label", torch.ones(n))).astype(bool).reshape(-1))
        has_mask.append(np.asarray(batch.get("has_mask", torch.ones(n))).astype(bool).reshape(-1))
        cls_p = out.class_probabilities().cpu().numpy() if out.cls is not None else None
        if out.seg is not None:
            pm = remove_small_lesions(out.masks(threshold).cpu().numpy(), min_fraction)
            pmask.append(pm)
            tmask.append(batch["mask"][:, 0].numpy() > 0.5)
            if cls_p is not None and nl is not None:  # the heads agree, as in the Predictor
                cls_p = consistent_class_probabilities(cls_p, pm.reshape(n, -1).any(axis=1), nl)
        if cls_p is not None:
            probs.append(cls_p)
    cat = lambda xs: np.concatenate(xs) if xs else None  # noqa: E731
    return DatasetPredictions(
        index=cat(idx),
        labels=cat(labels),
        has_label=cat(has_label) & (cat(labels) >= 0),
        has_mask=cat(has_mask),
        probabilities=cat(probs),
        pred_masks=cat(pmask),
        true_masks=cat(tmask),
    )


@dataclass
class ImageScores:
    """Per-image scores of a model's predictions, in dataset order: the one scorer of fine-tuning (before and
    after), the fine-tuning study and the experiments' kept predictions."""

    labels: np.ndarray  # (N,) true class, -1 = none
    has_label: np.ndarray  # (N,) bool
    predicted: np.ndarray | None  # (N,) predicted class; None without a class head
    has_mask: np.ndarray  # (N,) bool
    inter: np.ndarray | None  # (N,) |P & T| in pixels; None without a segmentation head
    p_sum: np.ndarray | None  # (N,) |P|
    t_sum: np.ndarray | None  # (N,) |T|

    @classmethod
    def from_predictions(cls, preds: DatasetPredictions) -> ImageScores:
        sums = seg_sums(preds.pred_masks, preds.true_masks) if preds.pred_masks is not None else (None,) * 3
        predicted = preds.probabilities.argmax(1) if preds.probabilities is not None else None
        return cls(preds.labels, preds.has_label, predicted, preds.has_mask, *sums)

    @property
    def dice(self) -> np.ndarray | None:
        """(N,) per-image Dice (both masks empty = 1)."""
        return None if self.inter is None else dice_iou_from_sums(self.inter, self.p_sum, self.t_sum)[0]

    @property
    def iou(self) -> np.ndarray | None:
        return None if self.inter is None else dice_iou_from_sums(self.inter, self.p_sum, self.t_sum)[1]

    def summary(self) -> dict[str, float]:
        """``n``; over the images with a mask, the mean per-image ``dice`` and ``dice_pooled`` (all pixels pooled:
        stable on a handful of images, where one empty mask flips a per-image Dice 0 <-> 1); over the images
        with a class, ``accuracy`` and ``balanced_accuracy``."""
        out: dict[str, float] = {"n": float(len(self.labels))}
        if self.inter is not None and self.has_mask.any():
            sel = self.has_mask
            out["dice"] = float(self.dice[sel].mean())
            out["dice_pooled"] = pooled_dice(self.inter[sel], self.p_sum[sel], self.t_sum[sel])
        if self.predicted is not None and self.has_label.any():
            sel = self.has_label
            y, p = self.labels[sel], self.predicted[sel]
            out["accuracy"] = float((y == p).mean())
            out["balanced_accuracy"] = balanced_accuracy(y, p)
        return out


def score_images(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    device: str | torch.device = "cpu",
    postprocessing=None,
) -> ImageScores:
    """Predict ``data`` (post-processing applied as in :func:`predict_dataset`) and score every image."""
    return ImageScores.from_predictions(predict_dataset(model, data, device=device, postprocessing=postprocessing))


def _refuse_non_finite(out, batch, n: int) -> None:
    """No metric is computed from NaN/inf outputs: they would print plausible numbers (NaN > t is False)."""
    from ..inference import NonFiniteOutputError

    for name, t in (("segmentation", out.seg), ("class", out.cls)):
        if t is None:
            continue
        bad = ~torch.isfinite(t.reshape(n, -1)).all(dim=1)
        if bool(bad.any()):
            index = np.asarray(batch.get("index", torch.arange(n))).reshape(-1)[bad.cpu().numpy()]
            raise NonFiniteOutputError(
                f"the model produced NaN/infinite {name} outputs for {int(bad.sum())} image(s) (dataset item(s) "
                f"{index[:5].tolist()}); evaluation refused, since metrics computed from them would be "
                "meaningless (the model's weights are broken)"
            )


def report_from_predictions(
    preds: DatasetPredictions,
    class_names: list[str],
    *,
    split: str = "test",
    threshold: float = 0.5,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> EvaluationReport:
    report = EvaluationReport(split=split, n_images=len(preds.labels), threshold=threshold)
    if preds.probabilities is not None:
        sel = preds.has_label
        report.classification = classification_metrics(
            preds.labels[sel], preds.probabilities[sel], class_names, split=split, n_boot=n_boot, seed=seed
        )
        if (~sel).any():
            report.notes.append(f"{int((~sel).sum())} image(s) without a class label were not scored for classification")
    if preds.pred_masks is not None:
        sel = preds.has_mask
        report.segmentation = segmentation_metrics(
            preds.pred_masks[sel], preds.true_masks[sel], split=split, n_boot=n_boot, seed=seed
        )
        if (~sel).any():
            report.notes.append(f"{int((~sel).sum())} image(s) without a mask were not scored for segmentation")
    return report


def evaluate_model(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    split: str = "test",
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
    n_boot: int = N_BOOTSTRAP,
    batch_size: int = 16,
    postprocessing=None,
) -> EvaluationReport:
    """Predict ``data`` and compute the full report (metrics with 95% bootstrap CIs)."""
    preds = predict_dataset(model, data, device=device, threshold=threshold, batch_size=batch_size,
                            postprocessing=postprocessing)
    report = report_from_predictions(
        preds, list(model.config.class_names), split=split, threshold=threshold, n_boot=n_boot
    )
    from ..postprocess import describe_postprocessing

    note = describe_postprocessing(postprocessing)
    if note:
        report.notes.append(f"post-processing: {note}")
    return report
