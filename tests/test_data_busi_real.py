"""The real BUSI subset (../shared/data/busi): layout, summary, near-duplicates, leak-free splits."""

from __future__ import annotations

import pytest
import torch

from napari_mtunet.config import AugmentConfig, Preprocessing
from napari_mtunet.data import (
    kfold_splits,
    load_dataset,
    make_dataloader,
    split_groups,
    train_val_test_split,
)

from data_fixtures import busi_real_root

ROOT = busi_real_root()
pytestmark = pytest.mark.skipif(
    ROOT is None, reason="real BUSI subset not found at ../shared/data/busi (relative to the repository)"
)


@pytest.fixture(scope="module")
def report():
    return load_dataset(ROOT)


def test_layout_and_counts(report):
    assert report.layout == "busi" and report.root.name == "Dataset_BUSI_with_GT"
    s = report.summary
    assert s.n_samples == 300
    assert s.class_counts == {"benign": 168, "malignant": 81, "normal": 51}
    assert s.n_with_mask == 300 and s.n_empty_mask == 51  # normal masks are all zero
    assert sum(len(x.masks) for x in report.samples) == 304  # _mask_1 / _mask_2 files included
    assert report.errors == []
    assert s.dtypes == {"uint8": 300}
    print("\n" + report.format())


def test_near_duplicates_found(report):
    """BUSI is known to hold ~19% near-duplicates; this 300-image subset has fewer pairs inside it."""
    frac = report.summary.duplicate_fraction
    assert 0.10 <= frac <= 0.25, frac
    assert report.summary.n_near_duplicate_clusters >= 10
    for c in report.duplicates:
        members = [s for s in report.samples if s.id in set(c.members)]
        assert len({s.group for s in members}) == 1  # the cluster became the group


def test_splits_keep_duplicates_together(report):
    split = train_val_test_split(report.samples, 0.15, 0.15, seed=0, root=report.root)
    parts = split.select(report.samples, report.root)
    where = {}
    for name in ("train", "val", "test"):
        for s in parts[name]:
            where[s.id] = name
    for c in report.duplicates:
        assert len({where[m] for m in c.members}) == 1
    # stratified: every class in every part, test ~15%
    for name in ("val", "test"):
        assert set(s.label for s in parts[name]) == {"benign", "malignant", "normal"}
        assert 0.10 <= len(parts[name]) / 300 <= 0.20
    folds = kfold_splits(report.samples, 5, seed=0)
    groups = dict(zip([s.id for s in report.samples], split_groups(report.samples)))
    for f in folds:
        assert not {groups[i] for i in f.test} & {groups[i] for i in f.train}


def test_loader_on_real_images(report):
    samples = report.samples[::25]
    dl = make_dataloader(samples, report.class_names, Preprocessing(image_size=64), AugmentConfig(), train=True,
                         batch_size=6)
    b = next(iter(dl))
    assert b["image"].shape == (6, 3, 64, 64) and b["mask"].shape == (6, 1, 64, 64)
    assert torch.isin(b["mask"], torch.tensor([0.0, 1.0])).all()
