"""Leak-free, reproducible splits: stratified by class and grouped by patient / duplicate cluster.

The unit that is never divided between splits is the *split group*: samples
sharing a ``Sample.group`` (patient, slide, lesion) **or** a duplicate cluster
(``Sample.extra["duplicate_cluster"]``) are connected, and each connected
component goes entirely to one split.  Within that constraint, classes are
stratified with scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`
(seeded).  Splits are stored as JSON lists of sample keys (image paths
relative to the dataset root, plus page/region) so experiments are repeatable.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..paths import write_atomic
from .errors import SplitError
from .samples import Sample

SPLIT_FORMAT = "napari-mtunet-split"
NO_LABEL = "__no_label__"


def sample_key(sample: Sample, root: str | Path | None = None) -> str:
    """A portable id: the image path relative to ``root`` (posix) plus page/region suffixes."""
    sid = sample.id
    if root is not None:
        try:
            rel = Path(sample.image).resolve().relative_to(Path(root).resolve()).as_posix()
            sid = rel + sid[len(str(sample.image)) :]
        except ValueError:
            pass
    return sid


def split_groups(samples: Sequence[Sample]) -> list[str]:
    """The split group of each sample: connected components of (group, duplicate cluster)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    keys = []
    for s in samples:
        k = "s:" + s.id
        find(k)
        if s.group:
            union(k, "g:" + str(s.group))
        dup = s.extra.get("duplicate_cluster") if s.extra else None
        if dup:
            union(k, "d:" + str(dup))
        keys.append(k)
    return [find(k) for k in keys]


@dataclass
class Split:
    """One assignment of sample keys to train / val / test."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    method: str = "holdout"
    fold: int | None = None
    n_folds: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "test": self.test, "seed": self.seed, "method": self.method,
                "fold": self.fold, "n_folds": self.n_folds, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        try:
            return cls(list(d["train"]), list(d["val"]), list(d["test"]), int(d.get("seed", 0)),
                       str(d.get("method", "holdout")), d.get("fold"), d.get("n_folds"), dict(d.get("meta", {})))
        except (KeyError, TypeError) as exc:
            raise SplitError(f"malformed split entry ({exc})") from exc

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def select(
        self, samples: Sequence[Sample], root: str | Path | None = None, *, strict: bool = True
    ) -> dict[str, list[Sample]]:
        """Map the stored keys back to samples: ``{"train": [...], "val": [...], "test": [...]}``.

        ``strict``: raise :class:`SplitError` when the split names samples that
        are not in ``samples`` or ``samples`` holds samples the split does not
        know (the dataset changed).  Otherwise unknown keys are ignored and new
        samples are returned under ``"unassigned"``.
        """
        by_key = {sample_key(s, root): s for s in samples}
        out: dict[str, list[Sample]] = {}
        missing: list[str] = []
        used: set[str] = set()
        for part in ("train", "val", "test"):
            lst = []
            for k in getattr(self, part):
                s = by_key.get(k)
                if s is None:
                    missing.append(k)
                else:
                    lst.append(s)
                    used.add(k)
            out[part] = lst
        new = [s for k, s in by_key.items() if k not in used]
        if strict and (missing or new):
            parts = []
            if missing:
                parts.append(f"{len(missing)} sample(s) of the split are not in the dataset (first: {missing[0]})")
            if new:
                parts.append(f"{len(new)} sample(s) of the dataset are not in the split (first: {sample_key(new[0], root)})")
            raise SplitError("the split does not match the dataset: " + "; ".join(parts) +
                             ". Make a new split or pass strict=False.")
        out["unassigned"] = new
        return out


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label if s.label is not None else NO_LABEL for s in samples], dtype=object)


def check_splittable(samples: Sequence[Sample], n_parts: int, *, what: str) -> None:
    """Raise :class:`SplitError` naming each class with fewer independent groups than ``n_parts``."""
    if not samples:
        raise SplitError("cannot split an empty list of samples")
    groups = split_groups(samples)
    y = _labels(samples)
    n_groups = len(set(groups))
    if n_groups < n_parts:
        raise SplitError(f"{what} needs at least {n_parts} independent groups, the dataset has {n_groups} "
                         "(samples sharing a patient or duplicate cluster count once)")
    per_class: dict[str, set[str]] = defaultdict(set)
    for lab, g in zip(y, groups):
        per_class[lab].add(g)
    small = {lab: len(g) for lab, g in per_class.items() if lab != NO_LABEL and len(g) < n_parts}
    if small:
        desc = ", ".join(f"{k!r}: {v}" for k, v in sorted(small.items()))
        raise SplitError(f"{what}: class(es) with too few samples/groups to appear in all {n_parts} parts ({desc}); "
                         "add data, merge classes or use allow_small_classes=True")


def _sgkf_first_fold(idx: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Indices (into idx) of the first held-out fold of a seeded StratifiedGroupKFold."""
    from sklearn.model_selection import StratifiedGroupKFold

    # sklearn refuses more folds than the largest class has members; fewer folds = a larger held-out part
    largest_class = int(np.unique(y[idx], return_counts=True)[1].max()) if len(idx) else 0
    n_splits = max(2, min(n_splits, len(set(groups[idx])), largest_class))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, held = next(iter(sgkf.split(np.zeros(len(idx)), y[idx], groups[idx])))
    return idx[held]


def train_val_test_split(
    samples: Sequence[Sample],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    *,
    root: str | Path | None = None,
    allow_small_classes: bool = False,
) -> Split:
    """Grouped, stratified train/val/test split (fractions are approximate: whole groups move).

    Test is one fold of ``round(1/test_fraction)`` folds; validation is one
    fold of the rest.  A fraction of 0 leaves that part empty.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SplitError(f"invalid fractions val={val_fraction}, test={test_fraction}")
    n_parts = 1 + (val_fraction > 0) + (test_fraction > 0)
    if not allow_small_classes:
        check_splittable(samples, n_parts, what="train/val/test split")
    y = _labels(samples)
    groups = np.array(split_groups(samples), dtype=object)
    all_idx = np.arange(len(samples))
    test_idx = np.array([], dtype=int)
    if test_fraction > 0:
        test_idx = _sgkf_first_fold(all_idx, y, groups, round(1 / test_fraction), seed)
    rest = np.setdiff1d(all_idx, test_idx)
    val_idx = np.array([], dtype=int)
    if val_fraction > 0:
        rel = val_fraction / (1 - test_fraction)
        val_idx = _sgkf_first_fold(rest, y, groups, round(1 / rel), seed + 1)
    train_idx = np.setdiff1d(rest, val_idx)
    keys = [sample_key(s, root) for s in samples]
    return Split(
        train=[keys[i] for i in sorted(train_idx)],
        val=[keys[i] for i in sorted(val_idx)],
        test=[keys[i] for i in sorted(test_idx)],
        seed=seed,
        method="holdout",
        meta={"val_fraction": val_fraction, "test_fraction": test_fraction, "class_counts": _class_counts(
            samples, train_idx, val_idx, test_idx)},
    )


def kfold_splits(
    samples: Sequence[Sample],
    n_folds: int = 5,
    seed: int = 0,
    *,
    val_fraction: float = 0.0,
    root: str | Path | None = None,
    allow_small_classes: bool = False,
) -> list[Split]:
    """``n_folds`` grouped, stratified folds; fold k's ``test`` is the k-th held-out part.

    With ``val_fraction > 0`` a grouped, stratified validation part is carved
    out of each fold's training samples (for early stopping).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if n_folds < 2:
        raise SplitError(f"n_folds must be >= 2, got {n_folds}")
    if not allow_small_classes:
        check_splittable(samples, n_folds, what=f"{n_folds}-fold cross-validation")
    y = _labels(samples)
    groups = np.array(split_groups(samples), dtype=object)
    keys = [sample_key(s, root) for s in samples]
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        folds = list(sgkf.split(np.zeros(len(samples)), y, groups))
    for k, (train_idx, test_idx) in enumerate(folds):
        val_idx = np.array([], dtype=int)
        if val_fraction > 0:
            rel = val_fraction / (1 - 1 / n_folds)
            val_idx = _sgkf_first_fold(np.sort(train_idx), y, groups, round(1 / rel), seed + 1 + k)
            train_idx = np.setdiff1d(train_idx, val_idx)
        out.append(Split(
            train=[keys[i] for i in sorted(train_idx)],
            val=[keys[i] for i in sorted(val_idx)],
            test=[keys[i] for i in sorted(test_idx)],
            seed=seed, method="kfold", fold=k, n_folds=n_folds,
            meta={"val_fraction": val_fraction,
                  "class_counts": _class_counts(samples, train_idx, val_idx, test_idx)},
        ))
    return out


def _class_counts(samples, *parts) -> dict[str, dict[str, int]]:
    y = _labels(samples)
    return {name: dict(Counter(str(y[i]) for i in idx)) for name, idx in zip(("train", "val", "test"), parts)}


def save_splits(path: str | Path, splits: Split | Sequence[Split], *, root: str | Path | None = None) -> Path:
    """Write one split or a list of folds to JSON atomically."""
    path = Path(path)
    lst = [splits] if isinstance(splits, Split) else list(splits)
    doc = {"format": SPLIT_FORMAT, "version": 1, "root": str(root) if root else None,
           "splits": [s.to_dict() for s in lst]}
    return write_atomic(path, json.dumps(doc, indent=1))  # flushed, umask's mode, renamed into place


def load_splits(path: str | Path) -> list[Split]:
    """Read a split file written by :func:`save_splits` (always a list; holdout = one element)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SplitError("split file does not exist", path) from exc
    except (OSError, ValueError) as exc:
        raise SplitError(f"cannot read split file ({exc})", path) from exc
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise SplitError(f"not a {SPLIT_FORMAT} file", path)
    splits = [Split.from_dict(d) for d in doc.get("splits", [])]
    for s in splits:
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = set(getattr(s, a)) & set(getattr(s, b))
            if both:
                raise SplitError(f"split file lists {len(both)} sample(s) in both {a} and {b} "
                                 f"(first: {sorted(both)[0]})", path)
    return splits


def split_for_config(samples: Sequence[Sample], config: Any, root: str | Path | None = None) -> Split:
    """The split a :class:`~napari_mtunet.config.DataConfig` asks for.

    ``config.split_file`` existing: loaded (fold ``config.fold`` of a k-fold
    file, else its only split).  Otherwise made — k-fold when ``config.fold``
    is set (``n_folds``, ``val_fraction`` carved from training), else
    train/val/test — with ``config.seed``, and saved to ``split_file`` if given.
    """
    fold = config.fold
    path = Path(config.split_file) if config.split_file else None
    if path is not None and path.exists():
        splits = load_splits(path)
        if fold is None:
            if len(splits) != 1:
                raise SplitError(f"split file holds {len(splits)} folds; choose one with fold=", path)
            return splits[0]
        match = [s for s in splits if s.fold == fold]
        if not match:
            raise SplitError(f"split file has no fold {fold} (folds: {[s.fold for s in splits]})", path)
        return match[0]
    if fold is not None:
        folds = kfold_splits(samples, int(config.n_folds), int(config.seed), val_fraction=float(config.val_fraction),
                             root=root)
        if not 0 <= fold < len(folds):
            raise SplitError(f"fold must be in 0..{len(folds) - 1}, got {fold}")
        if path is not None:
            save_splits(path, folds, root=root)
        return folds[fold]
    split = train_val_test_split(samples, float(config.val_fraction), float(config.test_fraction), int(config.seed),
                                 root=root)
    if path is not None:
        save_splits(path, split, root=root)
    return split


def round_robin_pick(labels: Sequence[Any], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` indices of ``labels`` spread over the classes: taken in turn from each class (classes sorted),
    each class's indices in a random order (``rng``); all of them when ``k`` >= their number."""
    by: dict[str, list[int]] = {}
    for i in rng.permutation(len(labels)):
        by.setdefault(str(labels[int(i)]), []).append(int(i))
    chosen: list[int] = []
    k = min(int(k), len(labels))
    while len(chosen) < k:
        for c in sorted(by):
            if by[c] and len(chosen) < k:
                chosen.append(by[c].pop())
    return sorted(chosen)
