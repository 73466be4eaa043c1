"""The batch-prediction workflow: image files or folders -> masks and one predictions.csv in an output folder.

Used by ``mtunet predict`` and the Predict widget's folder mode.  One output
layout, whoever calls it::

    OUT/predictions.csv          one row per input, each row written whole (and flushed) as it is computed
    OUT/masks/<stem>_pred.png    the predicted mask, 0/255 (``.tif`` with fmt="tiff"), written atomically

``predictions.csv`` columns: ``image`` (the input path), ``status`` (``ok`` or
``error``), ``class`` (the predicted class; empty for a segmentation-only
model or when no class could be computed), ``p_<class>`` for every class
(6 decimals), ``lesion_fraction`` (fraction of the image's pixels in the
mask), ``mask_file`` (relative to OUT), ``error`` (the reason a file was
skipped).  Cells are CSV-safe (:mod:`napari_mtunet.csvsafe`).  An earlier
``predictions.csv`` or mask is never overwritten (``predictions-1.csv`` ...).

A run that does not finish is marked: while it runs the table is
``predictions.partial.csv`` and it gets its final name only when every input
is done.  Stopped (Stop, Ctrl-C), failed or killed, the ``.partial`` name
stays, the message says how many images were done, and every row in it is
whole (a failed write is cut back to the last whole row).  A write that fails
(disk full, a file-size limit, a read-only disk) stops the run with a message
naming the file and the likely cause (:func:`napari_mtunet.outputs.describe_write_error`).

Guards, at the cause:

- outputs never go over or among input files (:mod:`napari_mtunet.outputs`):
  the output folder may not be an input folder or contain an input; a new
  folder beside or inside one is fine.  The output folder and ``masks/`` are
  marked as napari-mtunet's, and a marked folder is never read as input, so a
  rerun does not predict earlier predictions;
- mask files never carry a name a dataset reader takes for ground truth
  (``_mask``, ``_segmentation``);
- ground-truth masks inside input folders are not predicted as images;
- one bad file (empty, truncated, not an image, a stack) is reported in its
  row and skipped; the others are predicted;
- any file name the OS can hold is handled (names that are not valid UTF-8
  are written to the CSV with backslash escapes).
"""

from __future__ import annotations

import errno
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
    """The inputs or the output folder cannot be used, or an output could not be written; the message names
    the file and says why."""


class PredictFilesInterrupted(KeyboardInterrupt):
    """Ctrl-C during a folder prediction; the message says how many images were done and where they are."""


#: The name a table has while its run is unfinished: ``predictions.partial.csv``.
PARTIAL = ".partial"


@dataclass
class PredictFilesOutcome:
    out_dir: Path
    csv_path: Path
    n_ok: int = 0
    failures: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False
    n_total: int = 0
    n_done: int = 0

    @property
    def complete(self) -> bool:
        return not self.cancelled and self.n_done == self.n_total

    def summary(self) -> str:
        if self.complete:
            text = f"{self.n_ok} image(s) predicted into {self.out_dir} ({self.csv_path.name})"
        else:
            text = (f"stopped after {self.n_done} of {self.n_total} image(s): {self.n_ok} predicted into "
                    f"{self.out_dir}; {self.csv_path.name} lists the {self.n_done} done (its name marks the run "
                    "as incomplete)")
        if self.class_counts:
            text += "; classes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.class_counts.items()))
        if self.failures:
            text += f"; {len(self.failures)} file(s) skipped: " + "; ".join(self.failures[:3])
            if len(self.failures) > 3:
                text += f"; ... (see {self.csv_path.name})"
        return text


def display_name(path: Path | str) -> str:
    """A path as text that any UTF-8 file can hold (undecodable bytes as ``\\xNN`` escapes)."""
    raw = os.fsencode(str(path))
    return raw.decode("utf-8", errors="backslashreplace")


def is_ground_truth_name(path: Path) -> bool:
    stem = path.stem.lower()
    return any(m in stem for m in GROUND_TRUTH_MARKERS)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus the image files (not ground-truth masks) directly inside folders.

    A folder napari-mtunet wrote outputs into (:func:`napari_mtunet.outputs.is_output_dir`) is refused:
    its images are earlier predictions, not inputs.
    """
    from ..data.io import is_image_file
    from ..outputs import MARKER, is_output_dir

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if is_output_dir(p):
                raise PredictFilesError(
                    f"{display_name(p)}: this folder holds outputs of napari-mtunet (it carries {MARKER}); its "
                    "images are earlier predictions, not inputs")
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


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that would put outputs over or among the inputs (:mod:`napari_mtunet.outputs`)."""
    from ..outputs import OutputLocationError, check_output_dir

    try:
        check_output_dir(out_dir, inputs)
    except OutputLocationError as exc:
        raise PredictFilesError(display_name(str(exc))) from None


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


class RowWriter:
    """Appends whole CSV rows to a new file: each row is on disk entirely or not at all.

    Unbuffered writes of one row at a time; a write that fails half-way (a
    full disk, a file-size limit) is cut back to the end of the last whole
    row before the error is raised.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "xb", buffering=0)
        self.size = 0

    def write(self, cells: Sequence[Any]) -> None:
        from .. import csvsafe

        data = csvsafe.format_row(cells).encode("utf-8", errors="backslashreplace")
        view = memoryview(data)
        try:
            while view:
                n = self._fh.write(view)
                if not n:
                    raise OSError(errno.EIO, "the file system accepted no bytes")
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fh.fileno(), self.size)
            except OSError:
                pass
            raise
        self.size += len(data)

    def close(self) -> None:
        try:
            os.fsync(self._fh.fileno())
        except OSError:
            pass
        self._fh.close()


def _new_table(out: Path) -> tuple[Path, Path]:
    """``(partial, final)`` names for this run's table: neither exists (``predictions-1...`` when taken)."""
    for i in range(100000):
        stem = "predictions" if i == 0 else f"predictions-{i}"
        partial, final = out / f"{stem}{PARTIAL}.csv", out / f"{stem}.csv"
        if not os.path.lexists(partial) and not os.path.lexists(final):
            return partial, final
    raise PredictFilesError(f"{display_name(out)}: cannot find a free name for predictions.csv")


def _finish_table(partial: Path, final: Path) -> Path:
    """Give a complete table its final name, never over an existing file; returns the name it got."""
    from ..paths import unique_path

    target = final
    for _ in range(100):
        try:
            os.link(partial, target)
        except FileExistsError:
            target = unique_path(final)
            continue
        except OSError:  # no hard links on this file system
            if os.path.lexists(target):
                target = unique_path(final)
                continue
            os.replace(partial, target)
            return target
        os.unlink(partial)
        return target
    return partial


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
    ``onnxruntime`` (CPU-only machines).  Raises :class:`PredictFilesError`
    when an output cannot be written (the rows done stay in the ``.partial``
    table) and :class:`PredictFilesInterrupted` on Ctrl-C.
    """
    from ..inference import Predictor
    from ..outputs import claim_output_dir, describe_write_error
    from ..paths import unique_path, write_atomic

    if fmt not in FORMATS:
        raise PredictFilesError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ext = FORMATS[fmt]
    files = expand_inputs(inputs)
    out = Path(out_dir)
    check_output_folder(out, [Path(i) for i in inputs])
    predictor = model if isinstance(model, Predictor) else Predictor(model, device=device, threshold=threshold,
                                                                     mode=mode, backend=backend)
    run_mode = None if mode == "auto" else mode
    masks_dir = out / "masks"
    try:
        claim_output_dir(out, "predictions")
        claim_output_dir(masks_dir, "predicted masks")
        partial, final = _new_table(out)
        table = RowWriter(partial)
    except OSError as exc:
        where = getattr(exc, "filename", None) or out
        raise PredictFilesError(describe_write_error(exc, display_name(where))) from None
    names = list(predictor.class_names) if predictor.has_cls else []
    columns = ["image", "status", "class", *[f"p_{n}" for n in names], "lesion_fraction", "mask_file", "error"]
    result = PredictFilesOutcome(out_dir=out, csv_path=partial, n_total=len(files))
    classes: Counter = Counter()

    def write_failed(exc: OSError, path: Path) -> PredictFilesError:
        return PredictFilesError(
            describe_write_error(exc, display_name(path)) + f". {result.n_done} of {len(files)} image(s) were done; "
            f"their rows are in {display_name(partial)} (whole rows; the name marks the run as incomplete)")

    yield Status(f"Predicting {len(files)} image(s) with {predictor.info.name} into {display_name(out)} …")
    try:
        try:
            table.write(columns)
        except OSError as exc:
            raise write_failed(exc, partial) from None
        for i, f in enumerate(files, start=1):
            if cancel is not None and cancel.cancelled:
                result.cancelled = True
                break
            row = dict.fromkeys(columns, "")
            row["image"] = display_name(f)
            pred = None
            try:
                pred = predictor.predict_many([f], mode=run_mode, return_probability=False)[0]
            except Exception as exc:  # noqa: BLE001 - one bad input is reported in its row and skipped
                message = " ".join(str(exc).split()) or type(exc).__name__
                row["status"] = "error"
                row["error"] = message
                result.failures.append(f"{display_name(f.name)}: {message}")
            if pred is not None:
                if pred.mask is not None:
                    target = unique_path(masks_dir / f"{f.stem}{MASK_SUFFIX}{ext}")
                    try:
                        write_atomic(target, _encode_mask(pred.mask, ext))
                    except OSError as exc:  # an output problem: the next files would fail the same way
                        raise write_failed(exc, target) from None
                    row["mask_file"] = display_name(target.relative_to(out))
                    row["lesion_fraction"] = f"{float((pred.mask > 0).mean()):.6f}"
                if pred.class_probabilities is not None:
                    row["class"] = pred.class_name
                    row.update({f"p_{n}": f"{float(p):.6f}" for n, p in zip(names, pred.class_probabilities)})
                row["status"] = "ok"
            try:
                table.write([row[c] for c in columns])
            except OSError as exc:
                raise write_failed(exc, partial) from None
            result.n_done = i
            if pred is not None:
                result.n_ok += 1
                if pred.class_probabilities is not None:
                    classes[pred.class_name] += 1
            yield Progress(done=i, total=len(files), what="images", item=display_name(f.name))
    except KeyboardInterrupt:
        table.close()
        result.class_counts = dict(classes)
        result.cancelled = True
        raise PredictFilesInterrupted(result.summary()) from None
    except BaseException:  # an error, or the generator closed early: the table keeps its .partial name
        table.close()
        raise
    table.close()
    result.class_counts = dict(classes)
    if result.complete:
        try:
            result.csv_path = _finish_table(partial, final)
        except OSError as exc:
            raise PredictFilesError(describe_write_error(exc, display_name(final))) from None
    yield Status(result.summary())
    return result
