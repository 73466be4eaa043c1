"""napari reader for napari-mtunet checkpoints, and dataset folders as layer data.

napari calls ``get_reader`` on its GUI thread for every path it is asked to
open, so :func:`get_checkpoint_reader` only reads the file's small JSON
header: it imports neither torch nor torchvision (torchvision pulls in
triton, see :func:`guard_triton`).  Opening a checkpoint docks the Predict
widget with it.

Dataset folders are deliberately *not* a napari reader.  npe2 offers a reader
that ``accepts_directories`` for *every* folder (its ``filename_patterns`` are
not applied to directories) and napari asks the user to choose between all
such plugins before any ``get_reader`` could decline.  A dataset reader would
therefore capture every folder, ``.zarr`` included.  Datasets are opened with
the Dataset widget (off the GUI thread), which uses :func:`dataset_layer_data`;
:func:`read_dataset` gives the same layer data from Python.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ._triton import guard_triton
from .previews import MAX_PREVIEW, PREVIEW_SIZE, dataset_layer_data, load_dataset_report  # noqa: F401

# --------------------------------------------------------------------------- dataset folders


def read_dataset(path: str | os.PathLike | list[str]) -> list[tuple]:
    """A dataset folder as layer data: an image stack and a labels stack (resized previews).

    Not a napari reader (see the module docstring).  In Python:
    ``for d, kw, kind in read_dataset(folder): viewer.add_layer(napari.layers.Layer.create(d, kw, kind))``;
    in napari, the Dataset widget's "Show samples as layers" does this off the GUI thread.
    """
    if isinstance(path, list):
        path = path[0]
    report = load_dataset_report(path)
    samples = list(report.samples)
    layout = getattr(report, "layout", None)
    return dataset_layer_data(samples, name=Path(path).name, root=str(path), layout=layout)


# --------------------------------------------------------------------------- checkpoints


#: Must equal :data:`napari_mtunet.checkpoint.META_KEY` and ``FORMAT`` (a test checks);
#: repeated here because importing :mod:`napari_mtunet.checkpoint` imports torch.
CHECKPOINT_META_KEY = "mtunet"
CHECKPOINT_FORMAT = "napari-mtunet-checkpoint"
#: A safetensors header larger than this is not one of ours (our metadata is at
#: most 16 MiB, tensor entries a few hundred KiB); nothing larger is read on the GUI thread.
MAX_HEADER_BYTES = 24 * 1024 * 1024


def safetensors_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file, read without torch or safetensors; None when not one.

    A safetensors file starts with an 8-byte little-endian header length and
    that many bytes of JSON.  Only the header is read, and only when it is at
    most :data:`MAX_HEADER_BYTES` and fits in the file.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return None
            n = int.from_bytes(head, "little")
            if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
                return None
            raw = fh.read(n)
    except OSError:
        return None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The napari-mtunet metadata of a checkpoint, read without torch (None when the file is not one).

    Cheap enough for napari's GUI thread (one small JSON header); not validated: full validation (format
    version, model configuration, hashes) happens when a model is loaded, where a problem is reported
    naming the file.
    """
    meta = safetensors_metadata(path)
    raw = meta.get(CHECKPOINT_META_KEY) if meta else None
    if not isinstance(raw, str):
        return None
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) and info.get("format") == CHECKPOINT_FORMAT else None


def is_mtunet_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap, torch-free recognition: a safetensors file whose metadata says it is a napari-mtunet checkpoint."""
    return checkpoint_info(path) is not None


def get_checkpoint_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for napari-mtunet checkpoints; None for any other ``.safetensors`` file.

    Runs on napari's GUI thread for every ``*.safetensors`` path: reads only
    the file's JSON header and imports no torch.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return None
    if not is_mtunet_checkpoint(p):
        return None  # not ours (e.g. a Hugging Face model): let other readers try
    return read_checkpoint


def read_checkpoint(path: str | list[str]) -> list[tuple]:
    """Show the Predict widget with this model loaded; adds no layers."""
    if isinstance(path, list):
        path = path[0]
    open_predict_widget(str(path))
    return [(None,)]  # napari's "read, but no layers" sentinel


def open_predict_widget(checkpoint: str, viewer: Any = None) -> Any:
    """Dock (or reuse) the Predict widget in ``viewer`` (default: the current one) with ``checkpoint``; the
    other widgets of the viewer take it too.  Returns the widget."""
    import napari

    guard_triton()
    viewer = viewer or napari.current_viewer()
    if viewer is None:
        raise RuntimeError("no napari viewer is open to show the Predict widget in")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mtunet", "Predict")
    widget.set_checkpoint(checkpoint)
    widget.state.set_checkpoint(checkpoint)
    return widget
