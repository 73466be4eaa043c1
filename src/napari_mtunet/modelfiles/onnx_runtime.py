"""ONNX Runtime as an inference backend: a verified graph behind the torch model's calling convention.

:class:`OnnxRuntimeModel` runs a graph that passed
:func:`~.onnx_file.verify_onnx` and checks the shape of every output of
every call against the graph's metadata.  For a torch model (a checkpoint
opened with ``backend="onnxruntime"``) the graph comes from
:func:`cached_onnx`: a cache whose files are named by the SHA-256 of their
own bytes, re-hashed when read, verified like any graph file and compared
numerically with the torch model before use -- a replaced or damaged cache
file is exported again, never trusted on a tag.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IMAGE_CHANNELS
from .errors import ModelFileError, OnnxModelError
from .onnx_file import VerifiedGraph, check_outputs, read_onnx_bytes, verify_onnx
from .onnx_graph import (DEFAULT_OPSET, GUIDANCE_NAME, INPUT_NAME, LOGIT_OUTPUTS, has_guidance_input, onnx_file_for,
                         verify_against_torch)
from .onnx_session import onnxruntime_providers, session  # noqa: F401 - re-exported


class OnnxRuntimeModel:
    """Runs an exported graph with ONNX Runtime behind the torch model's calling convention.

    ``model(batch)`` takes a float ``(B, C, H, W)`` tensor in [0, 1] and
    returns a :class:`~napari_mtunet.model.ModelOutput` of CPU tensors
    (logits).  It also carries ``config``, ``preprocessing`` and
    ``output_stride``.  ``onnx_model`` is a file or its bytes; it is read
    once and verified (:func:`~.onnx_file.verify_onnx`); it must describe the
    same model as ``info`` (same weights hash and configuration).
    """

    def __init__(self, onnx_model: str | os.PathLike | bytes, info: Any, *, threads: int | None = None,
                 providers: list[str] | None = None):
        if isinstance(onnx_model, bytes):
            where = f"the ONNX graph of {getattr(info, 'name', 'the model')}"
            data = onnx_model
        else:
            where = str(onnx_model)
            data = read_onnx_bytes(onnx_model)
        verified = verify_onnx(data, where, threads=threads, providers=providers)
        _same_model(verified, info, where)
        if verified.probabilities:
            raise OnnxModelError(f"{where}: the graph outputs probabilities (a bioimage.io package's graph); "
                                 "the Predictor runs graphs exported with logits (mtunet export --format onnx)")
        self.where = where
        self.info = info
        self.config = info.model_config
        self.preprocessing = info.preprocessing
        self.output_stride = 2 ** int(self.config.encoder_depth)
        self.session = verified.session
        self.sha256 = verified.sha256
        self._outputs = verified.outputs
        self._names = [o.name for o in verified.outputs]
        self._fields = [LOGIT_OUTPUTS[n] for n in self._names]

    @property
    def task(self) -> str:
        return self.config.task

    def eval(self) -> OnnxRuntimeModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxRuntimeModel:
        return self

    def __call__(self, batch: Any):
        import torch

        from ..model import ModelOutput

        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        feeds = {INPUT_NAME: np.ascontiguousarray(x[:, :IMAGE_CHANNELS])}
        if has_guidance_input(self.config):  # an interactive graph: the prompt channels, zeros when none
            g = x[:, IMAGE_CHANNELS:]
            feeds[GUIDANCE_NAME] = np.ascontiguousarray(g) if g.shape[1] else np.zeros(
                (x.shape[0], self.config.guidance_channels, *x.shape[2:]), np.float32)
        outs = self.session.run(self._names, feeds)
        sizes = {"batch": x.shape[0], "height": x.shape[2], "width": x.shape[3]}
        check_outputs(outs, self._outputs, sizes, self.where)
        got = {f: torch.from_numpy(o) for f, o in zip(self._fields, outs)}
        return ModelOutput(got.get("seg"), got.get("cls"))


def _same_model(verified: VerifiedGraph, info: Any, where: str) -> None:
    """The verified graph is the model ``info`` describes (the file may have been replaced meanwhile)."""
    mine = verified.info
    if mine.content_hash != info.content_hash:
        raise OnnxModelError(f"{where}: the graph is of another model (weights hash {mine.short_hash}, expected "
                             f"{info.short_hash}); the file changed while it was being opened")
    a, b = mine.model_config.to_dict(), info.model_config.to_dict()
    a.pop("encoder_weights", None), b.pop("encoder_weights", None)
    if a != b or mine.preprocessing.to_dict() != info.preprocessing.to_dict():
        raise OnnxModelError(f"{where}: the graph's model configuration differs from the model's")


def cache_dir() -> Path:
    """Where exported ONNX graphs are cached: ``$MTUNET_CACHE_DIR/onnx`` or ``~/.cache/napari-mtunet/onnx``."""
    base = os.environ.get("MTUNET_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "napari-mtunet" / "onnx"


def _cache_key(info: Any, opset: int) -> str:
    import torch

    from .. import __version__

    raw = f"{info.content_hash}|{__version__}|{torch.__version__}|opset{opset}|logits"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached(folder: Path, key: str, model: Any, info: Any) -> bytes | None:
    """A cached graph for ``key`` whose bytes hash to its name, verified and equal to ``model``; else None."""
    try:
        candidates = sorted(folder.glob(f"{key}-*.onnx"))
    except OSError:
        return None
    for path in candidates:
        try:
            data = read_onnx_bytes(path)
            if _digest(data) != path.stem.split("-", 1)[1]:
                raise OnnxModelError(f"{path}: its bytes do not hash to its name")
            verified = verify_onnx(data, str(path))
            _same_model(verified, info, str(path))
            verify_against_torch(data, getattr(model, "module", model), probabilities=False)
            return data
        except ModelFileError:
            try:
                path.unlink()  # replaced or damaged: exported again below
            except OSError:
                pass
    return None


def cached_onnx(model: Any, info: Any, *, opset: int = DEFAULT_OPSET) -> bytes:
    """The verified ONNX graph (logits) of a torch model: from the cache, else exported (and cached when possible).

    Cache files are ``<key>-<sha256 of the file>.onnx``; the key covers the
    weights' content hash, the napari-mtunet and torch versions and the
    opset.  A file is used only when its bytes hash to its name, it passes
    :func:`~.onnx_file.verify_onnx`, it describes this model and its outputs
    equal the torch model's on a test input.  Returns the graph's bytes (read
    once; ONNX Runtime loads them from memory).
    """
    folder = cache_dir()
    key = _cache_key(info, opset)
    data = _cached(folder, key, model, info)
    if data is not None:
        return data
    with tempfile.TemporaryDirectory(prefix="mtunet-onnx-") as work:
        data = onnx_file_for(model, info, Path(work) / "model.onnx", opset=opset).read_bytes()
    try:
        from ..paths import write_atomic

        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}-{_digest(data)}.onnx", data)
    except OSError:
        pass  # an unwritable cache: the graph is used from memory
    return data
