"""Fine-tuning: continue training an existing checkpoint on new samples.

Typical use (the napari "annotate and fine-tune" loop)::

    result = finetune("model.safetensors", new_train, new_val, out_dir="ft",
                      freeze_encoder=True, replay=original_train, replay_size=100)

The new checkpoints record their parent (the source checkpoint's content
hash and path) in their metadata (``CheckpointInfo.parent``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from ..config import TrainConfig
from .engine import FitResult, Trainer


def parent_record(info) -> str:
    """How a child checkpoint names its parent: ``"<sha256>:<file name>"``."""
    name = info.path.name if info.path is not None else "<in-memory>"
    return f"{info.content_hash}:{name}"


def make_replay(replay: Dataset, replay_size: int | None, seed: int = 0) -> Dataset:
    """A random subset (fixed seed) of the original training set to mix with the new samples."""
    n = len(replay)
    if replay_size is None or replay_size >= n:
        return replay
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: int(replay_size)].tolist()
    return Subset(replay, sorted(idx))


def finetune(
    checkpoint: str | os.PathLike,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    train_config: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    freeze_encoder: bool = False,
    replay: Dataset | None = None,
    replay_size: int | None = None,
    **trainer_kwargs: Any,
) -> FitResult:
    """Train the model of ``checkpoint`` further on ``train_data`` (+ optional replay).

    The default ``train_config`` is the one stored in the checkpoint with a
    smaller learning rate (1/10) and 10 epochs.
    """
    return make_finetune_trainer(
        checkpoint,
        train_data,
        val_data,
        train_config=train_config,
        out_dir=out_dir,
        freeze_encoder=freeze_encoder,
        replay=replay,
        replay_size=replay_size,
        **trainer_kwargs,
    ).fit()


def make_finetune_trainer(
    checkpoint: str | os.PathLike,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    train_config: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    freeze_encoder: bool = False,
    replay: Dataset | None = None,
    replay_size: int | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """The :class:`Trainer` that :func:`finetune` runs (use ``iter_fit()`` to stream events)."""
    from ..checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint, device="cpu")
    if train_config is None:
        stored = info.training.get("train_config")
        train_config = TrainConfig.from_dict(stored) if stored else TrainConfig()
        train_config.lr = train_config.lr / 10.0
        train_config.epochs = 10
    data = train_data
    if replay is not None:
        data = ConcatDataset([train_data, make_replay(replay, replay_size, train_config.seed)])
    extra = dict(trainer_kwargs.pop("extra_training_metadata", None) or {})
    extra["finetune"] = {
        "parent_path": str(info.path) if info.path is not None else None,
        "parent_hash": info.content_hash,
        "n_new": len(train_data),
        "n_replay": len(data) - len(train_data),
        "freeze_encoder": bool(freeze_encoder),
    }
    return Trainer(
        model,
        train_config,
        data,
        val_data,
        out_dir=out_dir,
        parent=parent_record(info),
        freeze_encoder=freeze_encoder,
        extra_training_metadata=extra,
        **trainer_kwargs,
    )
