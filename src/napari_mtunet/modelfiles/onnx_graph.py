"""The ONNX graph of a multi-task UNet: its inputs and outputs, tracing it, and the metadata it carries.

The graph takes what the PyTorch model takes: ``image``, float32 in
``[0, 1]``, shape ``(batch, 3, height, width)`` with batch, height and
width dynamic (height and width multiples of the model's output stride).
The model's normalisation (its mean/std buffers) is part of the graph.  An
interactive model's graph (``ModelConfig.prompts``) has a second input,
``guidance``, ``(batch, 4, height, width)``: the prompt channels of
:data:`napari_mtunet.config.GUIDANCE_CHANNELS` (positive clicks, negative
clicks, previous mask, box) as :func:`napari_mtunet.prompts.encode` makes
them for the region being run (all zeros: the automatic mode).  The
probability graph of a bioimage.io package is the automatic mode only (no
``guidance`` input).  Outputs, depending on the task:

- ``mask_logits`` ``(batch, 1, height, width)`` (tasks both, seg);
- ``class_logits`` ``(batch, num_classes)`` (tasks both, cls).

``probabilities=True`` (used inside bioimage.io packages) gives
``mask_probability`` and ``class_probabilities`` instead.

:func:`io_spec` is the one statement of these names, ranks and sizes: the
tracer declares them and :mod:`.onnx_file` verifies every graph it opens
against them, computed from the graph's own metadata.

The checkpoint's metadata (sealed by its ``metadata_hash``) travels in the
file's ``metadata_props`` under ``mtunet``, beside a few plain copies for
other tools and ``graph_sha256``, the hash of the graph itself.

This is the writing half used both by :func:`napari_mtunet.export.export_onnx`
(files for users) and by the ONNX Runtime backend's cache
(:mod:`.onnx_runtime`), so it lives below both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..jsonutil import json_default
from .errors import OnnxModelError
from .hashing import seal
from .onnx_session import session

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

DEFAULT_OPSET = 17
META_KEY = "mtunet"
GRAPH_HASH_KEY = "graph_sha256"
INPUT_NAME = "image"
GUIDANCE_NAME = "guidance"
#: output name -> ModelOutput field
LOGIT_OUTPUTS = {"mask_logits": "seg", "class_logits": "cls"}
PROBABILITY_OUTPUTS = {"mask_probability": "seg", "class_probabilities": "cls"}
#: Symbolic sizes of the dynamic axes.
DYNAMIC = ("batch", "height", "width")


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output: its name and its dimensions (an int is fixed, a string is dynamic)."""

    name: str
    dims: tuple[int | str, ...]

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.dims)


def input_channels(config: Any) -> int:
    """Channels of the network's input: ``ModelConfig.input_channels`` (``in_channels`` for older configs)."""
    return int(getattr(config, "input_channels", config.in_channels))


def has_guidance_input(config: Any, probabilities: bool = False) -> bool:
    """Whether the graph takes the ``guidance`` input (interactive models; not the probability graph)."""
    return bool(getattr(config, "prompts", False)) and not probabilities


def output_names(task: str, probabilities: bool = False) -> list[str]:
    """The graph's output names for a task (``both``: mask then class)."""
    seg, cls = ("mask_probability", "class_probabilities") if probabilities else ("mask_logits", "class_logits")
    return ([seg] if task != "cls" else []) + ([cls] if task != "seg" else [])


def io_spec(config: Any, probabilities: bool = False) -> tuple[list[TensorIO], list[TensorIO]]:
    """``(inputs, outputs)`` of the graph of a model with this :class:`~napari_mtunet.config.ModelConfig`."""
    from ..config import IMAGE_CHANNELS

    inputs = [TensorIO(INPUT_NAME, ("batch", IMAGE_CHANNELS, "height", "width"))]
    if has_guidance_input(config, probabilities):
        inputs.append(TensorIO(GUIDANCE_NAME, ("batch", input_channels(config) - IMAGE_CHANNELS, "height", "width")))
    outputs = []
    for name in output_names(config.task, probabilities):
        if name.startswith("mask"):
            outputs.append(TensorIO(name, ("batch", int(config.seg_classes), "height", "width")))
        else:
            outputs.append(TensorIO(name, ("batch", int(config.num_classes))))
    return inputs, outputs


def _graph_module(net: nn.Module, probabilities: bool) -> nn.Module:
    import torch
    from torch import nn

    class Graph(nn.Module):
        """The network as a function of one tensor returning a tuple (what exporters want)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image, guidance=None):
            out = self.net(image if guidance is None else torch.cat([image, guidance], dim=1))
            res = []
            if out.seg is not None:
                res.append(out.segmentation_probabilities() if probabilities else out.seg)
            if out.cls is not None:
                res.append(out.class_probabilities() if probabilities else out.cls)
            return tuple(res)

    return Graph().eval()


def export_graph(graph: nn.Module, path: Path, example: tuple[torch.Tensor, ...], inputs: list[TensorIO],
                 outputs: list[TensorIO], opset: int) -> None:
    """Trace ``graph`` into ``path``: TorchScript exporter first, torch.export-based one as fallback.

    The TorchScript-based exporter handles these convolutional graphs with
    dynamic batch/height/width in about a second; the torch.export-based one
    (the default since torch 2.9) takes ~20 s and is used when the former is
    missing or fails (future torch releases).
    """
    import torch

    names = [o.name for o in outputs]
    in_names = [i.name for i in inputs]
    dynamic_axes = {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in inputs + outputs}
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph, tuple(example), str(path), input_names=in_names, output_names=names,
                opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False,
            )
            return
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
            errors.append(f"TorchScript exporter: {type(exc).__name__}: {str(exc)[:300]}")
        try:
            dims = {n: torch.export.Dim(n) for n in DYNAMIC}
            shapes = tuple({i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)} for t in inputs)
            torch.onnx.export(
                graph, tuple(example), str(path), input_names=in_names, output_names=names,
                opset_version=max(opset, 18), dynamic_shapes=shapes,
                dynamo=True, external_data=False, verbose=False,
            )
            return
        except Exception as exc:  # noqa: BLE001
            errors.append(f"torch.export exporter: {type(exc).__name__}: {str(exc)[:300]}")
    raise OnnxModelError("ONNX export failed: " + "; ".join(errors))


def graph_hash(proto: onnx.ModelProto) -> str:
    """SHA-256 of the model without its ``metadata_props`` (the graph, its weights, opsets, functions)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    return hashlib.sha256(b"napari-mtunet-onnx-graph\0" + bare.SerializeToString(deterministic=True)).hexdigest()


def metadata_props(info: Any, probabilities: bool, proto: onnx.ModelProto) -> dict[str, str]:
    """What an exported graph carries: the sealed checkpoint metadata, plain copies, and the graph's hash."""
    cfg = info.model_config
    sealed = seal(json.dumps(info.metadata, allow_nan=False, default=json_default))
    return {
        META_KEY: sealed,
        "class_names": json.dumps(list(cfg.class_names)),
        "task": cfg.task,
        "outputs": "probabilities" if probabilities else "logits",
        "input": (
            f"image: float32 in [0, 1], NCHW with 3 channels; height and width multiples of "
            f"{2 ** int(cfg.encoder_depth)}; normalisation (mean/std) is inside the graph"
            + ("; guidance: float32 NCHW, the same height and width, channels positive clicks, negative clicks, "
               "previous mask, box (disks/masks of 0/1 in the image region being run; all zeros = automatic mode)"
               if has_guidance_input(cfg, probabilities) else "")
        ),
        "mean": json.dumps(list(info.preprocessing.mean)),
        "std": json.dumps(list(info.preprocessing.std)),
        "content_hash": info.content_hash,
        GRAPH_HASH_KEY: graph_hash(proto),
    }


def attach_metadata(path: Path, info: Any, probabilities: bool) -> None:
    import onnx

    proto = onnx.load(str(path))
    cfg = info.model_config
    del proto.metadata_props[:]
    proto.producer_name = "napari-mtunet"
    proto.doc_string = (
        f"napari-mtunet multi-task UNet ({cfg.encoder_name}, task {cfg.task}, classes {list(cfg.class_names)})"
    )
    for k, v in metadata_props(info, probabilities, proto).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _max_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return float(np.abs(a - b).max()) / scale if a.size else 0.0


def verify_against_torch(onnx_file: Path | bytes, model: nn.Module, *, probabilities: bool, tol: float = 1e-3) -> float:
    """Run the ONNX graph and the torch model on the same random input; raise if they disagree."""
    import torch

    stride = int(model.output_stride)
    gen = torch.Generator().manual_seed(0)
    inputs, _ = io_spec(model.config, probabilities)
    sizes = {"batch": 2, "height": 2 * stride, "width": 3 * stride}
    xs = [(torch.rand(t.concrete(sizes), generator=gen) > 0.8).float() if t.name == GUIDANCE_NAME
          else torch.rand(t.concrete(sizes), generator=gen) for t in inputs]
    graph = _graph_module(model, probabilities)
    with torch.inference_mode():
        ref = [t.numpy() for t in graph(*xs)]
    sess = session(onnx_file, threads=1)
    got = sess.run(None, {t.name: x.numpy() for t, x in zip(inputs, xs)})
    worst = 0.0
    names = [o.name for o in sess.get_outputs()]
    if len(names) != len(ref):
        raise OnnxModelError(f"the ONNX graph has outputs {names}; the torch model gives {len(ref)}")
    for name, a, b in zip(names, got, ref):
        if a.shape != b.shape:
            raise OnnxModelError(f"ONNX output {name} has shape {a.shape}, the torch model gives {b.shape}")
        err = _max_rel_error(a, b)
        worst = max(worst, err)
        if not err <= tol:
            raise OnnxModelError(
                f"ONNX output {name} differs from the torch model by {err:.2e} (relative; tolerance {tol:.0e})")
    return worst


def onnx_file_for(model: nn.Module, info: Any, path: Path, *, opset: int = DEFAULT_OPSET, probabilities: bool = False,
                  verify: bool = True) -> Path:
    """Write the ONNX graph of ``model`` (with ``info``'s metadata) to ``path`` (overwritten)."""
    import torch

    net = copy.deepcopy(getattr(model, "module", model)).to("cpu", torch.float32).eval()
    stride = int(net.output_stride)
    inputs, outputs = io_spec(net.config, probabilities)
    sizes = {"batch": 1, "height": 2 * stride, "width": 2 * stride}
    example = tuple(torch.rand(t.concrete(sizes)) for t in inputs)
    export_graph(_graph_module(net, probabilities), path, example, inputs, outputs, opset)
    attach_metadata(path, info, probabilities)
    if verify:
        verify_against_torch(path, net, probabilities=probabilities)
    return path
