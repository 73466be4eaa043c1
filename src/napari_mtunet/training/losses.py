"""The multi-task loss ``w_seg * L_seg + w_cls * L_cls``.

- ``L_seg``: binary cross-entropy with logits (the paper), or Dice + BCE
  (``segmentation_models_pytorch.losses``), over the images that *have* a
  mask (``has_mask``; an empty mask is a valid "no lesion" target).
- ``L_cls``: cross-entropy, optionally with scikit-learn's "balanced" class
  weights ``n_samples / (n_classes * count_c)`` computed on the training
  split, over the images that have a label (``has_label``).

A term with no eligible sample in the batch contributes an exact zero that
still depends on the outputs (so every parameter receives a gradient, as
DistributedDataParallel requires).  Single-task models use one term only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's ``compute_class_weight("balanced")`` for labels ``0..num_classes-1``.

    Unlabelled entries (< 0) are ignored.  A class absent from the training
    labels gets weight 1 (it never occurs as a target, so its weight has no
    effect on the loss).
    """
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray([int(v) for v in labels], dtype=np.int64)
    y = y[y >= 0]
    weights = np.ones(int(num_classes), dtype=np.float64)
    if len(y) == 0:
        return torch.ones(int(num_classes), dtype=torch.float32)
    if y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} out of range for {num_classes} classes")
    present = np.unique(y)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.as_tensor(weights, dtype=torch.float32)


@dataclass
class LossParts:
    """The total loss (a tensor, for backward) and its detached terms (None when not computed)."""

    total: torch.Tensor
    seg: float | None
    cls: float | None
    n_seg: int
    n_cls: int


class MultiTaskLoss(nn.Module):
    """``w_seg * L_seg + w_cls * L_cls`` with per-sample masking of missing targets."""

    def __init__(
        self,
        task: str = "both",
        *,
        w_seg: float = 5.0,
        w_cls: float = 1.0,
        seg_loss: str = "bce",
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if task not in ("both", "seg", "cls"):
            raise ValueError(f"unknown task {task!r}")
        if seg_loss not in ("bce", "dice_bce"):
            raise ValueError(f"seg_loss must be 'bce' or 'dice_bce', got {seg_loss!r}")
        self.task = task
        # A single-task model has one term, weighted as configured (the absent head's weight is 0:
        # see RunConfig.effective_loss_weights, which is also what checkpoints record).
        self.w_seg = float(w_seg) if task != "cls" else 0.0
        self.w_cls = float(w_cls) if task != "seg" else 0.0
        if task == "seg" and self.w_seg <= 0:
            raise ValueError("task 'seg' needs w_seg > 0")
        if task == "cls" and self.w_cls <= 0:
            raise ValueError("task 'cls' needs w_cls > 0")
        self.seg_loss = seg_loss
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        )
        self._dice = None
        if seg_loss == "dice_bce":
            from segmentation_models_pytorch.losses import DiceLoss

            self._dice = DiceLoss(mode="binary", from_logits=True)

    def segmentation_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = F.binary_cross_entropy_with_logits(logits, target.float())
        if self._dice is not None:
            loss = loss + self._dice(logits, target.float())
        return loss

    def classification_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits.float(), target, weight=w)

    def forward(self, output, batch: dict[str, torch.Tensor]) -> LossParts:
        seg_out, cls_out = output
        device = (seg_out if seg_out is not None else cls_out).device
        total = torch.zeros((), device=device)
        seg_val = cls_val = None
        n_seg = n_cls = 0
        if self.task in ("both", "seg") and seg_out is not None:
            sel = _selection(batch, "has_mask", device, len(seg_out))
            n_seg = int(sel.sum())
            if n_seg:
                term = self.segmentation_term(seg_out[sel], batch["mask"].to(device)[sel])
                seg_val = float(term.detach())
            else:
                term = seg_out.sum() * 0.0
            total = total + self.w_seg * term
        if self.task in ("both", "cls") and cls_out is not None:
            labels = batch["label"].to(device).long()
            sel = _selection(batch, "has_label", device, len(cls_out)) & (labels >= 0)
            n_cls = int(sel.sum())
            if n_cls:
                term = self.classification_term(cls_out[sel], labels[sel])
                cls_val = float(term.detach())
            else:
                term = cls_out.sum() * 0.0
            total = total + self.w_cls * term
        return LossParts(total, seg_val, cls_val, n_seg, n_cls)


def _selection(batch: dict, key: str, device, n: int) -> torch.Tensor:
    if key not in batch:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(batch[key], device=device).bool().reshape(-1)
