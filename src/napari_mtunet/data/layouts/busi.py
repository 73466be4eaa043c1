"""BUSI (Breast Ultrasound Images, Kaggle layout).

``<root>/<class>/<class> (N).png`` with its mask ``<class> (N)_mask.png``
and, for images with several lesions, ``<class> (N)_mask_1.png``,
``_mask_2.png`` ...; all masks of an image are OR-ed.  The class is the
folder name (``benign``, ``malignant``, ``normal``); ``normal`` masks are
all-zero (empty mask = no lesion).  BUSI has no patient ids: the group of a
sample becomes its duplicate cluster (see :mod:`napari_mtunet.data.duplicates`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..io import is_image_file
from ..samples import Sample
from ._common import LayoutResult, list_dirs, list_files, natural_key

NAME = "busi"
MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


def _class_dirs(root: Path) -> list[Path]:
    out = []
    for d in list_dirs(root):
        files = [p for p in list_files(d) if is_image_file(p)]
        if any(MASK_RE.match(p.stem) for p in files) and any(not MASK_RE.match(p.stem) for p in files):
            out.append(d)
    return out


def detect(root: Path) -> bool:
    """Class folders holding images and ``<stem>_mask[_k].<ext>`` files next to them.

    A generic dataset (``images/`` beside ``masks/`` or ``labels.csv``) is never BUSI,
    even when one of its images happens to be named ``*_mask.png``.
    """
    if (root / "images").is_dir() and ((root / "masks").is_dir() or (root / "labels.csv").is_file()):
        return False
    return len(_class_dirs(root)) >= 1


def load(root: Path) -> LayoutResult:
    res = LayoutResult()
    class_dirs = _class_dirs(root)
    for d in list_dirs(root):
        if d not in class_dirs:
            res.problem(d, "unexpected_folder", "folder without BUSI images/masks; not used", "ignored")
    for d in class_dirs:
        label = d.name
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in list_files(d):
            if not is_image_file(p):
                res.problem(p, "unexpected_file", "not an image file; not used", "ignored")
                continue
            m = MASK_RE.match(p.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append((int(m.group("k") or 0), p))
            else:
                if p.stem in images:
                    res.problem(p, "duplicate_id", f"same name as {images[p.stem].name}; not used")
                    continue
                images[p.stem] = p
        for stem in sorted(masks, key=natural_key):
            if stem not in images:
                for _, mp in sorted(masks[stem]):
                    res.problem(mp, "mask_without_image", f"no image '{stem}.png' for this mask in {d.name}/")
        for stem in sorted(images, key=natural_key):
            mlist = tuple(p for _, p in sorted(masks.get(stem, [])))
            if not mlist:
                res.problem(images[stem], "image_without_mask", "no '_mask' file; used for classification only", "kept")
            res.samples.append(Sample(image=images[stem], label=label, masks=mlist, source=NAME))
    return res
