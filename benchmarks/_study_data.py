"""Shared data and scoring for the recipe study and the plain reference loop.

Both score with the project's metric conventions (per-image Dice: both masks
empty = 1, exactly one empty = 0; balanced accuracy) on the same grouped,
stratified k-fold splits of a dataset (``napari_mtunet.data.kfold_splits``:
duplicate clusters never straddle train and test).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Arrays:
    root: Path
    samples: list
    class_names: list[str]
    x: torch.Tensor  # uint8 (N, 3, S, S)
    m: torch.Tensor  # uint8 (N, 1, S, S)
    y: torch.Tensor  # int64 (N,)

    def folds(self, k: int, seed: int = 0, val_fraction: float = 0.0):
        from napari_mtunet.data import kfold_splits, sample_key

        pos = {sample_key(s, self.root): i for i, s in enumerate(self.samples)}
        out = []
        for f in kfold_splits(self.samples, k, seed, val_fraction=val_fraction, root=self.root):
            out.append({part: np.array(sorted(pos[key] for key in getattr(f, part)), dtype=int)
                        for part in ("train", "val", "test")})
        return out


def load_arrays(dataset: str | Path, size: int) -> Arrays:
    """Decode every sample once at ``size`` (cached in /tmp across runs)."""
    from napari_mtunet.config import Preprocessing
    from napari_mtunet.data import SampleDataset, load_dataset

    rep = load_dataset(Path(dataset))
    samples, names = list(rep.samples), list(rep.class_names)
    key = hashlib.sha1(f"{Path(dataset).resolve()}:{size}:{len(samples)}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"mtunet_study_{key}.pt"
    if cache.is_file():
        x, m, y = torch.load(cache, weights_only=True)
    else:
        ds = SampleDataset(samples, names, Preprocessing(image_size=size), None, False, True)
        ds.fill_cache()
        xs, ms = zip(*(ds.decoded(i) for i in range(len(ds))))
        x = torch.stack([t if t.dtype == torch.uint8 else (t.float() * 255).round().to(torch.uint8) for t in xs])
        m = torch.stack([(t if t is not None else torch.zeros(1, size, size, dtype=torch.uint8)) > 0 for t in ms]).to(torch.uint8)
        y = torch.tensor(ds.labels, dtype=torch.int64)
        torch.save((x, m, y), cache)
    return Arrays(Path(rep.root), samples, names, x, m, y)


def fold_arrays(data: Arrays, fold: dict, include_val: bool = True):
    tr = fold["train"] if not include_val else np.concatenate([fold["train"], fold["val"]])
    te = fold["test"]
    return (data.x[tr], data.m[tr], data.y[tr]), (data.x[te], data.m[te], data.y[te])


@torch.no_grad()
def score(predict, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, batch: int = 32) -> dict:
    """Per-image Dice (mean) and balanced accuracy of ``predict(x uint8 batch) -> (seg logits, cls logits)``."""
    from sklearn.metrics import balanced_accuracy_score

    from napari_mtunet.training.metrics import dice_iou_per_image

    dices, preds = [], []
    for i in range(0, len(x), batch):
        seg, cls = predict(x[i:i + batch])
        if seg is not None:
            pm = (torch.sigmoid(seg[:, 0].float()) > 0.5).numpy()
            dices.append(dice_iou_per_image(pm, m[i:i + batch, 0].numpy() > 0)[0])
        if cls is not None:
            preds.append(cls.argmax(1).numpy())
    out = {}
    if dices:
        out["dice"] = float(np.concatenate(dices).mean())
    if preds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["balanced_accuracy"] = float(balanced_accuracy_score(y.numpy(), np.concatenate(preds)))
    return out
