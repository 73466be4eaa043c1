"""Where outputs may go: one rule for every front end (``mtunet predict``/``train``/``finetune``, the widgets).

**Outputs never go over or among input files.**

- Nothing existing is overwritten (the writers pick new names: ``predictions-1.csv`` ...).
- An output folder may not be an input folder, nor contain an input (be one of its parents), nor be an
  existing folder inside an input folder that already holds input files (images, ``labels.csv`` ...):
  what napari-mtunet writes would lie among them.
- Any other place is fine, *including* a new folder beside or inside an input folder
  (``scans/new --out scans/predictions``, ``img/a.png --out img/pred``, ``dataset --out dataset/runs``).

Inputs are the user's *data* (images, dataset folders).  A model file is
not data: exporting it beside itself (``runs/best.onnx``) is the default.

So that a later run never reads earlier outputs as inputs, every folder
napari-mtunet writes outputs into carries a marker file, :data:`MARKER`
(:func:`mark_output_dir`), and input discovery skips folders that carry one
(:func:`is_output_dir`).  Messages for failed writes name the file and the
likely cause (:func:`describe_write_error`).  Qt-free, torch-free.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterable

from .data.formats import OUTPUT_MARKER as MARKER
from .data.formats import is_image_file, is_output_dir

__all__ = ["MARKER", "OutputLocationError", "check_output_dir", "claim_output_dir", "describe_write_error",
           "is_output_dir", "mark_output_dir"]
#: Files that make a folder a dataset's (besides images): a generic layout's table, ISIC/SIIM/PANDA CSVs.
DATA_FILE_SUFFIXES = (".csv",)


class OutputLocationError(ValueError):
    """The chosen output place would put outputs over or among input files; the message says which."""


def _resolved(p: str | os.PathLike) -> Path:
    try:
        return Path(p).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(os.path.expanduser(str(p))))


def _input_files_in(folder: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` names of data files (images, CSV tables) directly inside ``folder``."""
    found: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for p in entries:
        if p.name.startswith(".") or not p.is_file():
            continue
        if is_image_file(p) or p.suffix.lower() in DATA_FILE_SUFFIXES:
            found.append(p.name)
            if len(found) >= limit:
                break
    return found


def check_output_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                     what: str = "output folder") -> None:
    """Raise :class:`OutputLocationError` when writing into ``out`` would put files over or among ``inputs``.

    ``inputs``: the data a command reads: image files and folders (a dataset root, a folder of images).
    """
    out_r = _resolved(out)
    if out_r.exists() and not out_r.is_dir():
        raise OutputLocationError(f"the {what} {out} exists and is not a folder")
    for item in inputs:
        inp = _resolved(item)
        is_dir = inp.is_dir()
        folder = inp if is_dir else inp.parent
        if out_r == folder:
            where = "the input folder" if is_dir else f"the folder of the input {inp.name}"
            raise OutputLocationError(
                f"the {what} {out} is {where}: outputs would lie among the input files. Choose another folder "
                f"(a new folder beside or inside it is fine, e.g. {folder / 'predictions'})")
        if out_r in inp.parents:
            raise OutputLocationError(
                f"the {what} {out} contains the input {item}: outputs would lie among the input files. "
                "Choose a folder outside it, or a new folder inside it")
        if is_dir and folder in out_r.parents and out_r.is_dir() and not is_output_dir(out_r):
            files = _input_files_in(out_r)  # (an output folder of ours holds outputs, not inputs)
            if files:
                raise OutputLocationError(
                    f"the {what} {out} lies inside the input {item} and already holds its files "
                    f"({', '.join(files)}): outputs would lie among them. Choose a new folder")


def claim_output_dir(folder: str | os.PathLike, kind: str) -> bool:
    """Create ``folder`` if needed and mark it as napari-mtunet's when it is new, empty or already ours.

    An existing folder with other content (the user's desktop ...) is not marked: input discovery must not
    start skipping the user's own files.  Returns whether the folder is marked.
    """
    p = Path(folder)
    fresh = not p.exists()
    p.mkdir(parents=True, exist_ok=True)
    if fresh or is_output_dir(p) or not any(True for _ in p.iterdir()):
        mark_output_dir(p, kind)
        return True
    return False


def mark_output_dir(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as holding napari-mtunet outputs of ``kind`` (predictions, a training run ...)."""
    marker = Path(folder) / MARKER
    if marker.exists():
        return
    text = json.dumps({"written_by": "napari-mtunet", "kind": kind,
                       "note": "outputs of napari-mtunet: never read as input data"}) + "\n"
    try:
        with open(marker, "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        pass


#: errno -> the likely cause of a failed write, in words.
_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than allowed: a file-size limit (ulimit -f) or the file system's maximum, "
                 "or the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EIO: "an input/output error (a failing disk or a disconnected network drive)",
}


def describe_write_error(exc: BaseException, path: str | os.PathLike) -> str:
    """``writing <path> failed: <cause> ([Errno N] ...)`` for an error raised while writing ``path``."""
    err = getattr(exc, "errno", None)
    cause = _CAUSES.get(err) if err is not None else None
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    code = f"[Errno {err}] " if err is not None else ""
    return f"writing {path} failed: {cause + ' ' if cause else ''}({code}{detail})"
