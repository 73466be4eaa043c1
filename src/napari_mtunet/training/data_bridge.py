"""Glue between the data package (:mod:`napari_mtunet.data`) and the CLI/experiments.

Everything here delegates to the data package: layouts, file reading,
splits and transforms live there.  Where a high-level entry point of the
data package is not available, a minimal equivalent built on its pieces is
used (layout reader + ``load_sample``; scikit-learn's StratifiedGroupKFold
for splits), so the CLI keeps working while the data layer evolves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import AugmentConfig, DataConfig


@dataclass
class LoadedData:
    root: Path
    layout: str
    samples: list  # list[Sample]
    class_names: list[str]
    problems: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def label_index(self, sample) -> int:
        return self.class_names.index(sample.label) if sample.label in self.class_names else -1

    @property
    def labels(self) -> list[int]:
        return [self.label_index(s) for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.group or s.id for s in self.samples]

    def summary(self) -> str:
        from collections import Counter

        counts = Counter(s.label for s in self.samples)
        n_mask = sum(1 for s in self.samples if s.has_mask)
        n_empty = sum(1 for s in self.samples if s.mask_is_empty)
        n_groups = len(set(self.groups))
        lines = [
            f"Dataset {self.root} (layout {self.layout}): {len(self.samples)} images",
            "  classes: " + ", ".join(f"{c}={counts.get(c, 0)}" for c in self.class_names),
            f"  masks: {n_mask} annotated ({n_empty} empty), {len(self.samples) - n_mask} without mask",
            f"  groups (patients / duplicate clusters): {n_groups}",
        ]
        if counts.get(None):
            lines.append(f"  unlabelled images: {counts[None]}")
        lines += ["  " + n for n in self.notes]
        if self.problems:
            lines.append(f"  problems ({len(self.problems)}):")
            for p in self.problems[:50]:
                lines.append("    " + _problem_text(p))
            if len(self.problems) > 50:
                lines.append(f"    ... and {len(self.problems) - 50} more")
        else:
            lines.append("  problems: none")
        return "\n".join(lines)


def _problem_text(p: Any) -> str:
    if hasattr(p, "format"):
        try:
            return str(p.format())
        except TypeError:
            pass
    for attrs in (("file", "kind", "message", "action"),):
        if all(hasattr(p, a) for a in attrs):
            return f"{p.file}: {p.message} [{p.kind}; {p.action}]"
    return str(p)


def load_data(
    root: str | Path,
    layout: str = "auto",
    *,
    strict: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
) -> LoadedData:
    """Read a dataset folder into Sample records (stratified subsample when ``max_samples``)."""
    from ..data import layouts as L

    root = Path(root)
    data_pkg = _data_api()
    if data_pkg.get("load_dataset") is not None:
        res = data_pkg["load_dataset"](root, layout=layout, strict=strict)
        samples = list(getattr(res, "samples", res))
        class_names = list(getattr(res, "class_names", None) or sorted({s.label for s in samples if s.label}))
        loaded = LoadedData(
            root=Path(getattr(res, "root", root)),
            layout=str(getattr(res, "layout", layout)),
            samples=samples,
            class_names=class_names,
            problems=list(getattr(res, "problems", [])),
            notes=list(getattr(res, "notes", [])),
        )
    else:
        if layout == "auto":
            name, where = L.detect_layout(root)
        else:
            name, where = layout, root
        res = L.load_layout(name, where)
        if strict and res.problems:
            raise ValueError(f"{where}: {len(res.problems)} problem(s): " + _problem_text(res.problems[0]))
        class_names = list(res.class_names or sorted({s.label for s in res.samples if s.label}))
        loaded = LoadedData(where, name, list(res.samples), class_names, list(res.problems), list(res.notes))
    if not loaded.samples:
        raise ValueError(f"{root}: no usable images found")
    if max_samples is not None and len(loaded.samples) > max_samples:
        loaded.samples = _stratified_subset(loaded, int(max_samples), seed)
        loaded.notes.append(f"subsampled to {len(loaded.samples)} images (--max-samples, stratified, seed {seed})")
    return loaded


def _data_api() -> dict[str, Any]:
    """High-level entry points of the data package, when present."""
    import importlib

    api: dict[str, Any] = {}
    try:
        data = importlib.import_module("napari_mtunet.data")
    except ImportError:  # pragma: no cover
        return api
    for name in ("load_dataset",):
        api[name] = getattr(data, name, None)
    return api


def _stratified_subset(loaded: LoadedData, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    labels = np.array(loaded.labels)
    keep: list[int] = []
    classes = np.unique(labels)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * len(idx) / len(labels))))
        keep.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    keep = sorted(keep)[: max(n, len(classes))]
    return [loaded.samples[i] for i in sorted(keep)]


# --------------------------------------------------------------------------- splits


def kfold_indices(loaded: LoadedData, n_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (by class) and grouped (patient / duplicate cluster) k-fold: ``[(train, test)]``."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array(loaded.labels)
    groups = np.array(loaded.groups)
    skf = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in skf.split(np.zeros(len(y)), y, groups)]


def holdout_indices(
    loaded: LoadedData, indices: Sequence[int] | None, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, held-out ~fraction), stratified and grouped."""
    idx = np.arange(len(loaded.samples)) if indices is None else np.asarray(indices)
    if fraction <= 0:
        return idx, idx[:0]
    k = max(2, int(round(1.0 / fraction)))
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array(loaded.labels)[idx]
    groups = np.array(loaded.groups)[idx]
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr, te = next(iter(skf.split(np.zeros(len(idx)), y, groups)))
    return np.sort(idx[tr]), np.sort(idx[te])


def train_val_test(loaded: LoadedData, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Train/val/test indices following ``cfg`` (fractions, seed; ``cfg.fold`` picks a k-fold test fold)."""
    if cfg.fold is not None:
        folds = kfold_indices(loaded, cfg.n_folds, cfg.seed)
        if not 0 <= cfg.fold < len(folds):
            raise ValueError(f"fold must be in 0..{len(folds) - 1}, got {cfg.fold}")
        rest, test = folds[cfg.fold]
    else:
        rest, test = holdout_indices(loaded, None, cfg.test_fraction, cfg.seed)
    frac = cfg.val_fraction / max(1e-9, 1.0 - (cfg.test_fraction if cfg.fold is None else 1.0 / cfg.n_folds))
    train, val = holdout_indices(loaded, rest, min(frac, 0.5) if cfg.val_fraction > 0 else 0.0, cfg.seed + 1)
    return {"train": train, "val": val, "test": test}


# --------------------------------------------------------------------------- torch datasets


class SampleDataset(Dataset):
    """Item dicts from Sample records: resized to ``image_size``, optional joint augmentation.

    Decoded, resized images are cached in memory (``cache=True``) so PNG
    decoding happens once.
    """

    def __init__(
        self,
        samples: Sequence,
        class_names: Sequence[str],
        image_size: int,
        *,
        augment: AugmentConfig | None = None,
        cache: bool = True,
        store: dict | None = None,
    ):
        self.samples = list(samples)
        self._store = store  # optional cache shared between datasets, keyed by (sample id, size)
        self.class_names = list(class_names)
        self.image_size = int(image_size)
        self.augment = augment if (augment is not None and augment.enabled) else None
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self.labels = [self.class_names.index(s.label) if s.label in self.class_names else -1 for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if i in self._cache:
            return self._cache[i]
        key = (self.samples[i].id, self.image_size)
        if self._store is not None and key in self._store:
            self._cache[i] = self._store[key]
            return self._cache[i]
        from torch.nn import functional as F

        from ..data.io import load_sample
        from ..preprocess import to_float_rgb

        s = self.samples[i]
        image, mask = load_sample(s)
        img = torch.from_numpy(to_float_rgb(image, where=str(s.image))).permute(2, 0, 1)[None]
        size = (self.image_size, self.image_size)
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
        if mask is not None:
            m = torch.from_numpy(np.ascontiguousarray(mask > 0, dtype=np.float32))[None, None]
            m = (F.interpolate(m, size=size, mode="bilinear", align_corners=False) >= 0.5).float()[0]
        else:
            m = torch.zeros(1, *size)
        out = (img.contiguous(), m, mask is not None)
        if self.cache:
            self._cache[i] = out
        if self._store is not None:
            self._store[key] = out
        return out

    def __getitem__(self, i: int) -> dict:
        img, mask, has_mask = self._decode(i)
        if self.augment is not None:
            img, mask = _augment(img, mask, self.augment)
        label = self.labels[i]
        return {
            "image": img,
            "mask": mask,
            "label": torch.tensor(label, dtype=torch.int64),
            "has_mask": torch.tensor(has_mask),
            "has_label": torch.tensor(label >= 0),
            "index": torch.tensor(i),
        }


def _augment(img: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint flips/rotation/shear (torchvision.transforms.v2, mask kept binary)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    ops: list = []
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.vflip:
        ops.append(v2.RandomVerticalFlip())
    if cfg.rotation_degrees or cfg.shear_degrees:
        ops.append(v2.RandomAffine(degrees=cfg.rotation_degrees, shear=cfg.shear_degrees or None))
    if not ops:
        return img, mask
    t = v2.Compose(ops)
    out_img, out_mask = t(tv_tensors.Image(img), tv_tensors.Mask(mask))
    return out_img.as_subclass(torch.Tensor), (out_mask.as_subclass(torch.Tensor) > 0.5).float()


def make_dataset(
    loaded: LoadedData,
    indices: Sequence[int] | None,
    image_size: int,
    *,
    augment: AugmentConfig | None = None,
    cache: bool = True,
    store: dict | None = None,
) -> SampleDataset:
    idx = range(len(loaded.samples)) if indices is None else indices
    return SampleDataset(
        [loaded.samples[int(i)] for i in idx], loaded.class_names, image_size, augment=augment, cache=cache, store=store
    )


def subsample(seq_len: int, n: int | None) -> list[int]:
    if n is None or n >= seq_len:
        return list(range(seq_len))
    step = seq_len / n
    return [int(math.floor(i * step)) for i in range(n)]
