"""Validation passes and precise BatchNorm statistics (used once per epoch by the trainer)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .losses import MultiTaskLoss
from .metrics import balanced_accuracy, dice_iou_per_image  # balanced_accuracy: re-exported (one definition)


@torch.no_grad()
def run_validation(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: MultiTaskLoss,
    device: torch.device,
    *,
    threshold: float = 0.5,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean losses and quick metrics (per-image Dice, accuracy, balanced accuracy)."""
    was_training = model.training
    model.eval()
    tot = seg = cls = 0.0
    n_batches = n_seg = n_cls = 0
    dices: list[np.ndarray] = []
    y_true: list[np.ndarray] = []
    y_pred: list[np.ndarray] = []
    ctx = torch.autocast(device_type=device.type, dtype=torch.float16) if amp else nullcontext()
    for batch in loader:
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            out = model(x)
            parts = loss_fn(out, batch)
        n_batches += 1
        tot += float(parts.total)
        if parts.seg is not None:
            seg += parts.seg * parts.n_seg
            n_seg += parts.n_seg
        if parts.cls is not None:
            cls += parts.cls * parts.n_cls
            n_cls += parts.n_cls
        if out.seg is not None:
            sel = torch.as_tensor(batch.get("has_mask", torch.ones(len(x)))).bool().numpy()
            if sel.any():
                pred = out.masks(threshold).cpu().numpy()
                true = batch["mask"][:, 0].numpy() > 0.5
                dices.append(dice_iou_per_image(pred[sel], true[sel])[0])
        if out.cls is not None:
            labels = batch["label"].numpy()
            sel = (labels >= 0) & torch.as_tensor(batch.get("has_label", torch.ones(len(x)))).bool().numpy()
            if sel.any():
                y_true.append(labels[sel])
                y_pred.append(out.cls.float().argmax(1).cpu().numpy()[sel])
    model.train(was_training)
    res: dict[str, float] = {"val_loss": tot / max(n_batches, 1)}
    if n_seg:
        res["val_seg_loss"] = seg / n_seg
    if n_cls:
        res["val_cls_loss"] = cls / n_cls
    if dices:
        res["val_dice"] = float(np.concatenate(dices).mean())
    if y_true:
        t, p = np.concatenate(y_true), np.concatenate(y_pred)
        res["val_accuracy"] = float((t == p).mean())
        res["val_balanced_accuracy"] = balanced_accuracy(t, p)
    return res


def batchnorm_layers(model: nn.Module, skip: nn.Module | None = None) -> list[nn.Module]:
    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m) not in skipped
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    max_batches: int,
    *,
    skip: nn.Module | None = None,
    channels_last: bool = False,
) -> int:
    """Precise BN: replace running statistics by their average over ``max_batches`` training batches.

    BatchNorm layers inside ``skip`` (a frozen encoder) are left alone.
    Returns the number of batches used.
    """
    bns = batchnorm_layers(model, skip)
    if not bns or max_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    model.train()
    if skip is not None:
        skip.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    n = 0
    for batch in loader:
        if n >= max_batches:
            break
        x = batch["image"].to(device)
        if len(x) < 2:
            continue
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
        n += 1
    for m, mom, (mean, var) in zip(bns, momenta, saved):
        m.momentum = mom
        if n == 0:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    model.train(was_training)
    return n
