"""PANDA (Prostate cANcer graDe Assessment, Kaggle 2020): whole-slide TIFFs as patches.

As downloaded::

    train.csv                  image_id,data_provider,isup_grade,gleason_score
    train_images/<image_id>.tiff            multi-level (pyramid) RGB TIFF
    train_label_masks/<image_id>_mask.tiff  same pyramid; labels in channel 0

- class: the ISUP grade (``"0"`` .. ``"5"``) of the slide, given to every patch;
- ``image_id`` must be a plain name: a row whose id is a path (``../x``,
  ``/abs/x``, ``sub/x``) is reported and not used, so only slides under the
  dataset root are read;
- group: the slide (``image_id``) so patches of one slide never cross splits;
- mask: the provider's cancer labels binarised (``Sample.mask_values``):

  ======== ================================================ ==============
  provider label values in the mask                          cancer (fg)
  ======== ================================================ ==============
  radboud  0 background, 1 stroma, 2 benign epithelium,       3, 4, 5
           3 Gleason 3, 4 Gleason 4, 5 Gleason 5
  karolinska 0 background, 1 benign tissue, 2 cancer          2
  ======== ================================================ ==============

  Other providers: any non-zero label (reported).
- patches: the slide is read at pyramid ``level`` (0 = full resolution; the
  real files have levels at 1x, 4x and 16x downsampling) and tiled into
  ``patch_size`` squares; tissue is detected on the smallest level (pixels
  that are neither white background nor black padding) and a patch is kept
  when at least ``min_tissue`` of it is tissue.  Each patch is a
  :class:`Sample` with ``region=(x, y, w, h)`` at ``level``; only its tiles
  are decoded at training time, never the whole slide.

The real slides are JPEG-compressed: reading them needs the ``imagecodecs``
package (``pip install imagecodecs``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..errors import DataError, LayoutError
from ..io import read_region, tiff_levels
from ..samples import Sample
from ._common import LayoutResult, member_name, natural_key, read_csv_rows

NAME = "panda"
CANCER_VALUES: dict[str, tuple[int, ...]] = {"radboud": (3, 4, 5), "karolinska": (2,)}
REQUIRED = ("image_id", "data_provider", "isup_grade")


def detect(root: Path) -> bool:
    from ._common import csv_header

    csv_path = root / "train.csv"
    return csv_path.is_file() and set(REQUIRED) <= set(csv_header(csv_path)) and (root / "train_images").is_dir()


def tissue_mask(thumb: np.ndarray, white: float = 0.85, black: float = 0.05) -> np.ndarray:
    """Boolean tissue mask of a slide thumbnail: not white background, not black padding."""
    a = np.asarray(thumb)
    if a.ndim == 3:
        a = a[..., :3]
    scale = 255.0 if a.dtype == np.uint8 else float(a.max() or 1)
    g = a.astype(np.float32) / scale
    grey = g.mean(axis=-1) if g.ndim == 3 else g
    return (grey < white) & (grey > black)


def tile_slide(
    image: Path,
    *,
    level: int,
    patch_size: int,
    min_tissue: float,
    stride: int | None = None,
) -> tuple[list[tuple[int, int, int, int]], list[float]]:
    """Patch regions ``(x, y, w, h)`` at ``level`` with enough tissue, and their tissue fractions."""
    levels = tiff_levels(image)
    if not 0 <= level < len(levels):
        raise DataError(f"pyramid level {level} requested but the slide has {len(levels)} level(s)", image,
                        kind="wrong_format")
    h_l, w_l = levels[level]
    thumb_level = len(levels) - 1
    thumb = read_region(image, None, thumb_level)
    tissue = tissue_mask(thumb).astype(np.float64)
    th, tw = tissue.shape
    sy, sx = th / h_l, tw / w_l
    integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = stride or patch_size
    regions, fractions = [], []
    for y in range(0, max(h_l - patch_size, 0) + 1, step):
        for x in range(0, max(w_l - patch_size, 0) + 1, step):
            y0, y1 = int(y * sy), max(int(np.ceil((y + patch_size) * sy)), int(y * sy) + 1)
            x0, x1 = int(x * sx), max(int(np.ceil((x + patch_size) * sx)), int(x * sx) + 1)
            y1, x1 = min(y1, th), min(x1, tw)
            area = (y1 - y0) * (x1 - x0)
            if area <= 0:
                continue
            s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            frac = float(s) / area
            if frac >= min_tissue:
                regions.append((x, y, patch_size, patch_size))
                fractions.append(frac)
    return regions, fractions


def load(
    root: Path,
    level: int = 1,
    patch_size: int = 256,
    min_tissue: float = 0.5,
    max_patches_per_slide: int | None = None,
    stride: int | None = None,
    seed: int = 0,
) -> LayoutResult:
    if patch_size < 32:
        raise LayoutError(f"patch_size must be >= 32, got {patch_size}")
    if not 0.0 <= min_tissue <= 1.0:
        raise LayoutError(f"min_tissue must be in [0, 1], got {min_tissue}")
    res = LayoutResult()
    csv_path = root / "train.csv"
    header, rows = read_csv_rows(csv_path)
    missing_cols = [c for c in REQUIRED if c not in header]
    if missing_cols:
        raise LayoutError(f"train.csv lacks column(s) {missing_cols}; found {header}", csv_path)
    img_dir, mask_dir = root / "train_images", root / "train_label_masks"
    rng = random.Random(seed)
    seen: set[str] = set()
    listed_images = set()
    for row in rows:
        where = f"{csv_path}:{row['__line__']}"
        iid, kind, reason = member_name(row["image_id"])
        if iid is None:
            res.problem(where, kind, f"image_id {reason}; row not used")
            continue
        if iid in seen:
            res.problem(where, "duplicate_id", f"{iid} listed twice; the first row is used", "ignored")
            continue
        seen.add(iid)
        grade = row["isup_grade"].strip()
        if grade not in {str(i) for i in range(6)}:
            res.problem(where, "unknown_class", f"{iid}: isup_grade {grade!r} is not 0-5")
            continue
        image = img_dir / f"{iid}.tiff"
        listed_images.add(image.name)
        if not image.exists():
            res.problem(image, "label_without_image", f"{iid} is in train.csv but its slide is missing")
            continue
        provider = row["data_provider"].strip().lower()
        values = CANCER_VALUES.get(provider)
        mask = mask_dir / f"{iid}_mask.tiff"
        masks: tuple[Path, ...] = (mask,) if mask.exists() else ()
        if masks and values is None:
            res.problem(mask, "unknown_provider",
                        f"data_provider {provider!r} is not radboud/karolinska: any non-zero label is cancer", "kept")
        if not masks:
            res.problem(image, "image_without_mask", "no label mask; patches used for classification only", "kept")
        try:
            regions, fractions = tile_slide(image, level=level, patch_size=patch_size, min_tissue=min_tissue,
                                            stride=stride)
        except DataError as exc:
            res.problem(exc.path or image, exc.kind, exc.detail)
            continue
        if not regions:
            res.problem(image, "no_tissue", f"no {patch_size}px patch at level {level} has >= {min_tissue:.0%} tissue")
            continue
        order = list(range(len(regions)))
        if max_patches_per_slide is not None and len(order) > max_patches_per_slide:
            order = sorted(rng.sample(order, max_patches_per_slide))
        for i in order:
            res.samples.append(
                Sample(
                    image=image,
                    label=grade,
                    masks=masks,
                    group=iid,
                    source=NAME,
                    region=regions[i],
                    level=level,
                    mask_values=values,
                    extra={"provider": provider, "gleason_score": row.get("gleason_score", ""),
                           "tissue_fraction": round(fractions[i], 3)},
                )
            )
    if img_dir.is_dir():
        for p in sorted(img_dir.glob("*.tiff"), key=lambda q: natural_key(q.name)):
            if p.name not in listed_images:
                res.problem(p, "image_without_label", "slide not listed in train.csv; not used")
    res.class_names = [str(i) for i in range(6)]
    res.notes.append(f"patches of {patch_size}px at level {level}, min tissue {min_tissue:.0%}")
    return res
