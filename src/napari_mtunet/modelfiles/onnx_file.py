"""Reading an ONNX graph exported by napari-mtunet, and verifying it before anything runs on it.

A graph file is untrusted: anyone can edit its metadata or its graph.  It
is read once (:func:`read_onnx_bytes`) and verified from those bytes
(:func:`verify_onnx`):

1. the ``mtunet`` metadata is a valid checkpoint metadata document whose
   ``metadata_hash`` matches (swapped class names, an edited task ...);
2. the plain copies beside it (class names, task, mean/std, content hash,
   output kind) say the same;
3. ``graph_sha256`` is the hash of the graph and weights as stored;
4. the graph's declared inputs and outputs have the names, ranks and fixed
   sizes that :func:`~.onnx_graph.io_spec` derives from the metadata;
5. a dry run on a small input (batch 2, a non-square size) gives outputs of
   exactly the expected shapes (batch, classes, height, width) and finite
   values: a 1x1 mask, 5 logits under 3 names, 3 mask channels for one
   class or a batch of 4 for 2 are refused here, not after the first image.

Every failure is an :class:`~.errors.OnnxModelError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint_load import CheckpointInfo
from .errors import CheckpointError, OnnxModelError
from .hashing import HASH_VERSION, metadata_hash_matches
from .onnx_graph import (
    GRAPH_HASH_KEY,
    LOGIT_OUTPUTS,
    META_KEY,
    PROBABILITY_OUTPUTS,
    TensorIO,
    graph_hash,
    io_spec,
)
from .onnx_session import session
from .schema import validate_metadata

#: The protobuf limit of an ONNX file with its weights inside.
MAX_ONNX_BYTES = 2 * 1024**3


@dataclass
class VerifiedGraph:
    """An ONNX graph that passed :func:`verify_onnx`: its bytes, their SHA-256, the model info, a session."""

    data: bytes
    sha256: str
    info: CheckpointInfo
    probabilities: bool
    session: Any
    outputs: list[TensorIO]


def read_onnx_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an ONNX file, read through one handle (bounded in size; a FIFO or device is never waited on)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise OnnxModelError(f"{p}: no such ONNX file") from None
    except IsADirectoryError:
        raise OnnxModelError(f"{p}: is a folder, not an ONNX file") from None
    except OSError as exc:
        raise OnnxModelError(f"{p}: cannot open the ONNX file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OnnxModelError(f"{p}: is a folder, not an ONNX file")
        if not stat.S_ISREG(st.st_mode):
            raise OnnxModelError(f"{p}: not a regular file; it is not read")
        if st.st_size > MAX_ONNX_BYTES:
            raise OnnxModelError(f"{p}: {st.st_size:,} bytes, more than an ONNX file can hold ({MAX_ONNX_BYTES:,})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            data = fh.read(MAX_ONNX_BYTES + 1)
    except OSError as exc:
        raise OnnxModelError(f"{p}: cannot read the ONNX file ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if not data:
        raise OnnxModelError(f"{p}: the file is empty")
    return data


def _parse(data: bytes, where: str):
    try:
        import onnx
    except ImportError:
        raise OnnxModelError("reading ONNX files needs the 'onnx' package: pip install \"napari-mtunet[onnx]\"") from None
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise OnnxModelError(f"{where}: not a readable ONNX file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not proto.HasField("graph"):
        raise OnnxModelError(f"{where}: not an ONNX model (no graph)")
    return proto


def _metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    if META_KEY not in props:
        raise OnnxModelError(f"{where}: an ONNX file, but not one exported by napari-mtunet (no '{META_KEY}' metadata)")
    raw = props[META_KEY]
    try:
        meta = validate_metadata(json.loads(raw), where=where)
    except (ValueError, RecursionError, CheckpointError) as exc:
        raise OnnxModelError(f"{where}: invalid napari-mtunet metadata ({str(exc)[:400]})") from None
    if meta.get("hash_version") != HASH_VERSION or not metadata_hash_matches(meta):
        raise OnnxModelError(
            f"{where}: metadata hash mismatch: the model's metadata (class names, task, preprocessing ...) was "
            "modified or damaged after export; export the model again from its checkpoint"
        )
    return meta


def _check_copies(props: dict[str, str], info: CheckpointInfo, where: str) -> bool:
    """The plain metadata copies agree with the sealed metadata; returns whether outputs are probabilities."""
    cfg = info.model_config
    expected: dict[str, Any] = {
        "class_names": list(cfg.class_names),
        "task": cfg.task,
        "content_hash": info.content_hash,
        "mean": list(info.preprocessing.mean) if info.preprocessing.mean is not None else None,
        "std": list(info.preprocessing.std) if info.preprocessing.std is not None else None,
    }
    for key, want in expected.items():
        if key not in props:
            continue
        raw = props[key]
        try:
            got = raw if key in ("task", "content_hash") else json.loads(raw)
        except ValueError:
            got = raw
        if got != want:
            raise OnnxModelError(
                f"{where}: metadata entry {key!r} ({raw[:80]!r}) disagrees with the model's sealed metadata "
                f"({str(want)[:80]}); the file was edited after export"
            )
    kind = props.get("outputs", "logits")
    if kind not in ("logits", "probabilities"):
        raise OnnxModelError(f"{where}: metadata entry 'outputs' must be 'logits' or 'probabilities', got {kind[:40]!r}")
    return kind == "probabilities"


def _dims(value_info) -> tuple[int | str | None, ...] | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def _check_declared(declared: list, want: list[TensorIO], what: str, where: str) -> None:
    names = [v.name for v in declared]
    if names != [w.name for w in want]:
        raise OnnxModelError(
            f"{where}: the graph's {what}s are {names}; its metadata describes {[w.name for w in want]}"
        )
    for v, w in zip(declared, want):
        dims = _dims(v)
        if dims is None:
            continue
        if len(dims) != len(w.dims):
            raise OnnxModelError(
                f"{where}: {what} {v.name!r} has rank {len(dims)} ({list(dims)}); its metadata describes rank "
                f"{len(w.dims)} ({list(w.dims)})"
            )
        for axis, (d, e) in enumerate(zip(dims, w.dims)):
            if isinstance(e, int) and isinstance(d, int) and d != e:
                raise OnnxModelError(
                    f"{where}: {what} {v.name!r} has size {d} on axis {axis}; its metadata describes {e} "
                    f"({list(w.dims)})"
                )
            if isinstance(e, str) and isinstance(d, int):
                raise OnnxModelError(
                    f"{where}: {what} {v.name!r} has a fixed size {d} on axis {axis}, where the model takes any "
                    f"{e} ({list(w.dims)})"
                )


def dry_run_sizes(info: CheckpointInfo) -> dict[str, int]:
    """Sizes of the dry run: a batch of 2 and a non-square image, so no axis can pass by coincidence."""
    stride = 2 ** int(info.model_config.encoder_depth)
    return {"batch": 2, "height": 2 * stride, "width": 3 * stride}


def check_outputs(arrays: list[np.ndarray], outputs: list[TensorIO], sizes: dict[str, int], where: str) -> None:
    """Each output array has exactly the shape the spec gives for these sizes (and is floating-point)."""
    if len(arrays) != len(outputs):
        raise OnnxModelError(f"{where}: the graph returned {len(arrays)} outputs; its metadata describes {len(outputs)}")
    for arr, spec in zip(arrays, outputs):
        want = spec.concrete(sizes)
        got = tuple(np.shape(arr))
        if got != want:
            raise OnnxModelError(
                f"{where}: output {spec.name!r} has shape {got}, but for an input of batch {sizes.get('batch')} "
                f"and {sizes.get('height')}x{sizes.get('width')} pixels its metadata describes {want} "
                f"({list(spec.dims)}); the graph does not compute what its metadata says"
            )
        if not np.issubdtype(np.asarray(arr).dtype, np.floating):
            raise OnnxModelError(f"{where}: output {spec.name!r} is {np.asarray(arr).dtype}, not floating-point")


def verify_onnx(data: bytes, where: str, *, path: Path | None = None, threads: int | None = 1,
                providers: list[str] | None = None) -> VerifiedGraph:
    """Verify an exported graph from its bytes (see the module docstring); returns it with a ready session."""
    from ..config import ModelConfig, Preprocessing

    proto = _parse(data, where)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = _metadata(props, where)
    config = ModelConfig.from_dict(meta["model"])
    config.encoder_weights = None
    info = CheckpointInfo(path=path, model_config=config, preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                          metadata=meta)
    probabilities = _check_copies(props, info, where)
    stored = props.get(GRAPH_HASH_KEY)
    if stored is None:
        raise OnnxModelError(f"{where}: no '{GRAPH_HASH_KEY}' entry (exported by an older napari-mtunet, or edited); "
                             "export the model again from its checkpoint")
    if stored != graph_hash(proto):
        raise OnnxModelError(f"{where}: graph hash mismatch: the graph or its weights were modified or damaged "
                             "after export; export the model again from its checkpoint")
    if any(init.data_location == 1 for init in proto.graph.initializer):  # onnx.TensorProto.EXTERNAL
        raise OnnxModelError(f"{where}: the graph keeps weights in external files; only self-contained graphs "
                             "exported by napari-mtunet are opened")
    inputs, outputs = io_spec(config, probabilities)
    initializers = {i.name for i in proto.graph.initializer}
    declared_inputs = [v for v in proto.graph.input if v.name not in initializers]
    _check_declared(declared_inputs, inputs, "input", where)
    _check_declared(list(proto.graph.output), outputs, "output", where)
    del proto
    sess = session(data, threads=threads, providers=providers, where=where)
    sizes = dry_run_sizes(info)
    feeds = {spec.name: np.zeros(spec.concrete(sizes), np.float32) for spec in inputs}
    try:
        got = sess.run([o.name for o in outputs], feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise OnnxModelError(f"{where}: the graph fails on a test input of the size its metadata allows "
                             f"({type(exc).__name__}: {str(exc)[:300]})") from None
    check_outputs(got, outputs, sizes, where)
    if not all(np.isfinite(a).all() for a in got):
        raise OnnxModelError(f"{where}: the graph gives NaN or infinite outputs on a test input")
    return VerifiedGraph(data, hashlib.sha256(data).hexdigest(), info, probabilities, sess, outputs)


def read_onnx_info(path: str | os.PathLike) -> CheckpointInfo:
    """The :class:`~napari_mtunet.checkpoint.CheckpointInfo` of an ONNX file exported by napari-mtunet, verified."""
    p = Path(path)
    return verify_onnx(read_onnx_bytes(p), str(p), path=p).info


__all__ = ["LOGIT_OUTPUTS", "PROBABILITY_OUTPUTS", "VerifiedGraph", "check_outputs", "read_onnx_bytes",
           "read_onnx_info", "verify_onnx"]
