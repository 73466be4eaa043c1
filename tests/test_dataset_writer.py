"""The one writer of the generic dataset layout: samples appended all or none, new datasets written whole."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtunet.data import load_dataset
from napari_mtunet.data.errors import DataError
from napari_mtunet.data.writer import (
    NewSample,
    append_generic_samples,
    copy_generic_samples,
    write_generic_dataset,
)


def _sample(seed: int, label: str, name: str | None = None, group: str | None = None) -> NewSample:
    rng = np.random.default_rng(seed)
    image = (rng.random((40, 48)) * 255).astype(np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 12:30] = 1
    return NewSample(image, mask, label, group or f"g{seed}", name=name, extra={"source": f"scan {seed}"})


def test_a_new_dataset_is_written_whole_and_reads_back(tmp_path):
    root = write_generic_dataset(tmp_path / "ds", [_sample(i, "benign" if i % 2 else "malignant", name=f"s{i}")
                                                   for i in range(6)])
    rep = load_dataset(root, layout="generic")
    assert len(rep.samples) == 6 and sorted(rep.class_names) == ["benign", "malignant"]
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"s{i}.png" for i in range(6)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left
    header = (root / "labels.csv").read_text().splitlines()[0]
    assert header.startswith("filename,label") and "source" in header
    with pytest.raises(DataError, match="already exists"):  # nothing is overwritten
        write_generic_dataset(root, [_sample(9, "benign")])
    assert len(load_dataset(root, layout="generic").samples) == 6


def test_a_bad_sample_leaves_no_dataset_at_all(tmp_path):
    bad = NewSample(np.full((40, 48), np.nan), None, "benign", "g")
    with pytest.raises(DataError):
        write_generic_dataset(tmp_path / "ds", [_sample(0, "benign"), bad])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="same name"):
        write_generic_dataset(tmp_path / "ds", [_sample(0, "benign", "x"), _sample(1, "benign", "x")])
    assert list(tmp_path.iterdir()) == []


def test_appending_is_all_or_none(tmp_path):
    root = tmp_path / "training_set"
    first = append_generic_samples(root, [_sample(0, "benign"), _sample(1, "malignant")])
    assert len(first) == 2 and all(s.image.is_file() for s in first)
    before = (root / "labels.csv").read_bytes()
    files = sorted(p.name for p in (root / "images").iterdir())
    bad = NewSample(np.zeros((40, 48, 7), np.uint8), None, "benign", "g")  # 7 channels: refused
    with pytest.raises(DataError):
        append_generic_samples(root, [_sample(2, "benign"), bad])
    with pytest.raises(DataError, match="already in the dataset"):
        append_generic_samples(root, [_sample(3, "benign"), _sample(4, "benign", name=first[0].image.stem)])
    assert (root / "labels.csv").read_bytes() == before  # unchanged
    assert sorted(p.name for p in (root / "images").iterdir()) == files  # and no orphan image
    more = append_generic_samples(root, [_sample(5, "benign"), _sample(6, "benign")])
    assert len(load_dataset(root, layout="generic").samples) == 4 and len({s.image for s in first + more}) == 4


def test_a_part_of_a_dataset_is_copied_with_every_column(tmp_path):
    src = write_generic_dataset(tmp_path / "all", [_sample(i, "benign" if i < 3 else "malignant", name=f"s{i}")
                                                   for i in range(6)])
    dst = copy_generic_samples(src, tmp_path / "part", ["s1", "s4"])
    rep = load_dataset(dst, layout="generic")
    assert sorted(s.image.name for s in rep.samples) == ["s1.png", "s4.png"]
    assert sorted(s.label for s in rep.samples) == ["benign", "malignant"]
    assert (dst / "images" / "s1.png").read_bytes() == (src / "images" / "s1.png").read_bytes()
    assert "scan 4" in (dst / "labels.csv").read_text()  # extra columns kept
