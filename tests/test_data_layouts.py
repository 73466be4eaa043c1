"""Layout readers on generated fixtures that mimic each real dataset's naming and formats."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from napari_mtunet.data import (
    DatasetValidationError,
    EmptyDatasetError,
    LayoutError,
    detect_layout,
    load_dataset,
    load_sample,
)

from data_fixtures import make_busi, make_generic, make_isic, make_lgg, make_panda, make_siim


def kinds(report):
    return sorted(p.kind for p in report.problems)


# ---------------------------------------------------------------------------------------------- BUSI


def test_busi_layout(tmp_path):
    make_busi(tmp_path)
    name, root = detect_layout(tmp_path)  # parent folder of Dataset_BUSI_with_GT
    assert name == "busi" and root.name == "Dataset_BUSI_with_GT"
    rep = load_dataset(tmp_path)
    assert rep.layout == "busi"
    assert rep.summary.class_counts == {"benign": 4, "malignant": 3, "normal": 3}
    assert rep.class_names == ["benign", "malignant", "normal"]
    s2 = next(s for s in rep.samples if s.image.name == "benign (2).png")
    assert [m.name for m in s2.masks] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    img, mask = load_sample(s2)
    assert mask[:5, :5].all()  # the second mask is OR-ed in
    assert rep.summary.n_empty_mask == 3  # normal masks are all-zero RGB PNGs
    assert all(s.mask_is_empty for s in rep.samples if s.label == "normal")
    assert rep.problems == []
    text = rep.summary.format()
    assert "benign" in text and "layout: busi" in text


def test_busi_problems_lenient_and_strict(tmp_path):
    base = make_busi(tmp_path)
    (base / "benign" / "benign (1)_mask.png").unlink()  # image without mask -> kept, cls only
    (base / "malignant" / "malignant (1).png").unlink()  # mask without image -> reported
    (base / "benign" / "benign (3).png").write_bytes(b"")  # zero-byte image -> skipped
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(base / "benign" / "benign (4)_mask.png")  # wrong size
    (base / "normal" / "Thumbs.db").write_bytes(b"x")
    rep = load_dataset(base)
    by_file = {p.file.split("/")[-1]: p for p in rep.problems}
    assert by_file["benign (1).png"].kind == "image_without_mask" and by_file["benign (1).png"].action == "kept"
    assert by_file["malignant (1)_mask.png"].kind == "mask_without_image"
    assert by_file["benign (3).png"].kind == "empty_file" and by_file["benign (3).png"].action == "skipped"
    assert by_file["benign (4)_mask.png"].kind == "mask_size"
    assert "differs" in by_file["benign (4)_mask.png"].message
    assert by_file["Thumbs.db"].action == "ignored"
    names = {s.image.name for s in rep.samples}
    assert "benign (3).png" not in names and "benign (4).png" not in names and "benign (1).png" in names
    # nothing silently dropped: every file is either used or named in a problem
    used = {s.image.name for s in rep.samples} | {m.name for s in rep.samples for m in s.masks}
    all_files = {p.name for p in base.rglob("*") if p.is_file()}
    reported = set(by_file)
    assert all_files - used - reported <= {"benign (4).png", "benign (3)_mask.png"}
    assert rep.summary.n_skipped >= 3
    with pytest.raises(DatasetValidationError) as ei:
        load_dataset(base, strict=True)
    msg = str(ei.value)
    for f in ("benign (1).png", "malignant (1)_mask.png", "benign (3).png", "benign (4)_mask.png"):
        assert f in msg
    assert len(ei.value.problems) >= 4


def test_class_names_filter_and_require(tmp_path):
    base = make_busi(tmp_path)
    rep = load_dataset(base, class_names=["benign", "malignant"])
    assert {s.label for s in rep.samples} == {"benign", "malignant"}
    assert sum(p.kind == "unknown_class" for p in rep.problems) == 3
    (base / "benign" / "benign (1)_mask.png").unlink()
    rep2 = load_dataset(base, require="mask")
    assert "benign (1).png" not in {s.image.name for s in rep2.samples}
    assert any(p.kind == "missing_annotation" for p in rep2.problems)


def test_unknown_folder_and_wrong_explicit_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match="no known dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(LayoutError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    make_busi(tmp_path / "b")
    with pytest.raises(LayoutError, match="does not match the 'isic' layout.*looks like 'busi'"):
        load_dataset(tmp_path / "b", layout="isic")
    with pytest.raises(LayoutError, match="does not accept option"):
        load_dataset(tmp_path / "b", layout="busi", level=2)


def test_empty_dataset(tmp_path):
    base = make_busi(tmp_path, counts=(("benign", 1), ("normal", 1)))
    for p in base.rglob("*.png"):
        if "_mask" not in p.name:
            p.write_bytes(b"")
    with pytest.raises(EmptyDatasetError, match="no usable samples"):
        load_dataset(base)


def test_exact_duplicates_reported_and_grouped(tmp_path):
    base = make_busi(tmp_path)
    d = base / "malignant"
    (d / "malignant (9).png").write_bytes((base / "benign" / "benign (1).png").read_bytes())
    (d / "malignant (9)_mask.png").write_bytes((base / "benign" / "benign (1)_mask.png").read_bytes())
    rep = load_dataset(base)
    assert rep.summary.n_exact_duplicate_clusters == 1
    assert {"exact_duplicate", "conflicting_duplicate"} <= set(kinds(rep))
    a = next(s for s in rep.samples if s.image.name == "benign (1).png")
    b = next(s for s in rep.samples if s.image.name == "malignant (9).png")
    assert a.group == b.group and a.group.startswith("dup")
    load_dataset(base, strict=True)  # duplicates are warnings: strict does not fail


# ---------------------------------------------------------------------------------------------- ISIC


def test_isic_layout(tmp_path):
    make_isic(tmp_path, n=8)
    assert detect_layout(tmp_path)[0] == "isic"
    rep = load_dataset(tmp_path)
    assert rep.class_names == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    ids = {s.image.stem: s for s in rep.samples}
    assert len(ids) == 9  # 8 with masks + 1 Task-3-only image
    assert ids["ISIC_0000000"].label == "MEL" and ids["ISIC_0000001"].label == "NV"
    assert ids["ISIC_0000007"].label is None and ids["ISIC_0000007"].has_mask  # mask only
    assert ids["ISIC_0000009"].label == "MEL" and not ids["ISIC_0000009"].has_mask  # label only
    k = kinds(rep)
    assert "image_without_label" in k and "image_without_mask" in k
    assert any("classification-only" in n for n in rep.summary.notes)
    assert any("have no image" in n for n in rep.summary.notes)  # ISIC_0000008 is CSV only
    both = load_dataset(tmp_path, require="both")
    assert len(both) == 7


def test_isic_bad_label_row(tmp_path):
    make_isic(tmp_path, n=4)
    csv_path = next(tmp_path.rglob("*GroundTruth.csv"))
    text = csv_path.read_text().splitlines()
    text[1] = "ISIC_0000000,1.0,1.0,0.0,0.0,0.0,0.0,0.0"
    csv_path.write_text("\n".join(text) + "\n")
    rep = load_dataset(tmp_path)
    bad = [p for p in rep.problems if p.kind == "bad_label"]
    assert bad and "ISIC_0000000" in bad[0].message and "GroundTruth.csv:2" in bad[0].file


# ---------------------------------------------------------------------------------------------- LGG


def test_lgg_layout_tumour_labels_and_patient_groups(tmp_path):
    make_lgg(tmp_path)
    name, root = detect_layout(tmp_path)
    assert name == "lgg" and root.name == "kaggle_3m"
    rep = load_dataset(tmp_path)
    assert len(rep) == 12
    assert rep.summary.class_counts == {"no_tumour": 6, "tumour": 6}
    assert {s.group for s in rep.samples} == {"TCGA_CS_4941", "TCGA_DU_7010", "TCGA_HT_A61A"}
    for s in rep.samples:
        _, m = load_sample(s)
        assert (m.any()) == (s.label == "tumour")
    img, _ = load_sample(rep.samples[0])
    assert img.shape == (32, 32, 3)
    rep2 = load_dataset(tmp_path, label_column="death01")
    assert {s.label for s in rep2.samples} == {"0", "1"}
    with pytest.raises(LayoutError, match="no column 'nope'"):
        load_dataset(tmp_path, label_column="nope")


# ---------------------------------------------------------------------------------------------- SIIM


def test_siim_layout_rle_masks(tmp_path):
    _, expected = make_siim(tmp_path)
    assert detect_layout(tmp_path)[0] == "siim"
    rep = load_dataset(tmp_path)
    assert len(rep) == 6
    assert rep.summary.class_counts == {"no_pneumothorax": 3, "pneumothorax": 3}
    for s in rep.samples:
        _, m = load_sample(s)
        np.testing.assert_array_equal(m, expected[s.image.stem])
    first = next(s for s in rep.samples if s.image.stem.endswith(".1000.1517875166.850000"))
    assert len(first.rle) == 2  # two lesions, two CSV rows, OR-ed
    assert [p.kind for p in rep.problems] == ["image_without_label"]  # the test image


# ---------------------------------------------------------------------------------------------- PANDA


def test_panda_layout_patches(tmp_path):
    make_panda(tmp_path)
    assert detect_layout(tmp_path)[0] == "panda"
    rep = load_dataset(tmp_path, level=0, patch_size=64, min_tissue=0.5)
    # tissue = left half (512 x 192): 8 rows x 3 cols of 64px patches per slide
    per_slide = {}
    for s in rep.samples:
        per_slide.setdefault(s.group, []).append(s)
        x, y, w, h = s.region
        assert x + w <= 192 + 1e-9 and (w, h) == (64, 64)
    assert {k: len(v) for k, v in per_slide.items()} == {"aaa111": 24, "bbb222": 24, "ccc333": 24}
    assert {s.label for s in per_slide["aaa111"]} == {"3"}
    assert per_slide["aaa111"][0].mask_values == (3, 4, 5)
    assert per_slide["bbb222"][0].mask_values == (2,)
    # patch (x=64, y=64) lies inside the cancer square [64:192, 32:160] for both providers
    for iid in ("aaa111", "bbb222"):
        s = next(p for p in per_slide[iid] if p.region[:2] == (64, 64))
        img, m = load_sample(s)
        assert img.shape == (64, 64, 3) and m.shape == (64, 64) and m.all()
        s0 = next(p for p in per_slide[iid] if p.region[:2] == (0, 0))
        assert not load_sample(s0)[1].any()  # stroma / benign label 1 is not cancer
    assert not per_slide["ccc333"][0].has_mask
    assert "image_without_mask" in kinds(rep)
    rep1 = load_dataset(tmp_path, level=1, patch_size=32, min_tissue=0.9, max_patches_per_slide=2)
    assert len(rep1) == 6 and all(s.level == 1 for s in rep1.samples)
    img, m = load_sample(rep1.samples[0])
    assert img.shape == (32, 32, 3)


def test_panda_missing_slide_is_reported(tmp_path):
    make_panda(tmp_path)
    (tmp_path / "train_images" / "bbb222.tiff").unlink()
    rep = load_dataset(tmp_path, level=1, patch_size=32)
    assert any(p.kind == "label_without_image" and "bbb222" in p.file for p in rep.problems)
    assert "bbb222" not in {s.group for s in rep.samples}


# ---------------------------------------------------------------------------------------------- generic


def test_generic_layout(tmp_path):
    make_generic(tmp_path)
    assert detect_layout(tmp_path)[0] == "generic"
    rep = load_dataset(tmp_path)
    assert len(rep) == 9 and rep.problems == []
    assert rep.summary.class_counts == {"a": 3, "b": 3, "c": 3}
    assert rep.samples[0].group == "patient0"


def test_generic_problems(tmp_path):
    make_generic(tmp_path)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tmp_path / "images" / "extra.png")  # not in CSV, no mask
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    with open(tmp_path / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["ghost.png", "a", ""])
    rep = load_dataset(tmp_path)
    k = kinds(rep)
    assert {"image_without_label", "mask_without_image", "label_without_image"} <= set(k)
    assert len(rep) == 9


def test_generic_multipage_tiff(tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    stack = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    masks = (stack > 128).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "images" / "vol.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "masks" / "vol.tif", masks, photometric="minisblack")
    rep = load_dataset(tmp_path)
    assert len(rep) == 4 and [s.page for s in rep.samples] == [0, 1, 2, 3]
    assert len({s.group for s in rep.samples}) == 1  # slices of one stack stay together
    img, m = load_sample(rep.samples[2])
    np.testing.assert_array_equal(img, stack[2])
    np.testing.assert_array_equal(m, stack[2] > 128)


def test_class_per_folder(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), i * 40 + (cls == "dogs") * 7, np.uint8)).save(tmp_path / cls / f"{i}.png")
    rep = load_dataset(tmp_path, duplicates=False)
    assert rep.layout == "folders"
    assert rep.summary.class_counts == {"cats": 3, "dogs": 3}
    assert rep.summary.n_without_mask == 6


def test_layout_options_from_the_command_line_reach_the_reader_and_the_run_config(tmp_path, capsys):
    import argparse

    from napari_mtunet import cli
    from napari_mtunet.config import DataConfig, RunConfig
    from napari_mtunet.workflows import load

    make_panda(tmp_path)
    assert cli._layout_option("patch-size=64") == ("patch_size", 64)
    assert cli._layout_option("min_tissue=0.9") == ("min_tissue", 0.9)
    assert cli._layout_option("max_patches_per_slide=none") == ("max_patches_per_slide", None)
    for bad in ("level", "=1", "min_tissue=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._layout_option(bad)
    args = cli.build_parser().parse_args(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--layout-option",
                                          "level=1", "--layout-option", "patch_size=32", "--layout-option",
                                          "max_patches_per_slide=2"])
    run = cli.run_from_args(args, RunConfig.from_preset())
    assert run.data.layout_options == {"level": 1, "patch_size": 32, "max_patches_per_slide": 2}
    assert RunConfig.from_dict(run.to_dict()).data.layout_options == run.data.layout_options  # saved in checkpoints
    loaded = load(run.data)
    assert len(loaded.samples) == 6 and all(s.level == 1 for s in loaded.samples)  # the reader got them
    assert cli.main(["info", str(tmp_path), "--layout-option", "levels=1"]) == 1  # a typo is named, with the choices
    err = capsys.readouterr().err
    assert "does not accept option(s) ['levels']" in err and "'level'" in err
    assert load(DataConfig(root=str(tmp_path), layout_options={"level": 0, "patch_size": 64})).samples[0].level == 0
