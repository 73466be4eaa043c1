"""Prepare a dataset for a run: load and check it, split it, and build the torch datasets.

Every front end (``mtunet train``/``finetune``/``evaluate``/``experiment``,
the demo, the Train and Annotate widgets) goes through :func:`load` and
:func:`prepare`, so "which images train, validate and test" is decided in
one place:

- loading and validation: :func:`napari_mtunet.data.load_dataset` (layout
  detection, problems named by file, duplicate clusters);
- splits: grouped by patient / duplicate cluster and stratified by class
  (:func:`napari_mtunet.data.split_for_config` / ``kfold_splits``), saved in
  the data package's split-file format;
- torch datasets: :class:`napari_mtunet.data.SampleDataset` with the
  run's augmentation for training; datasets over the same samples share one
  decode cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import AugmentConfig, DataConfig, InteractiveConfig, Preprocessing, RunConfig


@dataclass
class LoadedData:
    """A dataset as read: its samples, its classes (in model order) and what was wrong with it."""

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

    def dataset(self, indices: Sequence[int] | None, preprocessing: Preprocessing, *,
                augment: AugmentConfig | None = None, cache: bool = True, store: dict | None = None,
                interactive: InteractiveConfig | None = None, seed: int = 0):
        """A :class:`~napari_mtunet.data.SampleDataset` over ``indices`` (all when None).

        Training augmentation when ``augment`` is enabled.  With ``store`` (a
        dict kept by the caller), datasets over the same samples and size share
        one decode cache: one full dataset per (size, augmented) is built and
        each call returns a ``Subset`` of it.  ``interactive``: interactive
        training data (:class:`~napari_mtunet.data.dataset.InteractiveDataset`:
        the automatic items and prompted views cropped from images cached at
        ``source_factor`` times the training size).
        """
        from torch.utils.data import Subset

        from ..data import SampleDataset
        from ..data.dataset import InteractiveDataset

        train = augment is not None and augment.enabled
        prompted = interactive is not None and interactive.prompted_per_image > 0
        source = preprocessing.image_size * int(interactive.source_factor) if prompted else None
        idx = list(range(len(self.samples))) if indices is None else [int(i) for i in indices]
        if store is None:
            ds = SampleDataset([self.samples[i] for i in idx], self.class_names, preprocessing,
                               augment if train else None, train, cache, source_size=source)
        else:
            key = (preprocessing.image_size, preprocessing.resize, train, source)
            if key not in store:
                full = SampleDataset(self.samples, self.class_names, preprocessing, augment if train else None, train,
                                     cache, source_size=source)
                other = store.get((preprocessing.image_size, preprocessing.resize, not train, source))
                if other is not None:
                    full._cache = other._cache  # one decode cache (decoding is independent of augmentation)
                store[key] = full
            ds = Subset(store[key], idx)
        return InteractiveDataset(ds, interactive, seed=seed) if prompted else ds


def load(
    data: DataConfig | str | Path,
    *,
    class_names: Sequence[str] | None = None,
) -> LoadedData:
    """Read and check a dataset folder; a stratified subsample when ``data.max_samples`` is set.

    ``class_names`` fixes the class order (a trained model's classes); labels
    outside it are reported as unknown and skipped.
    """
    from ..data import load_dataset

    cfg = data if isinstance(data, DataConfig) else DataConfig(root=str(data))
    if not cfg.root:
        raise ValueError("no dataset folder given")
    rep = load_dataset(Path(cfg.root), layout=cfg.layout, strict=cfg.strict, class_names=class_names,
                       layout_options=cfg.layout_options)
    loaded = LoadedData(root=Path(rep.root), layout=str(rep.layout), samples=list(rep.samples),
                        class_names=list(class_names) if class_names else list(rep.class_names),
                        problems=list(rep.problems), report=rep)
    if not loaded.samples:
        raise ValueError(f"{cfg.root}: no usable images found")
    if cfg.max_samples is not None and len(loaded.samples) > cfg.max_samples:
        loaded.samples = _stratified_subset(loaded, int(cfg.max_samples), cfg.seed)
        loaded.notes.append(f"subsampled to {len(loaded.samples)} images (max_samples, stratified, seed {cfg.seed})")
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


def split_indices(loaded: LoadedData, split) -> dict[str, np.ndarray]:
    """A data-package ``Split`` (sample keys) as index arrays into ``loaded.samples``."""
    pos = {loaded.key(s): i for i, s in enumerate(loaded.samples)}
    return {part: np.array(sorted(pos[k] for k in getattr(split, part) if k in pos), dtype=int)
            for part in ("train", "val", "test")}


def make_split(loaded: LoadedData, cfg: DataConfig):
    """The split ``cfg`` asks for (holdout, k-fold fold ``cfg.fold``, or a split file), as a data-package ``Split``.

    With nothing held out (``val_fraction == test_fraction == 0`` and no fold
    or split file) every sample trains.
    """
    from ..data import Split, split_for_config

    if not cfg.holds_out:
        return Split(train=[loaded.key(s) for s in loaded.samples], val=[], test=[], seed=cfg.seed, method="all")
    return split_for_config(loaded.samples, cfg, root=loaded.root)


def kfold(loaded: LoadedData, n_folds: int, seed: int = 0, *, val_fraction: float = 0.0) -> list:
    """``n_folds`` grouped, stratified folds as data-package ``Split`` objects."""
    from ..data import kfold_splits

    return kfold_splits(loaded.samples, int(n_folds), int(seed), val_fraction=val_fraction, root=loaded.root)


# --------------------------------------------------------------------------- a prepared run


@dataclass
class PreparedData:
    """A run's data: the loaded dataset, its split and the torch datasets (val/test None when empty)."""

    loaded: LoadedData
    split: Any  # data-package Split
    indices: dict[str, np.ndarray]
    run: RunConfig  # with the dataset's classes
    train: Any
    val: Any | None
    test: Any | None

    def describe(self) -> str:
        n = {k: len(v) for k, v in self.indices.items()}
        return (f"split: train {n['train']}, val {n['val']}, test {n['test']} "
                f"({', '.join(self.run.model.class_names)})")


def prepare(
    run: RunConfig,
    *,
    loaded: LoadedData | None = None,
    class_names: Sequence[str] | None = None,
    split: Any = None,
    store: dict | None = None,
) -> PreparedData:
    """Load (unless given), split (unless given) and wrap a run's data; the run gets the dataset's classes.

    ``class_names`` fixes the class order (fine-tuning keeps the model's classes).
    """
    if loaded is None:
        loaded = load(run.data, class_names=class_names)
    elif class_names:
        loaded.class_names = list(class_names)
    run = run.with_classes(loaded.class_names) if not class_names else run.with_classes(list(class_names))
    split = split if split is not None else make_split(loaded, run.data)
    idx = split_indices(loaded, split)
    pre = run.preprocessing
    interactive = run.interactive if run.model.prompts else None
    train = loaded.dataset(idx["train"], pre, augment=run.data.augment, cache=run.data.cache, store=store,
                           interactive=interactive, seed=run.train.seed)
    val = loaded.dataset(idx["val"], pre, cache=run.data.cache, store=store) if len(idx["val"]) else None
    test = loaded.dataset(idx["test"], pre, cache=run.data.cache, store=store) if len(idx["test"]) else None
    return PreparedData(loaded=loaded, split=split, indices=idx, run=run, train=train, val=val, test=test)
