"""Models that travel: ONNX and bioimage.io export (this package only writes; reading model files, packages
included, is :mod:`napari_mtunet.modelfiles`, re-exported here for convenience).

Front ends (``mtunet export``, the Predict widget) call :func:`export_model`::

    from napari_mtunet.export import export_model, open_model
    export_model("runs/busi/best.safetensors", "busi.onnx", "onnx")
    export_model("runs/busi/best.safetensors", "busi.zip", "bioimageio")
    model, info = open_model("busi.zip")          # same as load_checkpoint on the original file

Every exporter checks the output path first (right suffix, not a folder,
not an existing file unless ``overwrite=True``), writes to a temporary file
next to it and moves it into place atomically only when the export (and its
verification) succeeded.  Errors are :class:`ExportError` (a ``ValueError``)
naming the file and the problem.

Optional dependencies: ``pip install "napari-mtunet[onnx]"`` (onnx,
onnxruntime) and ``pip install "napari-mtunet[bioimageio]"``
(bioimageio.core, plus the ONNX packages for the package's ONNX weights).
Opening a package needs neither.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._common import ExportError
from ..modelfiles.package import extract_checkpoint, is_bioimageio_package, open_model

#: Formats accepted by :func:`export_model` and the file suffix each one writes.
FORMATS = {"onnx": ".onnx", "bioimageio": ".zip"}


def export_onnx(checkpoint: Any, out: str | os.PathLike, **kwargs: Any) -> Path:
    """See :func:`napari_mtunet.export.onnx_model.export_onnx`."""
    from .onnx_model import export_onnx as _export

    return _export(checkpoint, out, **kwargs)


def export_bioimageio(checkpoint: Any, out: str | os.PathLike, **kwargs: Any) -> Path:
    """See :func:`napari_mtunet.export.bioimageio_export.export_bioimageio`."""
    from .bioimageio_export import export_bioimageio as _export

    return _export(checkpoint, out, **kwargs)


def export_model(checkpoint: Any, out: str | os.PathLike, format: str, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Export ``checkpoint`` to ``out`` in ``format`` (``"onnx"`` or ``"bioimageio"``); returns ``out``.

    ``checkpoint`` is a ``.safetensors`` checkpoint, a bioimage.io package
    exported by napari-mtunet, or an in-memory ``MultiTaskUNet``.  Extra
    keyword arguments go to :func:`export_onnx` / :func:`export_bioimageio`.
    Raises :class:`ExportError` naming the file and the problem; never
    overwrites an existing file unless ``overwrite``.
    """
    fmt = str(format).lower().replace(".", "").replace("-", "").replace("_", "")
    if fmt == "bioimage" or fmt == "bmz":
        fmt = "bioimageio"
    if fmt not in FORMATS:
        raise ExportError(f"{out}: unknown export format {format!r}; choose one of {sorted(FORMATS)}")
    fn = export_onnx if fmt == "onnx" else export_bioimageio
    return fn(checkpoint, out, overwrite=overwrite, **kwargs)


def default_output(checkpoint: str | os.PathLike, format: str) -> Path:
    """``runs/best.safetensors`` -> ``runs/best.onnx`` / ``runs/best.bioimageio.zip`` (not checked for existence)."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(stem + (".onnx" if str(format).lower() == "onnx" else ".bioimageio.zip"))


__all__ = [
    "FORMATS",
    "ExportError",
    "default_output",
    "export_bioimageio",
    "export_model",
    "export_onnx",
    "extract_checkpoint",
    "is_bioimageio_package",
    "open_model",
]
