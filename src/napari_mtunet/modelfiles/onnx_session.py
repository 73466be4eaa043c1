"""ONNX Runtime sessions: threads, execution providers, and one error type when it is missing or fails."""

from __future__ import annotations

import os
from typing import Any

from .errors import OnnxModelError

INSTALL_HINT = "pip install \"napari-mtunet[onnx]\""


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxModelError(f"the onnxruntime backend needs the 'onnxruntime' package: {INSTALL_HINT}") from None
    return ort


def session(model: str | os.PathLike | bytes, *, threads: int | None = None, providers: list[str] | None = None,
            where: str | None = None):
    """An ONNX Runtime session with ``threads`` intra-op threads (default: torch's thread count)."""
    ort = _ort()
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        shown = where or ("<in-memory ONNX model>" if isinstance(model, bytes) else str(model))
        raise OnnxModelError(f"{shown}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:300]})") from None


def onnxruntime_providers(device: Any) -> list[str]:
    """Execution providers for ``device`` (a torch.device); raises when ONNX Runtime cannot use it."""
    ort = _ort()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise OnnxModelError(
        f"ONNX Runtime here has no execution provider for device {device} "
        f"(available: {ort.get_available_providers()}); use device='cpu' (or install onnxruntime-gpu for CUDA)"
    )
