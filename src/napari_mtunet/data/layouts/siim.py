"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019).

As downloaded::

    train-rle.csv                       header "ImageId, EncodedPixels"
    dicom-images-train/<study>/<series>/<ImageId>.dcm   (DICOM: needs pydicom)

or the same with PNG images named ``<ImageId>.png`` in any sub-folder.  Each
CSV row is one lesion as a run-length string in the competition convention
(see :mod:`napari_mtunet.data.rle`: column-major, relative offsets);
``-1`` = no pneumothorax; several rows for one image are OR-ed.

class: ``"pneumothorax"`` if any row has a run, else ``"no_pneumothorax"``.
Images with no CSV row (e.g. the test set) are skipped and reported.
"""

from __future__ import annotations

from pathlib import Path

from ..rle import is_empty_rle
from ..samples import Sample
from ._common import LayoutResult, csv_header, find_files, natural_key, read_csv_rows

NAME = "siim"
POSITIVE, NEGATIVE = "pneumothorax", "no_pneumothorax"


def _rle_csvs(root: Path) -> list[Path]:
    return [p for p in find_files(root, "*.csv", max_depth=1) if {"ImageId", "EncodedPixels"} <= set(csv_header(p))]


def detect(root: Path) -> bool:
    return bool(_rle_csvs(root))


def load(root: Path, csv_name: str | None = None) -> LayoutResult:
    res = LayoutResult(class_names=[NEGATIVE, POSITIVE])
    csvs = [root / csv_name] if csv_name else _rle_csvs(root)
    if len(csvs) > 1:
        res.notes.append(f"several RLE CSVs found, all used: {[c.name for c in csvs]}")
    rles: dict[str, list[str]] = {}
    empties: dict[str, bool] = {}
    for csv_path in csvs:
        _, rows = read_csv_rows(csv_path)
        for row in rows:
            iid, code = row["ImageId"], row["EncodedPixels"]
            if is_empty_rle(code):
                empties[iid] = True
                rles.setdefault(iid, [])
            else:
                rles.setdefault(iid, []).append(code)
    images: dict[str, Path] = {}
    for ext in ("dcm", "png", "jpg"):
        for p in find_files(root, f"*.{ext}", max_depth=4):
            if p.stem in images:
                res.problem(p, "duplicate_id", f"{p.stem} also found at {images[p.stem]}; not used", "ignored")
                continue
            images[p.stem] = p
    for iid in sorted(images, key=natural_key):
        if iid not in rles:
            res.problem(images[iid], "image_without_label", "no row in the RLE CSV (test image?); not used")
            continue
        codes = tuple(rles[iid])
        if codes and empties.get(iid):
            res.problem(images[iid], "conflicting_annotation",
                        "has both '-1' and run-length rows in the CSV; the runs are used", "kept")
        res.samples.append(
            Sample(
                image=images[iid],
                label=POSITIVE if codes else NEGATIVE,
                rle=codes,
                mask_is_empty=not codes,
                source=NAME,
            )
        )
    missing = sorted(set(rles) - set(images), key=natural_key)
    for iid in missing:
        res.problem(f"{csvs[0].name}:{iid}", "label_without_image", f"no image file {iid}.dcm/.png found")
    return res
