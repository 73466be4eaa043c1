"""Generic layouts: the project's own format and class-per-folder.

**generic** (also written by napari's "Add to training set")::

    root/images/<name>.<ext>
    root/masks/<stem>.png        optional, same stem as the image (0/255)
    root/labels.csv              optional, header ``filename,label[,group]``

``filename`` is the image file name with extension (a bare stem, or
``images/<name>``, is accepted too); a row naming any other path (``..``, an
absolute path, another folder) is reported and not used: only files under
the dataset root are read.  Multi-page TIFF images become one sample per page (the mask, if any,
must be a TIFF with the same pages).  Images missing from ``labels.csv`` are
kept without a class (segmentation only) and reported.

**folders** (class-per-folder)::

    root/<class>/<image files>     no masks: classification only
"""

from __future__ import annotations

from pathlib import Path

from ...csvsafe import unescape_cell
from ..errors import DataError
from ..io import is_image_file, read_image_info
from ..samples import Sample
from ._common import LayoutResult, image_files, list_dirs, list_files, member_name, natural_key, read_csv_rows

NAME = "generic"
LABELS_CSV = "labels.csv"
IMAGES_DIR = "images"
MASKS_DIR = "masks"


def detect(root: Path) -> bool:
    return (root / IMAGES_DIR).is_dir() and any(is_image_file(p) for p in list_files(root / IMAGES_DIR))


def load(root: Path) -> LayoutResult:
    res = LayoutResult()
    img_dir, mask_dir = root / IMAGES_DIR, root / MASKS_DIR
    images = image_files(img_dir)
    for p in list_files(img_dir):
        if not is_image_file(p):
            res.problem(p, "unexpected_file", "not an image file; not used", "ignored")
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            res.problem(p, "duplicate_id", f"same stem as {by_stem[p.stem].name}: masks would be ambiguous; not used")
            continue
        by_stem[p.stem] = p
    masks: dict[str, Path] = {}
    if mask_dir.is_dir():
        for p in list_files(mask_dir):
            if not is_image_file(p):
                res.problem(p, "unexpected_file", "not an image file; not used", "ignored")
                continue
            if p.stem in masks:
                res.problem(p, "duplicate_id", f"second mask for stem {p.stem!r} (first: {masks[p.stem].name})")
                continue
            masks[p.stem] = p
            if p.stem not in by_stem:
                res.problem(p, "mask_without_image", f"no image with stem {p.stem!r} in images/")
    labels: dict[str, tuple[str | None, str | None]] = {}
    csv_path = root / LABELS_CSV
    has_csv = csv_path.is_file()
    if has_csv:
        header, rows = read_csv_rows(csv_path)
        if "filename" not in header or "label" not in header:
            raise DataError(f"labels.csv needs the header 'filename,label[,group]', found {header}", csv_path,
                            kind="bad_csv")
        image_names = {p.name for p in by_stem.values()}
        for row in rows:
            where = f"{csv_path}:{row['__line__']}"
            name, kind, reason = member_name(unescape_cell(row["filename"]), IMAGES_DIR)
            if name is None:
                res.problem(where, kind, f"{reason}; row not used")
                continue
            key = name if name in image_names else Path(name).stem
            if key in labels:
                res.problem(where, "duplicate_id", f"{name} is listed more than once; the first row is used", "ignored")
                continue
            # cells written by napari-mtunet are formula-escaped ("'=x"); read back what was meant
            labels[key] = (unescape_cell(row["label"]) or None, unescape_cell(row.get("group") or "") or None)
        image_keys = {p.name for p in by_stem.values()} | set(by_stem)
        for key in labels:
            if key not in image_keys:
                res.problem(f"{csv_path}:{key}", "label_without_image", f"{key} is not in images/")
    for stem in sorted(by_stem, key=natural_key):
        img = by_stem[stem]
        label, group = labels.get(img.name) or labels.get(stem) or (None, None)
        mask = masks.get(stem)
        if has_csv and img.name not in labels and stem not in labels:
            res.problem(img, "image_without_label", "not in labels.csv; segmentation only" if mask else
                        "not in labels.csv and no mask; not used", "kept" if mask else "skipped")
            if mask is None:
                continue
        if mask is None and label is None:
            res.problem(img, "no_annotation", "no mask and no label; not used")
            continue
        pages = 1
        if img.suffix.lower() in (".tif", ".tiff"):
            try:
                pages = read_image_info(img).pages
            except DataError:
                pages = 1  # the validation step reports the unreadable file
        base = Sample(image=img, label=label, masks=(mask,) if mask else (), group=group, source=NAME)
        if pages > 1:
            grp = group or f"stack:{img.name}"
            for k in range(pages):
                res.samples.append(Sample(image=img, label=label, masks=base.masks, group=grp, source=NAME, page=k))
        else:
            res.samples.append(base)
    return res


def detect_folders(root: Path) -> bool:
    dirs = [d for d in list_dirs(root) if image_files(d)]
    return len(dirs) >= 2


def load_folders(root: Path) -> LayoutResult:
    res = LayoutResult()
    for d in list_dirs(root):
        files = image_files(d)
        if not files:
            res.problem(d, "unexpected_folder", "no image files; not used", "ignored")
            continue
        for p in list_files(d):
            if not is_image_file(p):
                res.problem(p, "unexpected_file", "not an image file; not used", "ignored")
        for p in files:
            res.samples.append(Sample(image=p, label=d.name, source="folders"))
    for p in list_files(root):
        if is_image_file(p):
            res.problem(p, "image_without_label", "image outside a class folder; not used")
    return res
