"""ONNX export of a multi-task UNet: a verified ``.onnx`` file for users and other tools.

The graph (inputs, outputs, normalisation inside, the checkpoint metadata
sealed in ``metadata_props``) is built by
:mod:`napari_mtunet.modelfiles.onnx_graph`, which the ONNX Runtime backend's
cache uses too; this module only writes files: it checks the output path,
exports to a temporary file next to it, compares ONNX Runtime's outputs with
the torch model's, and publishes the file atomically.  Reading a graph back
(``Predictor("model.onnx", backend="onnxruntime")``, :func:`read_onnx_info`)
is :mod:`napari_mtunet.modelfiles.onnx_file`, which verifies it first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

from ..modelfiles.errors import ModelFileError
from ..modelfiles.onnx_graph import (  # noqa: F401 - the graph's names, re-exported for exporters
    DEFAULT_OPSET,
    INPUT_NAME,
    LOGIT_OUTPUTS,
    META_KEY,
    PROBABILITY_OUTPUTS,
    io_spec,
    onnx_file_for,
    output_names,
    verify_against_torch,
)
from ._common import ExportError, check_output, load_source, publish, staging_file


def export_onnx(
    checkpoint: str | os.PathLike | nn.Module,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> Path:
    """Export a checkpoint (``.safetensors``, a bioimage.io package exported by napari-mtunet, or a model) to ONNX.

    The file has the input ``image`` (float32 in [0, 1], NCHW, dynamic
    batch/height/width) and the outputs ``mask_logits`` and/or
    ``class_logits`` (by task); the normalisation is inside the graph and
    the checkpoint metadata in ``metadata_props["mtunet"]``, with the
    graph's own hash in ``graph_sha256``.  ``verify`` compares ONNX
    Runtime's outputs with the torch model's before the file is published.
    Written atomically; an existing ``out`` is never replaced unless
    ``overwrite``.  Returns the path written.
    """
    out = check_output(out, ".onnx", overwrite=overwrite, what="ONNX")
    _require_onnx(verify)
    with tempfile.TemporaryDirectory(prefix="mtunet-export-") as work:
        src = load_source(checkpoint, Path(work))
        with staging_file(out, ".onnx") as tmp:
            try:
                onnx_file_for(src.model, src.info, tmp, opset=opset, verify=False)
                if verify:
                    verify_against_torch(tmp, getattr(src.model, "module", src.model), probabilities=False)
            except ModelFileError as exc:
                raise ExportError(f"{out}: {exc}") from None
            return publish(tmp, out, overwrite=overwrite)


def _require_onnx(verify: bool) -> None:
    """Name the extra to install before any work when the ONNX packages are missing."""
    import importlib.util

    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if verify else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install \"napari-mtunet[onnx]\"")
