"""ONNX export of a multi-task UNet, and ONNX Runtime as an inference backend.

The exported graph takes what the PyTorch model takes: ``image``, float32
RGB in ``[0, 1]``, shape ``(batch, 3, height, width)`` with batch, height
and width dynamic (height and width multiples of the model's output stride,
32 for the default depth).  The model's normalisation (its mean/std buffers)
is part of the graph.  Outputs, depending on the task:

- ``mask_logits`` ``(batch, seg_classes, height, width)`` (tasks both, seg);
- ``class_logits`` ``(batch, num_classes)`` (tasks both, cls).

``probabilities=True`` (used inside bioimage.io packages) exports
``mask_probability`` (sigmoid, or softmax over channels for multi-class
segmentation) and ``class_probabilities`` (softmax) instead.

The checkpoint's metadata (config, class names, preprocessing, metrics,
content hash) travels in the ONNX file's ``metadata_props`` under the key
``mtunet``, so :func:`read_onnx_info` can describe the model and
``Predictor("model.onnx", backend="onnxruntime")`` can run it without the
checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._common import ExportError, check_output, load_source, publish, staging_file

DEFAULT_OPSET = 17
META_KEY = "mtunet"
INPUT_NAME = "image"
#: output name -> ModelOutput field
LOGIT_OUTPUTS = {"mask_logits": "seg", "class_logits": "cls"}
PROBABILITY_OUTPUTS = {"mask_probability": "seg", "class_probabilities": "cls"}


class _Graph(nn.Module):
    """The network as a function of one tensor returning a tuple (what exporters want)."""

    def __init__(self, net: nn.Module, probabilities: bool):
        super().__init__()
        self.net = net
        self.probabilities = probabilities
        self.seg_classes = int(net.config.seg_classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(image)
        res = []
        if out.seg is not None:
            seg = out.seg
            if self.probabilities:
                seg = torch.sigmoid(seg) if self.seg_classes == 1 else torch.softmax(seg, dim=1)
            res.append(seg)
        if out.cls is not None:
            res.append(torch.softmax(out.cls, dim=1) if self.probabilities else out.cls)
        return tuple(res)


def output_names(task: str, probabilities: bool = False) -> list[str]:
    """The graph's output names for a task (``both``: mask then class)."""
    seg, cls = ("mask_probability", "class_probabilities") if probabilities else ("mask_logits", "class_logits")
    return ([seg] if task != "cls" else []) + ([cls] if task != "seg" else [])


def _export_graph(graph: nn.Module, path: Path, example: torch.Tensor, names: list[str], opset: int) -> None:
    """Trace ``graph`` into ``path``: TorchScript exporter first, torch.export-based one as fallback.

    The TorchScript-based exporter handles these convolutional graphs with
    dynamic batch/height/width in about a second; the torch.export-based one
    (the default since torch 2.9) takes ~20 s and is used when the former is
    missing or fails (future torch releases).
    """
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for n in names:
        dynamic_axes[n] = {0: "batch", 2: "height", 3: "width"} if n.startswith("mask") else {0: "batch"}
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=names,
                opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False,
            )
            return
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
            errors.append(f"TorchScript exporter: {type(exc).__name__}: {str(exc)[:300]}")
        try:
            batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=names,
                opset_version=max(opset, 18), dynamic_shapes=({0: batch, 2: height, 3: width},),
                dynamo=True, external_data=False, verbose=False,
            )
            return
        except Exception as exc:  # noqa: BLE001
            errors.append(f"torch.export exporter: {type(exc).__name__}: {str(exc)[:300]}")
    raise ExportError("ONNX export failed: " + "; ".join(errors))


def _attach_metadata(path: Path, info: Any, probabilities: bool) -> None:
    import onnx

    proto = onnx.load(str(path))
    cfg = info.model_config
    props = {
        META_KEY: json.dumps(info.metadata, allow_nan=False),
        "class_names": json.dumps(list(cfg.class_names)),
        "task": cfg.task,
        "outputs": "probabilities" if probabilities else "logits",
        "input": (
            f"float32 RGB in [0, 1], NCHW; height and width multiples of {2 ** int(cfg.encoder_depth)}; "
            "normalisation (mean/std) is inside the graph"
        ),
        "mean": json.dumps(list(info.preprocessing.mean)),
        "std": json.dumps(list(info.preprocessing.std)),
        "content_hash": info.content_hash,
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "napari-mtunet"
    proto.doc_string = (
        f"napari-mtunet multi-task UNet ({cfg.encoder_name}, task {cfg.task}, classes {list(cfg.class_names)})"
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def session(model: str | os.PathLike | bytes, *, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session with ``threads`` intra-op threads (default: torch's thread count)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "the onnxruntime backend needs the 'onnxruntime' package: pip install \"napari-mtunet[onnx]\""
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        where = "<in-memory ONNX model>" if isinstance(model, bytes) else str(model)
        raise ExportError(f"{where}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:300]})") from None


def _max_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return float(np.abs(a - b).max()) / scale if a.size else 0.0


def verify_against_torch(onnx_file: Path | bytes, model: nn.Module, *, probabilities: bool, tol: float = 1e-3) -> float:
    """Run the ONNX graph and the torch model on the same random input; raise if they disagree."""
    stride = int(model.output_stride)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 2 * stride, 3 * stride, generator=gen)
    graph = _Graph(model, probabilities).eval()
    with torch.inference_mode():
        ref = [t.numpy() for t in graph(x)]
    sess = session(onnx_file, threads=1)
    got = sess.run(None, {INPUT_NAME: x.numpy()})
    worst = 0.0
    for name, a, b in zip([o.name for o in sess.get_outputs()], got, ref):
        if a.shape != b.shape:
            raise ExportError(f"ONNX output {name} has shape {a.shape}, the torch model gives {b.shape}")
        err = _max_rel_error(a, b)
        worst = max(worst, err)
        if not err <= tol:
            raise ExportError(f"ONNX output {name} differs from the torch model by {err:.2e} (relative; tolerance {tol:.0e})")
    return worst


def onnx_file_for(model: nn.Module, info: Any, path: Path, *, opset: int = DEFAULT_OPSET, probabilities: bool = False,
                  verify: bool = True) -> Path:
    """Write the ONNX graph of ``model`` (with ``info``'s metadata) to ``path`` (overwritten)."""
    net = copy.deepcopy(getattr(model, "module", model)).to("cpu", torch.float32).eval()
    stride = int(net.output_stride)
    graph = _Graph(net, probabilities).eval()
    names = output_names(net.config.task, probabilities)
    _export_graph(graph, path, torch.rand(1, 3, 2 * stride, 2 * stride), names, opset)
    _attach_metadata(path, info, probabilities)
    if verify:
        verify_against_torch(path, net, probabilities=probabilities)
    return path


def export_onnx(
    checkpoint: str | os.PathLike | nn.Module,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> Path:
    """Export a checkpoint (``.safetensors``, a bioimage.io package exported by napari-mtunet, or a model) to ONNX.

    The file has the input ``image`` (float32 RGB in [0, 1], NCHW, dynamic
    batch/height/width) and the outputs ``mask_logits`` and/or
    ``class_logits`` (by task); the normalisation is inside the graph and
    the checkpoint metadata in ``metadata_props["mtunet"]``.  ``verify``
    compares ONNX Runtime's outputs with the torch model's before the file is
    published.  Written atomically; an existing ``out`` is never replaced
    unless ``overwrite``.  Returns the path written.
    """
    out = check_output(out, ".onnx", overwrite=overwrite, what="ONNX")
    with tempfile.TemporaryDirectory(prefix="mtunet-export-") as work:
        src = load_source(checkpoint, Path(work))
        with staging_file(out, ".onnx") as tmp:
            onnx_file_for(src.model, src.info, tmp, opset=opset, verify=verify)
            return publish(tmp, out, overwrite=overwrite)


# --------------------------------------------------------------------------- reading ONNX files back


def read_onnx_info(path: str | os.PathLike):
    """The :class:`~napari_mtunet.checkpoint.CheckpointInfo` stored in an ONNX file exported by napari-mtunet."""
    from ..checkpoint import CheckpointError, CheckpointInfo, validate_metadata
    from ..config import ModelConfig, Preprocessing

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    sess = session(path, threads=1)
    props = sess.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ExportError(f"{path}: an ONNX file, but not one exported by napari-mtunet (no '{META_KEY}' metadata)")
    try:
        meta = validate_metadata(json.loads(props[META_KEY]), where=str(path))
    except (ValueError, CheckpointError) as exc:
        raise ExportError(f"{path}: invalid napari-mtunet metadata ({exc})") from None
    config = ModelConfig.from_dict(meta["model"])
    config.encoder_weights = None
    return CheckpointInfo(path=path, model_config=config, preprocessing=Preprocessing.from_dict(meta["preprocessing"]), metadata=meta)


class OnnxRuntimeModel:
    """Runs an exported graph with ONNX Runtime behind the torch model's calling convention.

    ``model(batch)`` takes a float ``(B, 3, H, W)`` tensor in [0, 1] and
    returns a :class:`~napari_mtunet.model.ModelOutput` of CPU tensors (logits).
    It also carries ``config``, ``preprocessing`` and ``output_stride``.
    """

    def __init__(self, onnx_model: str | os.PathLike | bytes, info: Any, *, threads: int | None = None,
                 providers: list[str] | None = None):
        self.info = info
        self.config = info.model_config
        self.preprocessing = info.preprocessing
        self.output_stride = 2 ** int(self.config.encoder_depth)
        self.session = session(onnx_model, threads=threads, providers=providers)
        names = [o.name for o in self.session.get_outputs()]
        unknown = [n for n in names if n not in LOGIT_OUTPUTS]
        if unknown:
            raise ExportError(
                f"ONNX model outputs {names}: expected mask_logits and/or class_logits (exported by export_onnx)"
            )
        self._fields = [LOGIT_OUTPUTS[n] for n in names]
        self._names = names

    @property
    def task(self) -> str:
        return self.config.task

    def eval(self) -> OnnxRuntimeModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxRuntimeModel:
        return self

    def __call__(self, batch: torch.Tensor):
        from ..model import ModelOutput

        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = self.session.run(self._names, {INPUT_NAME: x})
        got = {f: torch.from_numpy(o) for f, o in zip(self._fields, outs)}
        return ModelOutput(got.get("seg"), got.get("cls"))


def cache_dir() -> Path:
    """Where exported ONNX graphs are cached: ``$MTUNET_CACHE_DIR/onnx`` or ``~/.cache/napari-mtunet/onnx``."""
    base = os.environ.get("MTUNET_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "napari-mtunet" / "onnx"


def _cache_key(info: Any, opset: int) -> str:
    from .. import __version__

    raw = f"{info.content_hash}|{__version__}|{torch.__version__}|opset{opset}|logits"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _embedded_hash(path: Path) -> str | None:
    """The content hash stored in an ONNX file's metadata, or None when unreadable."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - truncated or foreign file: treat as a cache miss
        return None
    return next((p.value for p in proto.metadata_props if p.key == "content_hash"), None)


def cached_onnx(model: nn.Module, info: Any, *, opset: int = DEFAULT_OPSET) -> Path | bytes:
    """The ONNX graph (logits) of a torch model: from the cache, else exported (and cached when possible).

    The cache key covers the weights' content hash, the napari-mtunet and
    torch versions and the opset; a cached file whose embedded hash does not
    match is exported again.  Returns bytes when the cache cannot be written.
    """
    folder = cache_dir()
    target = folder / f"{_cache_key(info, opset)}.onnx"
    if target.is_file() and _embedded_hash(target) == info.content_hash:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with staging_file(target, ".onnx") as tmp:
            onnx_file_for(model, info, tmp, opset=opset)
            os.replace(tmp, target)
        return target
    except OSError:
        with tempfile.TemporaryDirectory(prefix="mtunet-onnx-") as work:
            path = onnx_file_for(model, info, Path(work) / "model.onnx", opset=opset)
            return path.read_bytes()


def onnxruntime_providers(device: torch.device) -> list[str]:
    """Execution providers for ``device``; raises when ONNX Runtime cannot use it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "the onnxruntime backend needs the 'onnxruntime' package: pip install \"napari-mtunet[onnx]\""
        ) from None
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ExportError(
        f"ONNX Runtime here has no execution provider for device {device} "
        f"(available: {ort.get_available_providers()}); use device='cpu' (or install onnxruntime-gpu for CUDA)"
    )
