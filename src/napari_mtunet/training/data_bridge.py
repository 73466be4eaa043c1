"""Glue between the data package (:mod:`napari_mtunet.data`) and the CLI/experiments.

Everything is delegated to the data package: loading and validation
(``load_dataset``), leak-free splits grouped by patient / duplicate cluster
(``kfold_splits``, ``split_for_config``) and the torch ``SampleDataset``
with its transforms.  This module only converts between their key-based
splits and index lists, and shares one decode cache between the many
datasets of a k-fold experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from ..config import AugmentConfig, DataConfig, Preprocessing


@dataclass
class LoadedData:
    root: Path
    layout: str
    samples: list  # list[Sample]
    class_names: list[str]
    problems: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Any = None  # the data package's DatasetReport

    def label_index(self, sample) -> int:
        return self.class_names.index(sample.label) if sample.label in self.class_names else -1

    @property
    def labels(self) -> list[int]:
        return [self.label_index(s) for s in self.samples]

    @property
    def groups(self) -> list[str]:
        from ..data import split_groups

        return list(split_groups(self.samples))

    def key(self, sample) -> str:
        from ..data import sample_key

        return sample_key(sample, self.root)

    def headline(self) -> str:
        return f"Dataset {self.root} (layout {self.layout}): {len(self.samples)} images"

    def summary(self) -> str:
        text = self.report.format() if self.report is not None and hasattr(self.report, "format") else self.headline()
        if self.notes:
            text += "\n" + "\n".join("  " + n for n in self.notes if n not in text)
        return text


def load_data(
    root: str | Path,
    layout: str = "auto",
    *,
    strict: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> LoadedData:
    """Read a dataset folder (``napari_mtunet.data.load_dataset``); stratified subsample when ``max_samples``."""
    from ..data import load_dataset

    rep = load_dataset(Path(root), layout=layout, strict=strict, class_names=class_names)
    loaded = LoadedData(
        root=Path(rep.root),
        layout=str(rep.layout),
        samples=list(rep.samples),
        class_names=list(rep.class_names),
        problems=list(rep.problems),
        notes=[],
        report=rep,
    )
    if not loaded.samples:
        raise ValueError(f"{root}: no usable images found")
    if max_samples is not None and len(loaded.samples) > max_samples:
        loaded.samples = _stratified_subset(loaded, int(max_samples), seed)
        loaded.notes.append(f"subsampled to {len(loaded.samples)} images (--max-samples, stratified, seed {seed})")
    return loaded


def _stratified_subset(loaded: LoadedData, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    labels = np.array(loaded.labels)
    keep: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * len(idx) / len(labels))))
        keep.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    return [loaded.samples[i] for i in sorted(keep)]


# --------------------------------------------------------------------------- splits


def _to_indices(loaded: LoadedData, split) -> dict[str, np.ndarray]:
    pos = {loaded.key(s): i for i, s in enumerate(loaded.samples)}
    return {part: np.array(sorted(pos[k] for k in getattr(split, part)), dtype=int) for part in ("train", "val", "test")}


def kfold_indices(
    loaded: LoadedData, n_folds: int, seed: int = 0, *, val_fraction: float = 0.0
) -> list[dict[str, np.ndarray]]:
    """k folds (stratified by class, grouped by patient / duplicate cluster): ``[{train, val, test}]``."""
    from ..data import kfold_splits

    folds = kfold_splits(loaded.samples, int(n_folds), int(seed), val_fraction=val_fraction, root=loaded.root)
    return [_to_indices(loaded, f) for f in folds]


def train_val_test(loaded: LoadedData, cfg: DataConfig) -> dict[str, np.ndarray]:
    """The split a DataConfig asks for (holdout, or k-fold fold ``cfg.fold``), as index arrays."""
    from ..data import split_for_config

    return _to_indices(loaded, split_for_config(loaded.samples, cfg, root=loaded.root))


# --------------------------------------------------------------------------- torch datasets


def make_dataset(
    loaded: LoadedData,
    indices: Sequence[int] | None,
    image_size: int,
    *,
    augment: AugmentConfig | None = None,
    cache: bool = True,
    store: dict | None = None,
) -> Dataset:
    """A ``SampleDataset`` (data package) over ``indices``; training augmentation when ``augment`` is enabled.

    With ``store`` (a dict kept by the caller), datasets over the same samples
    and size share one decode cache: one full dataset per (size, augmented)
    is built and each call returns a ``Subset`` of it.
    """
    from ..data import SampleDataset

    pre = Preprocessing(image_size=image_size)
    train = augment is not None and augment.enabled
    idx = list(range(len(loaded.samples))) if indices is None else [int(i) for i in indices]
    if store is None:
        return SampleDataset([loaded.samples[i] for i in idx], loaded.class_names, pre, augment if train else None,
                             train, cache)
    key = (image_size, train)
    if key not in store:
        full = SampleDataset(loaded.samples, loaded.class_names, pre, augment if train else None, train, cache)
        other = store.get((image_size, not train))
        if other is not None:
            full._cache = other._cache  # one decode cache (decoding is independent of augmentation)
        store[key] = full
    return Subset(store[key], idx)


def subsample(seq_len: int, n: int | None) -> list[int]:
    if n is None or n >= seq_len:
        return list(range(seq_len))
    step = seq_len / n
    return [int(math.floor(i * step)) for i in range(n)]
