"""ISIC 2018: Task 1 lesion masks joined with Task 3 diagnosis labels.

As downloaded from the ISIC archive::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
    ISIC2018_Task3_Training_Input/ISIC_0024306.jpg                       (optional)
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task3_Training_LesionGroupings.csv                          (optional)

The Task 3 CSV is one-hot (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, values
``0.0``/``1.0``); the class is the column holding 1.  Images are matched by
id (``ISIC_XXXXXXX``).  Images with a mask but no label are kept for
segmentation only, images with a label but no mask for classification only;
both are reported with counts.  Images with neither are skipped and reported.
When the lesion-groupings CSV is present, ``lesion_id`` is the group (several
images of one lesion never cross splits).  Folder names do not matter: files
are found by name up to three levels below the root.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..samples import Sample
from ._common import LayoutResult, csv_header, find_files, natural_key, read_csv_rows

NAME = "isic"
CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ID_RE = re.compile(r"^(ISIC_\d{7})$")
SEG_RE = re.compile(r"^(ISIC_\d{7})_segmentation$")


def _label_csvs(root: Path) -> list[Path]:
    return [p for p in find_files(root, "*.csv") if set(CLASSES) <= set(csv_header(p))]


def detect(root: Path) -> bool:
    segs = any(SEG_RE.match(p.stem) for p in find_files(root, "ISIC_*_segmentation.png"))
    imgs = any(ID_RE.match(p.stem) for p in find_files(root, "ISIC_*.jpg")) or any(
        ID_RE.match(p.stem) for p in find_files(root, "ISIC_*.png")
    )
    return imgs and (segs or bool(_label_csvs(root)))


def load(root: Path) -> LayoutResult:
    res = LayoutResult(class_names=list(CLASSES))
    images: dict[str, Path] = {}
    for ext in ("jpg", "jpeg", "png"):
        for p in find_files(root, f"ISIC_*.{ext}"):
            m = ID_RE.match(p.stem)
            if not m:
                continue
            iid = m.group(1)
            if iid in images:
                # Task 1 and Task 3 inputs share some images: prefer the Task 1 copy (it has the mask).
                keep, other = (p, images[iid]) if "task1" in str(p).lower() else (images[iid], p)
                images[iid] = keep
                res.problem(other, "duplicate_id", f"{iid} also found at {keep}; that copy is used", "ignored")
                continue
            images[iid] = p
    masks: dict[str, Path] = {}
    for p in find_files(root, "ISIC_*_segmentation.png"):
        m = SEG_RE.match(p.stem)
        if m:
            if m.group(1) in masks:
                res.problem(p, "duplicate_id", f"second mask for {m.group(1)} (first: {masks[m.group(1)]})")
                continue
            masks[m.group(1)] = p
    labels: dict[str, str | None] = {}
    csvs = _label_csvs(root)
    for csv_path in csvs:
        header, rows = read_csv_rows(csv_path)
        id_col = "image" if "image" in header else header[0]
        for row in rows:
            iid = row[id_col].strip()
            where = f"{csv_path}:{row['__line__']}"
            hot = []
            for c in CLASSES:
                try:
                    if float(row[c] or 0) >= 0.5:
                        hot.append(c)
                except ValueError:
                    res.problem(where, "bad_label", f"column {c} of {iid} is {row[c]!r}, expected 0 or 1")
            if iid in labels:
                res.problem(where, "duplicate_id", f"{iid} has several rows; the first one is used", "ignored")
                continue
            if len(hot) != 1:
                res.problem(where, "bad_label", f"{iid}: expected exactly one class set to 1, found {hot or 'none'}",
                            "kept")
                labels[iid] = None
                continue
            labels[iid] = hot[0]
    groups: dict[str, str] = {}
    for gp in find_files(root, "*LesionGroupings*.csv"):
        header, rows = read_csv_rows(gp)
        if "lesion_id" in header:
            id_col = "image" if "image" in header else header[0]
            groups.update({r[id_col]: r["lesion_id"] for r in rows if r.get("lesion_id")})
    if not csvs:
        res.notes.append("no Task 3 ground-truth CSV found: images have no class labels")
    n_mask_only = n_label_only = 0
    for iid in sorted(images, key=natural_key):
        img = images[iid]
        mask = masks.get(iid)
        label = labels.get(iid)
        if mask is None and label is None:
            res.problem(img, "no_annotation", "no segmentation mask and no class label; not used")
            continue
        if mask is None:
            n_label_only += 1
            res.problem(img, "image_without_mask", "no ISIC_..._segmentation.png; classification only", "kept")
        elif label is None and iid not in labels:
            n_mask_only += 1
            res.problem(img, "image_without_label", "not in the Task 3 CSV; segmentation only", "kept")
        res.samples.append(
            Sample(image=img, label=label, masks=(mask,) if mask else (), group=groups.get(iid), source=NAME)
        )
    for iid in sorted(set(masks) - set(images), key=natural_key):
        res.problem(masks[iid], "mask_without_image", f"no image {iid}.jpg found")
    n_label_without = len(set(labels) - set(images))
    if n_label_without:
        res.notes.append(f"{n_label_without} labelled id(s) in the CSV have no image in the folder (not used)")
    res.notes.append(
        f"ISIC join: {len(images)} images, {len(masks)} masks, {len(labels)} labels; "
        f"{n_label_only} classification-only, {n_mask_only} segmentation-only"
    )
    return res
