"""Tiny generated datasets that mimic the real layouts' naming and file formats exactly.

Used by tests/test_data_*.py (helpers, not fixtures, so any test can call them
with its own tmp_path).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

BUSI_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi"


def busi_real_root() -> Path | None:
    """The real BUSI subset (../shared/data/busi relative to the repo), or None when absent."""
    for cand in (BUSI_ROOT, Path(__file__).resolve().parents[1] / "shared" / "data" / "busi"):
        if (cand / "Dataset_BUSI_with_GT").is_dir():
            return cand
    return None


def blob_image(rng: np.random.Generator, h: int, w: int, *, lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A random textured grey image (uint8) with a dark elliptical 'lesion' and its 0/1 mask."""
    img = rng.integers(60, 200, size=(h, w)).astype(np.float32)
    img = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1)) / 3
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    if lesion:
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        ry, rx = rng.integers(3, max(4, h // 4)), rng.integers(3, max(4, w // 4))
        mask = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.uint8)
        img[mask > 0] *= 0.3
    return img.astype(np.uint8), mask


def save_1bit_png(path: Path, mask01: np.ndarray) -> None:
    Image.fromarray(mask01.astype(bool)).convert("1").save(path)


def make_busi(root: Path, counts=(("benign", 4), ("malignant", 3), ("normal", 3)), size=(40, 48), seed=0) -> Path:
    """``root/Dataset_BUSI_with_GT/<class>/<class> (N).png`` + ``_mask.png`` (1-bit; normal: zero RGB);
    ``benign (2)`` also has ``_mask_1.png``."""
    rng = np.random.default_rng(seed)
    base = root / "Dataset_BUSI_with_GT"
    for cls, n in counts:
        d = base / cls
        d.mkdir(parents=True)
        for k in range(1, n + 1):
            img, mask = blob_image(rng, *size, lesion=cls != "normal")
            Image.fromarray(np.stack([img] * 3, -1)).save(d / f"{cls} ({k}).png")
            if cls == "normal":
                Image.fromarray(np.zeros(size + (3,), np.uint8)).save(d / f"{cls} ({k})_mask.png")
            else:
                save_1bit_png(d / f"{cls} ({k})_mask.png", mask)
                if cls == "benign" and k == 2:
                    extra = np.zeros_like(mask)
                    extra[:5, :5] = 1
                    save_1bit_png(d / f"{cls} ({k})_mask_1.png", extra)
    return base


ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def make_isic(root: Path, n: int = 8, size=(36, 44), seed=1) -> Path:
    """ISIC 2018 Task 1 inputs/masks + Task 3 one-hot CSV.

    ids 0..n-1 have images+masks; ids 0..n-2 are in the CSV (n-1: mask only);
    id n (CSV only, no image); id n+1: image + label, no mask (Task 3 input).
    """
    rng = np.random.default_rng(seed)
    inp = root / "ISIC2018_Task1-2_Training_Input"
    gt = root / "ISIC2018_Task1_Training_GroundTruth"
    t3 = root / "ISIC2018_Task3_Training_Input"
    t3gt = root / "ISIC2018_Task3_Training_GroundTruth"
    for d in (inp, gt, t3, t3gt):
        d.mkdir(parents=True)
    (inp / "ATTRIBUTION.txt").write_text("ISIC archive")
    rows = []
    for i in range(n):
        iid = f"ISIC_{i:07d}"
        img, mask = blob_image(rng, *size)
        rgb = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], -1)
        Image.fromarray(rgb).save(inp / f"{iid}.jpg", quality=95)
        Image.fromarray(mask * np.uint8(255)).save(gt / f"{iid}_segmentation.png")
        if i < n - 1:
            rows.append((iid, ISIC_CLASSES[i % 3]))
    rows.append((f"ISIC_{n:07d}", "NV"))  # label without image
    iid = f"ISIC_{n + 1:07d}"
    img, _ = blob_image(rng, *size)
    Image.fromarray(np.stack([img] * 3, -1)).save(t3 / f"{iid}.jpg")
    rows.append((iid, "MEL"))
    with open(t3gt / "ISIC2018_Task3_Training_GroundTruth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", *ISIC_CLASSES])
        for iid, cls in rows:
            w.writerow([iid, *("1.0" if c == cls else "0.0" for c in ISIC_CLASSES)])
    return root


def make_lgg(root: Path, patients=(("TCGA_CS_4941", "19960909"), ("TCGA_DU_7010", "19860307"),
                                   ("TCGA_HT_A61A", "20000127")), slices: int = 4, size=(32, 32), seed=2) -> Path:
    """``kaggle_3m/TCGA_XX_NNNN_YYYYMMDD/<same>_<k>.tif`` (RGB) + ``_<k>_mask.tif`` (0/255) + data.csv."""
    rng = np.random.default_rng(seed)
    base = root / "lgg-mri-segmentation" / "kaggle_3m"
    for p, date in patients:
        d = base / f"{p}_{date}"
        d.mkdir(parents=True)
        for k in range(1, slices + 1):
            img, mask = blob_image(rng, *size, lesion=k % 2 == 0)
            rgb = np.stack([img, np.roll(img, 2, 0), np.roll(img, 2, 1)], -1)
            tifffile.imwrite(d / f"{p}_{date}_{k}.tif", rgb, photometric="rgb")
            tifffile.imwrite(d / f"{p}_{date}_{k}_mask.tif", mask * np.uint8(255))
    with open(base / "data.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Patient", "RNASeqCluster", "death01"])
        for i, (p, _) in enumerate(patients):
            w.writerow([p, str(i % 2 + 1), "1" if i % 2 else "0"])
    (base / "README.md").write_text("kaggle_3m")
    return base


def make_siim(root: Path, size=(64, 64), seed=3) -> tuple[Path, dict[str, np.ndarray]]:
    """``train-rle.csv`` (header ``ImageId, EncodedPixels``) + PNG images in study/series folders.

    Returns the root and the expected OR-ed masks by ImageId.
    """
    from napari_mtunet.data import rle_encode

    rng = np.random.default_rng(seed)
    ids = [f"1.2.276.0.7230010.3.1.4.8323329.{1000 + i}.1517875166.{850000 + i}" for i in range(6)]
    expected = {}
    lines = ["ImageId, EncodedPixels"]
    for i, iid in enumerate(ids):
        d = root / "dicom-images-train" / f"1.2.276.0.7230010.3.1.2.{i}" / f"1.2.276.0.7230010.3.1.3.{i}"
        d.mkdir(parents=True)
        img, m1 = blob_image(rng, *size, lesion=i % 2 == 0)
        Image.fromarray(img).save(d / f"{iid}.png")
        if i % 2 == 0:
            lines.append(f"{iid}, {rle_encode(m1)}")
            total = m1.copy()
            if i == 0:  # two lesions = two rows
                m2 = np.zeros_like(m1)
                m2[2:6, 50:60] = 1
                lines.append(f"{iid}, {rle_encode(m2)}")
                total |= m2
            expected[iid] = total
        else:
            lines.append(f"{iid}, -1")
            expected[iid] = np.zeros(size, np.uint8)
    # a test image without a CSV row
    d = root / "dicom-images-test" / "x" / "y"
    d.mkdir(parents=True)
    Image.fromarray(blob_image(rng, *size)[0]).save(d / "1.2.276.0.7230010.3.1.4.8323329.9999.1.1.png")
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root, expected


def write_pyramid_tiff(path: Path, level0: np.ndarray, factors=(4, 16), tile=32) -> None:
    """A tiled pyramidal TIFF like PANDA's: full resolution + reduced levels (SubIFDs)."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(level0, tile=(tile, tile), subifds=len(factors), photometric="rgb", compression="zlib")
        for f in factors:
            tw.write(level0[::f, ::f], tile=(tile, tile), subfiletype=1, photometric="rgb", compression="zlib")


def make_panda(root: Path, size=(512, 384), seed=4) -> Path:
    """train.csv + train_images/<id>.tiff + train_label_masks/<id>_mask.tiff (labels in channel 0).

    The slide has white background with a tissue block on the left half;
    radboud masks mark label 4 (cancer) in a square and label 1 (stroma)
    elsewhere in the tissue; karolinska masks mark 2 (cancer) and 1 (benign).
    """
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True)
    (root / "train_label_masks").mkdir(parents=True)
    h, w = size
    rows = [("aaa111", "radboud", "3", "4+3"), ("bbb222", "karolinska", "0", "0+0"),
            ("ccc333", "radboud", "1", "3+3")]
    for iid, provider, isup, gleason in rows:
        slide = np.full((h, w, 3), 245, np.uint8)
        tissue = np.zeros((h, w), bool)
        tissue[:, : w // 2] = True
        slide[tissue] = rng.integers(90, 170, size=(int(tissue.sum()), 3), dtype=np.uint8)
        label = np.zeros((h, w), np.uint8)
        label[tissue] = 1
        cancer_val = 4 if provider == "radboud" else 2
        label[64:192, 32:160] = cancer_val
        write_pyramid_tiff(root / "train_images" / f"{iid}.tiff", slide)
        if iid != "ccc333":  # one slide without a label mask
            lab3 = np.stack([label, np.zeros_like(label), np.zeros_like(label)], -1)
            write_pyramid_tiff(root / "train_label_masks" / f"{iid}_mask.tiff", lab3)
    with open(root / "train.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["image_id", "data_provider", "isup_grade", "gleason_score"])
        wr.writerows(rows)
    return root


def make_generic(root: Path, n: int = 9, size=(32, 40), seed=5, classes=("a", "b", "c")) -> Path:
    """images/ (PNG) + masks/ (0/255 PNG, same stem) + labels.csv (filename,label,group)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label", "group"])
        for i in range(n):
            img, mask = blob_image(rng, *size)
            Image.fromarray(img).save(root / "images" / f"img_{i:03d}.png")
            Image.fromarray(mask * np.uint8(255)).save(root / "masks" / f"img_{i:03d}.png")
            w.writerow([f"img_{i:03d}.png", classes[i % len(classes)], f"patient{i // 2}"])
    return root
