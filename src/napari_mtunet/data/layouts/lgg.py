"""TCGA-LGG brain MRI (Kaggle ``lgg-mri-segmentation/kaggle_3m``).

One folder per patient scan, ``TCGA_<site>_<id>_<YYYYMMDD>/``, holding slices
``TCGA_CS_4941_19960909_<N>.tif`` (RGB: pre-contrast, FLAIR, post-contrast)
and masks ``..._<N>_mask.tif`` (0/255).  The optional ``data.csv`` holds
per-patient clinical/genomic columns keyed by ``Patient`` (``TCGA_CS_4941``).

- class: ``"tumour"`` / ``"no_tumour"`` from the slice's mask (default), or
  the value of a ``data.csv`` column (``label_column=...``) for every slice of
  the patient;
- group: the patient id (``TCGA_CS_4941``), so slices of one patient never
  cross splits.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError, LayoutError
from ..io import read_mask
from ..samples import Sample
from ._common import LayoutResult, list_dirs, list_files, natural_key, read_csv_rows

NAME = "lgg"
DIR_RE = re.compile(r"^(TCGA_[A-Z0-9]{2}_[A-Z0-9]{4})_\d{8}$", re.IGNORECASE)
SLICE_RE = re.compile(r"^(?P<base>TCGA_.+_\d+)(?P<mask>_mask)?$", re.IGNORECASE)
TUMOUR, NO_TUMOUR = "tumour", "no_tumour"


def _patient_dirs(root: Path) -> list[Path]:
    return [d for d in list_dirs(root) if DIR_RE.match(d.name)]


def detect(root: Path) -> bool:
    for d in _patient_dirs(root)[:3]:
        if any(p.name.lower().endswith("_mask.tif") for p in list_files(d)):
            return True
    return False


def load(root: Path, label_column: str | None = None) -> LayoutResult:
    res = LayoutResult()
    patient_labels: dict[str, str] | None = None
    if label_column:
        csv_path = root / "data.csv"
        if not csv_path.exists():
            raise LayoutError(f"label_column={label_column!r} needs data.csv, which is missing", csv_path)
        header, rows = read_csv_rows(csv_path)
        if label_column not in header:
            raise LayoutError(f"data.csv has no column {label_column!r}; columns: {header[1:]}", csv_path)
        pcol = "Patient" if "Patient" in header else header[0]
        patient_labels = {}
        for r in rows:
            v = r[label_column].strip()
            if v and v.lower() not in ("na", "nan"):
                patient_labels[r[pcol]] = v
        res.notes.append(f"class = data.csv column {label_column!r}")
    else:
        res.class_names = [NO_TUMOUR, TUMOUR]
    for d in list_dirs(root):
        if not DIR_RE.match(d.name):
            res.problem(d, "unexpected_folder", "not a TCGA_<site>_<id>_<date> patient folder; not used", "ignored")
    for d in _patient_dirs(root):
        patient = DIR_RE.match(d.name).group(1)  # type: ignore[union-attr]
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for p in list_files(d):
            m = SLICE_RE.match(p.stem)
            if p.suffix.lower() not in (".tif", ".tiff") or not m:
                res.problem(p, "unexpected_file", "not a TCGA slice or mask .tif; not used", "ignored")
                continue
            (masks if m.group("mask") else images)[m.group("base")] = p
        for base in sorted(set(masks) - set(images), key=natural_key):
            res.problem(masks[base], "mask_without_image", f"no slice {base}.tif")
        for base in sorted(images, key=natural_key):
            img, mp = images[base], masks.get(base)
            label: str | None
            if patient_labels is not None:
                label = patient_labels.get(patient)
                if label is None:
                    res.problem(img, "image_without_label", f"patient {patient} has no {label_column!r} value",
                                "kept" if mp else "skipped")
                    if mp is None:
                        continue
            if mp is None:
                if patient_labels is None:
                    res.problem(img, "image_without_mask", "no _mask.tif: class unknown; not used")
                    continue
                res.problem(img, "image_without_mask", "no _mask.tif; classification only", "kept")
                res.samples.append(Sample(image=img, label=label, group=patient, source=NAME))
                continue
            empty = False
            if patient_labels is None:
                try:
                    empty = not read_mask(mp).any()
                except DataError as exc:
                    res.problem(mp, exc.kind, exc.detail)
                    continue
                label = NO_TUMOUR if empty else TUMOUR
            res.samples.append(
                Sample(image=img, label=label, masks=(mp,), group=patient, source=NAME, mask_is_empty=empty)
            )
    return res
