"""Optimizer, learning-rate schedule and freezing for the trainer.

- Two parameter groups: the encoder at ``lr * encoder_lr_scale`` (pretrained
  features change slowly) and the decoder + heads at ``lr``.
- The per-step schedule is a pure function of the step index (linear warm-up,
  then constant or cosine decay to 0 at the last step), so a resumed run
  follows the same curve; ``plateau`` is an epoch-level ``ReduceLROnPlateau``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def apply_freezing(model: nn.Module, *, freeze_encoder: bool) -> None:
    """Freeze the encoder's parameters (they get no gradient and no optimizer state)."""
    if freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    scale = float(cfg.encoder_lr_scale)
    enc = [p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids and scale > 0]
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    if scale == 0:  # a zero learning rate is a frozen encoder: no gradients, no optimizer state
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    if not enc and not other:
        raise ValueError("no trainable parameters (everything is frozen)")
    groups = []
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * scale, "name": "encoder"})
    if other:
        groups.append({"params": other, "lr": cfg.lr, "name": "decoder_heads"})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def warming_up(cfg: TrainConfig, epoch: int) -> bool:
    return float(cfg.warmup_epochs) > 0 and epoch <= math.ceil(min(float(cfg.warmup_epochs), cfg.epochs / 2))


def lr_factor(cfg: TrainConfig, epoch: int, batch: int, n_batches: int) -> float | None:
    """The schedule's multiplier of the base rates at this step (None: leave the rates alone)."""
    step = (epoch - 1) * n_batches + (batch - 1)
    total = max(1, int(cfg.epochs) * n_batches)
    # the warm-up takes at most half of a short run
    warm = min(int(round(float(cfg.warmup_epochs) * n_batches)), total // 2)
    if warm > 0 and step < warm:
        return (step + 1) / (warm + 1)
    if cfg.lr_schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if warm > 0 and step == warm:
        return 1.0  # warm-up over: back to the base rates (a plateau schedule takes over from here)
    return None


def set_step_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, batch: int, n_batches: int) -> None:
    factor = lr_factor(cfg, epoch, batch, n_batches)
    if factor is None:
        return
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
