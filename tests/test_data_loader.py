"""Torch dataset/loader: item contract, decode-once cache, balanced sampling, writer for 'Add to training set'."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import torch

import napari_mtunet.data.dataset as dataset_mod
from napari_mtunet.config import AugmentConfig, Preprocessing
from napari_mtunet.data import (
    DataError,
    Sample,
    SampleDataset,
    class_balanced_weights,
    load_dataset,
    load_sample,
    make_dataloader,
    write_generic_sample,
)
from napari_mtunet.preprocess import to_float_rgb

from data_fixtures import make_busi, make_generic, make_siim


def test_items_contract(tmp_path):
    rep = load_dataset(make_busi(tmp_path))
    samples = rep.samples + [Sample(image=rep.samples[0].image, label=None, masks=rep.samples[0].masks)]
    samples.append(Sample(image=rep.samples[1].image, label="benign"))  # no mask
    dl = make_dataloader(samples, rep.class_names, Preprocessing(image_size=32), AugmentConfig(), train=True,
                         batch_size=4)
    batch = next(iter(dl))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 32, 32) and batch["mask"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["has_mask"].dtype == torch.bool
    ds = dl.dataset
    unl, nomask = ds[len(samples) - 2], ds[len(samples) - 1]
    assert unl["label"].item() == -1 and not unl["has_label"] and unl["has_mask"]
    assert not nomask["has_mask"] and nomask["mask"].sum() == 0 and nomask["has_label"]
    assert set(torch.unique(torch.cat([b["mask"] for b in dl])).tolist()) <= {0.0, 1.0}
    n = sum(len(b["index"]) for b in dl)
    assert n == len(samples)


def test_eval_pixels_match_the_shared_converter(tmp_path):
    rep = load_dataset(make_busi(tmp_path))
    ds = SampleDataset(rep.samples[:2], rep.class_names, Preprocessing(image_size=32, resize=False), None, False)
    img, _ = load_sample(rep.samples[0])
    ref = to_float_rgb(img)
    h, w = ref.shape[:2]
    out = ds[0]["image"]  # center crop of a 40x48 image to 32x32
    top, left = (h - 32) // 2, (w - 32) // 2
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref[top : top + 32, left : left + 32], atol=1e-6)


def test_cache_decodes_each_file_once(tmp_path, monkeypatch):
    rep = load_dataset(make_busi(tmp_path))
    calls = []
    real = dataset_mod.load_sample

    def counting(s):
        calls.append(s.id)
        return real(s)

    monkeypatch.setattr(dataset_mod, "load_sample", counting)
    dl = make_dataloader(rep.samples, rep.class_names, Preprocessing(image_size=32), AugmentConfig(), batch_size=4)
    for _ in range(3):
        for _b in dl:
            pass
    assert sorted(calls) == sorted(s.id for s in rep.samples)
    calls.clear()
    dl2 = make_dataloader(rep.samples, rep.class_names, Preprocessing(image_size=32), cache=False, batch_size=4)
    for _ in range(2):
        for _b in dl2:
            pass
    assert len(calls) == 2 * len(rep.samples)


def test_cache_is_shared_with_workers(tmp_path):
    rep = load_dataset(make_busi(tmp_path))
    dl = make_dataloader(rep.samples, rep.class_names, Preprocessing(image_size=32), AugmentConfig(),
                         batch_size=5, num_workers=1)
    assert all(c is not None for c in dl.dataset._cache)  # filled before the workers fork
    assert sum(len(b["index"]) for b in dl) == len(rep.samples)


def test_rle_samples_load(tmp_path):
    _, expected = make_siim(tmp_path)
    rep = load_dataset(tmp_path)
    ds = SampleDataset(rep.samples, rep.class_names, Preprocessing(image_size=64))
    for i, s in enumerate(rep.samples):
        assert torch.equal(ds[i]["mask"][0].to(torch.uint8), torch.from_numpy(expected[s.image.stem]))


def test_balanced_sampling(tmp_path):
    labels = [0] * 90 + [1] * 10
    w = class_balanced_weights(labels)
    assert w[0] * 90 == pytest.approx(w[-1] * 10)
    assert class_balanced_weights([0, -1, 1]).min() > 0
    rep = load_dataset(make_busi(tmp_path, counts=(("benign", 12), ("malignant", 2), ("normal", 2))))
    dl = make_dataloader(rep.samples, rep.class_names, Preprocessing(image_size=32), None, train=True,
                         batch_size=16, balanced_sampling=True, seed=0)
    torch.manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(20):
        for b in dl:
            counts += torch.bincount(b["label"], minlength=3)
    frac = counts / counts.sum()
    assert (frac > 0.25).all(), frac  # ~1/3 each instead of 75% benign


def test_unknown_class_and_empty(tmp_path):
    s = Sample(image=tmp_path / "x.png", label="zebra")
    with pytest.raises(DataError, match="zebra"):
        SampleDataset([s], ["a", "b"])
    with pytest.raises(DataError, match="zero samples"):
        make_dataloader([], ["a", "b"])


def test_write_generic_sample_appends_and_never_overwrites(tmp_path):
    root = make_generic(tmp_path / "ds", n=3)
    before = (root / "labels.csv").read_text()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 7
    s1 = write_generic_sample(root, img, mask, "b", group="patientX")
    s2 = write_generic_sample(root, rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), mask, "b")
    assert s1.image != s2.image and s1.image.exists() and s1.masks[0].exists()
    assert (root / "labels.csv").read_text().startswith(before)
    rep = load_dataset(root)
    assert len(rep) == 5 and rep.errors == []
    got = next(s for s in rep.samples if s.image == s1.image)
    assert got.label == "b" and got.group == "patientX"
    im, m = load_sample(got)
    np.testing.assert_array_equal(im, img)
    np.testing.assert_array_equal(m, mask > 0)
    # 16-bit grey and float images are stored losslessly
    g16 = rng.integers(0, 65535, (8, 9), dtype=np.uint16)
    s3 = write_generic_sample(root, g16, None, "a")
    np.testing.assert_array_equal(load_sample(s3)[0], g16)
    f32 = rng.random((8, 9, 3)).astype(np.float32)
    s4 = write_generic_sample(root, f32, np.ones((8, 9)), None)
    np.testing.assert_array_equal(load_sample(s4)[0], f32)
    with pytest.raises(DataError, match="differs"):
        write_generic_sample(root, img, np.zeros((5, 5)), "a")
    with pytest.raises(DataError, match="mask or a class label"):
        write_generic_sample(root, img, None, None)


def test_write_generic_sample_new_dataset_and_concurrent_writers(tmp_path):
    root = tmp_path / "new"
    img = np.zeros((8, 8), np.uint8)
    errors = []

    def worker(k):
        try:
            for j in range(5):
                write_generic_sample(root, img + k, (img + 1) if j % 2 else None, f"c{k}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and len({r["filename"] for r in rows}) == 20
    assert len(list((root / "images").iterdir())) == 20
    # the OS lock is released (its file stays: deleting it could let two writers lock different files)
    from filelock import FileLock

    FileLock(str(root / "labels.csv.lock"), timeout=0).acquire().lock.release()
    assert len(load_dataset(root, duplicates=False)) == 20
