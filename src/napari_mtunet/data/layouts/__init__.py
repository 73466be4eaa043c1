"""Dataset layout readers: one module per layout, each ``detect(root)`` / ``load(root, **options)``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...textsafe import check_name, escape
from ..errors import LayoutError
from . import busi, generic, isic, lgg, panda, siim
from ._common import LayoutResult, list_dirs


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., LayoutResult]
    description: str


#: Known layouts in detection order (most specific first).
LAYOUTS: dict[str, Layout] = {
    "panda": Layout("panda", panda.detect, panda.load, "PANDA: train.csv + train_images/*.tiff (+ label masks)"),
    "siim": Layout("siim", siim.detect, siim.load, "SIIM-ACR: RLE CSV (ImageId, EncodedPixels) + DICOM/PNG images"),
    "isic": Layout("isic", isic.detect, isic.load, "ISIC 2018: ISIC_*.jpg + *_segmentation.png + Task 3 CSV"),
    "lgg": Layout("lgg", lgg.detect, lgg.load, "TCGA-LGG kaggle_3m: TCGA_*_<date>/ patient folders of .tif slices"),
    "busi": Layout("busi", busi.detect, busi.load, "BUSI: <class>/<name>.png + <name>_mask[_k].png"),
    "generic": Layout("generic", generic.detect, generic.load, "generic: images/ + masks/ + labels.csv"),
    "folders": Layout("folders", generic.detect_folders, generic.load_folders, "one folder per class (no masks)"),
}


def _detect_here(root: Path, *, allow_folders: bool = False) -> str | None:
    for name, lay in LAYOUTS.items():
        if name == "folders" and not allow_folders:
            continue
        try:
            if lay.detect(root):
                return name
        except OSError:
            continue
    return None


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """Find the layout of a dataset folder: ``(layout name, dataset root)``.

    The root may be the dataset folder itself or a folder up to two levels
    above it holding a single dataset (e.g. ``busi/`` holding
    ``Dataset_BUSI_with_GT/``).  Specific layouts win over class-per-folder,
    which is only considered for ``root`` itself.  Raises
    :class:`LayoutError` saying what was looked for when nothing matches, or
    which datasets were found when there are several.
    """
    root = Path(root)
    if not root.exists():
        raise LayoutError("dataset folder does not exist", root)
    if not root.is_dir():
        raise LayoutError("expected a dataset folder, got a file", root)
    frontier = [root]
    for _depth in range(3):
        found = [(n, d) for d in frontier if (n := _detect_here(d)) is not None]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listing = ", ".join(f"{n} at {d}" for n, d in found)
            raise LayoutError(f"several datasets found ({listing}); point to one of them", root)
        frontier = [d for r in frontier for d in list_dirs(r)]
        if not frontier or len(frontier) > 200:
            break
    if generic.detect_folders(root):
        return "folders", root
    hint = _one_class_of_a_busi_dataset(root)
    if hint:
        raise LayoutError(hint, root)
    known = "\n  ".join(f"{k}: {v.description}" for k, v in LAYOUTS.items())
    raise LayoutError(f"no known dataset layout found (looked up to 2 levels down). Known layouts:\n  {known}", root)


def _one_class_of_a_busi_dataset(folder: Path) -> str | None:
    """A message when ``folder`` looks like one class folder of a BUSI dataset (images beside ``_mask`` files)."""
    try:
        names = {p.name for p in folder.iterdir() if p.is_file()}
    except OSError:
        return None
    masks = [n for n in names if "_mask" in n]
    paired = [n for n in masks if n.split("_mask")[0] + ".png" in names]
    if masks and len(paired) >= max(1, len(masks) // 2):
        return (f"this looks like one class of a BUSI dataset ({len(paired)} image(s) with _mask files); "
                f"choose its parent folder {folder.parent} (which holds the class folders) instead")
    return None


def load_layout(name: str, root: Path, options: dict[str, Any] | None = None) -> LayoutResult:
    """Run one layout reader, checking the options it accepts."""
    if name not in LAYOUTS:
        raise LayoutError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)} or 'auto'")
    fn = LAYOUTS[name].load
    options = dict(options or {})
    params = inspect.signature(fn).parameters
    unknown = [k for k in options if k not in params or k == "root"]
    if unknown:
        accepted = [k for k in params if k != "root"]
        raise LayoutError(f"layout {name!r} does not accept option(s) {unknown}; it accepts {accepted or 'none'}")
    return check_class_names(fn(root, **options))


def check_class_names(res: LayoutResult) -> LayoutResult:
    """Drop samples whose class (a class-folder name, a CSV label) cannot be a class name, with a problem each.

    Control, bidirectional-override and unpaired-surrogate characters
    (:mod:`napari_mtunet.textsafe`) would reach terminals and notifications
    raw; names longer than the config's limit could not be saved in a model.
    """
    kept, refused = [], {}
    for s in res.samples:
        label = s.label
        if label is None:
            kept.append(s)
            continue
        reason = refused.get(label)
        if reason is None and label not in refused:
            reason = _class_name_problem(label)
            refused[label] = reason
        if reason:
            res.problem(s.image, "bad_class_name", reason)
        else:
            kept.append(s)
    res.samples = kept
    if res.class_names is not None:
        res.class_names = [c for c in res.class_names if not _class_name_problem(c)]
    return res


def _class_name_problem(label: str) -> str:
    from ...config import MAX_NAME_CHARS

    try:
        check_name(str(label), what="class name (class folder or label)")
    except ValueError as exc:
        return f"{exc}; the image is not used"
    if len(str(label)) > MAX_NAME_CHARS:
        return (f"class name '{escape(str(label)[:60])}...' is longer than {MAX_NAME_CHARS} characters; "
                "the image is not used")
    return ""


__all__ = ["LAYOUTS", "Layout", "LayoutResult", "check_class_names", "detect_layout", "load_layout"]
