"""Splits: stratified, grouped (patients + duplicate clusters never cross), seeded, saved as JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mtunet.data import (
    Sample,
    SplitError,
    kfold_splits,
    load_splits,
    sample_key,
    save_splits,
    split_groups,
    train_val_test_split,
)


def make_samples(spec: list[tuple[str, str | None, str | None]]) -> list[Sample]:
    out = []
    for i, (label, group, dup) in enumerate(spec):
        extra = {"duplicate_cluster": dup} if dup else {}
        out.append(Sample(image=Path(f"/data/img_{i:04d}.png"), label=label, group=group, extra=extra))
    return out


def assert_no_group_crosses(samples, parts: dict[str, list[str]]) -> None:
    groups = dict(zip([s.id for s in samples], split_groups(samples)))
    where: dict[str, str] = {}
    seen = set()
    for name, ids in parts.items():
        for sid in ids:
            assert sid not in seen, f"{sid} in two splits"
            seen.add(sid)
            g = groups[sid]
            assert where.setdefault(g, name) == name, f"group {g} crosses {where[g]} and {name}"
    assert seen == set(groups), "every sample is assigned exactly once"


spec_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.one_of(st.none(), st.sampled_from([f"p{i}" for i in range(15)])),
        st.one_of(st.none(), st.sampled_from(["d1", "d2", "d3"])),
    ),
    min_size=30,
    max_size=80,
)


@settings(max_examples=25, deadline=None)
@given(spec_strategy, st.integers(0, 1000))
def test_holdout_never_splits_a_group(spec, seed):
    samples = make_samples(spec)
    try:
        split = train_val_test_split(samples, 0.2, 0.2, seed=seed)
    except SplitError:
        return  # too few groups per class for this random draw: a clear error is the right answer
    assert_no_group_crosses(samples, {"train": split.train, "val": split.val, "test": split.test})


@settings(max_examples=15, deadline=None)
@given(spec_strategy, st.integers(0, 1000))
def test_kfold_never_splits_a_group_and_covers_all(spec, seed):
    samples = make_samples(spec)
    try:
        folds = kfold_splits(samples, 3, seed=seed)
    except SplitError:
        return
    tested = Counter(sid for f in folds for sid in f.test)
    assert set(tested.values()) == {1} and len(tested) == len(samples)
    for f in folds:
        assert_no_group_crosses(samples, {"train": f.train, "val": f.val, "test": f.test})


def test_duplicate_cluster_links_patients():
    # p1 and p2 are linked through a duplicate pair -> one split group
    samples = make_samples([("a", "p1", None), ("a", "p1", "d"), ("b", "p2", "d"), ("b", "p3", None)])
    g = split_groups(samples)
    assert g[0] == g[1] == g[2] != g[3]


def test_stratified_seeded_and_fractions():
    samples = make_samples([(lab, f"p{i}", None) for i, lab in enumerate(["a"] * 60 + ["b"] * 30 + ["c"] * 10)])
    s1 = train_val_test_split(samples, 0.2, 0.2, seed=3)
    s2 = train_val_test_split(samples, 0.2, 0.2, seed=3)
    s3 = train_val_test_split(samples, 0.2, 0.2, seed=4)
    assert s1.to_dict() == s2.to_dict() and s1.test != s3.test
    for part in ("val", "test"):
        c = s1.meta["class_counts"][part]
        assert c == {"a": 12, "b": 6, "c": 2}
    assert len(s1.train) == 60
    folds = kfold_splits(samples, 5, seed=0, val_fraction=0.2)
    for f in folds:
        assert len(f.test) == 20 and len(f.val) > 0
        assert_no_group_crosses(samples, {"train": f.train, "val": f.val, "test": f.test})


def test_too_few_samples_is_a_clear_error():
    samples = make_samples([("a", None, None)] * 10 + [("rare", None, None)] * 2)
    with pytest.raises(SplitError, match="'rare': 2"):
        train_val_test_split(samples, 0.15, 0.15)
    with pytest.raises(SplitError, match="5-fold"):
        kfold_splits(samples, 5)
    train_val_test_split(samples, 0.15, 0.15, allow_small_classes=True)
    with pytest.raises(SplitError, match="empty"):
        train_val_test_split([], 0.1, 0.1)


def test_save_load_select_roundtrip(tmp_path):
    root = tmp_path / "ds"
    samples = [Sample(image=root / "images" / f"{i}.png", label="ab"[i % 2]) for i in range(20)]
    split = train_val_test_split(samples, 0.2, 0.2, seed=1, root=root)
    assert all(not k.startswith("/") for k in split.train)  # keys are relative to the root
    path = save_splits(tmp_path / "split.json", split, root=root)
    doc = json.loads(path.read_text())
    assert doc["format"] == "napari-mtunet-split"
    (loaded,) = load_splits(path)
    assert loaded.to_dict() == split.to_dict()
    # the dataset moved: keys are relative, so selection still works
    moved = [Sample(image=tmp_path / "moved" / "images" / f"{i}.png", label="ab"[i % 2]) for i in range(20)]
    parts = loaded.select(moved, tmp_path / "moved")
    assert sum(len(parts[k]) for k in ("train", "val", "test")) == 20
    assert sample_key(moved[3], tmp_path / "moved") == "images/3.png"
    # the dataset changed: strict selection fails with a clear message, lenient reports unassigned
    extra = moved + [Sample(image=tmp_path / "moved" / "images" / "new.png", label="a")]
    with pytest.raises(SplitError, match="1 sample\\(s\\) of the dataset are not in the split"):
        loaded.select(extra, tmp_path / "moved")
    assert len(loaded.select(extra, tmp_path / "moved", strict=False)["unassigned"]) == 1
    folds = kfold_splits(samples, 4, root=root)
    save_splits(tmp_path / "folds.json", folds)
    assert [f.fold for f in load_splits(tmp_path / "folds.json")] == [0, 1, 2, 3]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SplitError, match="not a napari-mtunet-split"):
        load_splits(tmp_path / "bad.json")


def test_split_for_config(tmp_path):
    from napari_mtunet.config import DataConfig
    from napari_mtunet.data import split_for_config

    root = tmp_path / "ds"
    samples = [Sample(image=root / f"{i}.png", label="ab"[i % 2]) for i in range(40)]
    cfg = DataConfig(split_file=str(tmp_path / "s.json"), seed=2)
    first = split_for_config(samples, cfg, root)
    assert (tmp_path / "s.json").exists()
    assert split_for_config(samples, cfg, root).to_dict() == first.to_dict()  # loaded, not re-made
    kcfg = DataConfig(split_file=str(tmp_path / "k.json"), fold=2, n_folds=4, val_fraction=0.1)
    f2 = split_for_config(samples, kcfg, root)
    assert f2.fold == 2 and len(load_splits(tmp_path / "k.json")) == 4
    with pytest.raises(SplitError, match="5 folds|folds"):
        split_for_config(samples, DataConfig(split_file=str(tmp_path / "k.json")), root)
