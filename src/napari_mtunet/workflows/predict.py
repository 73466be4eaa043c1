"""The batch-prediction workflow: image files or folders -> masks and one predictions.csv in an output folder.

Used by ``mtunet predict`` and the Predict widget's folder mode.  One output
layout, whoever calls it::

    OUT/predictions.csv          one row per input, written (and flushed) as each is computed
    OUT/masks/<stem>_pred.png    the predicted mask, 0/255 (``.tif`` with fmt="tiff"), written atomically

``predictions.csv`` columns: ``image`` (the input path), ``status`` (``ok`` or
``error``), ``class`` (the predicted class; empty for a segmentation-only
model or when no class could be computed), ``p_<class>`` for every class
(6 decimals), ``lesion_fraction`` (fraction of the image's pixels in the
mask), ``mask_file`` (relative to OUT), ``error`` (the reason a file was
skipped).  Cells are CSV-safe (:mod:`napari_mtunet.csvsafe`).  An earlier
``predictions.csv`` or mask is never overwritten (``predictions-1.csv`` ...).

Guards, at the cause:

- the output folder may not lie inside an input folder or inside the
  dataset an input belongs to (predictions would become training images or
  be merged into ground-truth masks);
- mask files never carry a name a dataset reader takes for ground truth
  (``_mask``, ``_segmentation``);
- ground-truth masks inside input folders are not predicted as images;
- one bad file (empty, truncated, not an image, a stack) is reported in its
  row and skipped; the others are predicted;
- any file name the OS can hold is handled (names that are not valid UTF-8
  are written to the CSV with backslash escapes).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..events import CancelToken, Progress, Status, TrainEvent

#: File-name markers that dataset layouts read as ground-truth masks (BUSI/LGG ``_mask``, ISIC ``_segmentation``).
GROUND_TRUTH_MARKERS: tuple[str, ...] = ("_mask", "_segmentation")
MASK_SUFFIX = "_pred"
FORMATS = {"png": ".png", "tiff": ".tif"}


class PredictFilesError(ValueError):
    """The inputs or the output folder cannot be used; the message names them and says why."""


@dataclass
class PredictFilesOutcome:
    out_dir: Path
    csv_path: Path
    n_ok: int = 0
    failures: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False

    def summary(self) -> str:
        text = f"{self.n_ok} image(s) predicted into {self.out_dir} ({self.csv_path.name})"
        if self.class_counts:
            text += "; classes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.class_counts.items()))
        if self.failures:
            text += f"; {len(self.failures)} file(s) skipped: " + "; ".join(self.failures[:3])
            if len(self.failures) > 3:
                text += f"; ... (see {self.csv_path.name})"
        if self.cancelled:
            text += "; stopped before the end (the CSV lists what was done)"
        return text


def display_name(path: Path | str) -> str:
    """A path as text that any UTF-8 file can hold (undecodable bytes as ``\\xNN`` escapes)."""
    raw = os.fsencode(str(path))
    return raw.decode("utf-8", errors="backslashreplace")


def is_ground_truth_name(path: Path) -> bool:
    stem = path.stem.lower()
    return any(m in stem for m in GROUND_TRUTH_MARKERS)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus the image files (not ground-truth masks) directly inside folders."""
    from ..data.io import is_image_file

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q) and not is_ground_truth_name(q))
            if not found:
                raise PredictFilesError(f"{display_name(p)}: no image files in this folder (ground-truth masks are skipped)")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise PredictFilesError(f"{display_name(p)}: no such file or folder")
    if not files:
        raise PredictFilesError("no input images given")
    return files


def _dataset_root_of(folder: Path) -> Path | None:
    """The dataset (any known layout) that ``folder`` belongs to, looking up to two levels above it.

    A layout found at a parent counts only when that dataset really holds files
    of ``folder``: several layouts search their whole tree (an ISIC or SIIM
    dataset anywhere below a projects folder makes the projects folder "look"
    like one), and class-per-folder is a guess about any folder of folders.
    """
    from ..data.layouts import detect_layout, load_layout

    for candidate in [folder, *list(folder.parents)[:2]]:
        try:
            layout, root = detect_layout(candidate)
        except Exception:  # noqa: BLE001 - not a dataset here
            continue
        root = Path(root).resolve()
        if not (folder == root or root in folder.parents):
            continue
        if folder == root:
            return root
        try:
            samples = load_layout(layout, root).samples
        except Exception:  # noqa: BLE001 - unreadable: not a dataset that holds these inputs
            continue
        for smp in samples:
            for f in (smp.image, *smp.masks):
                try:
                    if Path(f).resolve().is_relative_to(folder):
                        return root
                except (OSError, ValueError):
                    continue
    return None


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder inside an input folder or inside a dataset an input belongs to."""
    out = out_dir.resolve()
    folders = sorted({(p if p.is_dir() else p.parent).resolve() for p in inputs})
    for folder in folders:
        if out == folder or folder in out.parents:
            raise PredictFilesError(
                f"the output folder {display_name(out_dir)} is inside the input folder {display_name(folder)}; "
                "choose an output folder outside it (inputs are never written to)"
            )
        root = _dataset_root_of(folder)
        if root is not None and (out == root or root in out.parents):
            raise PredictFilesError(
                f"the output folder {display_name(out_dir)} is inside the dataset {display_name(root)}; predictions "
                "written there would be read as training images or merged into its ground-truth masks. "
                "Choose an output folder outside the dataset."
            )


def _encode_mask(mask: np.ndarray, ext: str) -> bytes:
    arr = (np.asarray(mask) > 0).astype(np.uint8) * 255
    buf = io.BytesIO()
    if ext == ".tif":
        import tifffile

        tifffile.imwrite(buf, arr, compression="zlib")
    else:
        from PIL import Image

        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def iter_predict_files(
    model: Any,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fmt: str = "png",
    threshold: float = 0.5,
    mode: str = "auto",
    device: str = "auto",
    backend: str = "torch",
    cancel: CancelToken | None = None,
) -> Iterator[TrainEvent]:
    """Predict every input into ``out_dir`` (a generator of events; returns a :class:`PredictFilesOutcome`).

    ``model``: a checkpoint path (or bioimage.io package) or a ready
    :class:`~napari_mtunet.inference.Predictor`; ``backend``: ``torch`` or
    ``onnxruntime`` (CPU-only machines).
    """
    from .. import csvsafe
    from ..inference import Predictor
    from ..paths import unique_path, write_atomic

    if fmt not in FORMATS:
        raise PredictFilesError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ext = FORMATS[fmt]
    files = expand_inputs(inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PredictFilesError(f"{display_name(out)}: exists and is not a folder")
    check_output_folder(out, files)
    predictor = model if isinstance(model, Predictor) else Predictor(model, device=device, threshold=threshold,
                                                                     mode=mode, backend=backend)
    run_mode = None if mode == "auto" else mode
    masks_dir = out / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    csv_path = unique_path(out / "predictions.csv")
    names = list(predictor.class_names) if predictor.has_cls else []
    columns = ["image", "status", "class", *[f"p_{n}" for n in names], "lesion_fraction", "mask_file", "error"]
    result = PredictFilesOutcome(out_dir=out, csv_path=csv_path)
    classes: Counter = Counter()
    yield Status(f"Predicting {len(files)} image(s) with {predictor.info.name} into {display_name(out)} …")
    with open(csv_path, "x", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csvsafe.writer(fh)
        writer.writerow(columns)
        fh.flush()
        for i, f in enumerate(files, start=1):
            if cancel is not None and cancel.cancelled:
                result.cancelled = True
                break
            row = dict.fromkeys(columns, "")
            row["image"] = display_name(f)
            try:
                pred = predictor.predict_many([f], mode=run_mode, return_probability=False)[0]
                if pred.mask is not None:
                    target = unique_path(masks_dir / f"{f.stem}{MASK_SUFFIX}{ext}")
                    write_atomic(target, _encode_mask(pred.mask, ext))
                    row["mask_file"] = display_name(target.relative_to(out))
                    row["lesion_fraction"] = f"{float((pred.mask > 0).mean()):.6f}"
                if pred.class_probabilities is not None:
                    row["class"] = pred.class_name
                    row.update({f"p_{n}": f"{float(p):.6f}" for n, p in zip(names, pred.class_probabilities)})
                    classes[pred.class_name] += 1
                row["status"] = "ok"
                result.n_ok += 1
            except Exception as exc:  # noqa: BLE001 - one bad file is reported in its row and skipped
                message = " ".join(str(exc).split()) or type(exc).__name__
                row["status"] = "error"
                row["error"] = message
                result.failures.append(f"{display_name(f.name)}: {message}")
            writer.writerow([row[c] for c in columns])
            fh.flush()
            yield Progress(done=i, total=len(files), what="images", item=display_name(f.name))
        os.fsync(fh.fileno())
    result.class_counts = dict(classes)
    yield Status(result.summary())
    return result
