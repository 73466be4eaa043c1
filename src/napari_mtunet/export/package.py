"""Opening models: a ``.safetensors`` checkpoint or a bioimage.io package exported by napari-mtunet.

A package written by :func:`~napari_mtunet.export.export_bioimageio` embeds
the original checkpoint file byte for byte (an attachment named in
``config.napari-mtunet.checkpoint`` of its ``rdf.yaml``).  Opening a package
reads that file -- never the package's pickled ``pytorch_state_dict``
weights -- so the round trip is exact and nothing is unpickled.  Neither
``bioimageio.spec`` nor ``bioimageio.core`` is needed to open a package.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..checkpoint import CheckpointError, CheckpointInfo, load_checkpoint

#: Names a bioimage.io resource description may have inside a package.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari-mtunet"
MAX_RDF_BYTES = 4 * 1024 * 1024
#: Far above any real checkpoint (VGG16 UNet: ~100 MB); guards against zip bombs.
MAX_CHECKPOINT_BYTES = 16 * 1024**3


def _rdf_in_folder(folder: Path) -> Path | None:
    for name in RDF_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _zip_rdf_name(zf: zipfile.ZipFile) -> str | None:
    names = set(zf.namelist())
    for name in RDF_NAMES:
        if name in names:
            return name
    return None


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """True for a bioimage.io package: a zip with ``rdf.yaml`` at its root, that file itself, or its folder."""
    p = Path(path)
    if p.is_dir():
        return _rdf_in_folder(p) is not None
    if not p.is_file():
        return False
    if p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml"):
        return True
    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return _zip_rdf_name(zf) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def _parse_rdf(text: bytes, where: str) -> dict[str, Any]:
    import yaml

    if len(text) > MAX_RDF_BYTES:
        raise CheckpointError(f"{where}: rdf.yaml is implausibly large ({len(text)} bytes)")
    try:
        rdf = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{where}: rdf.yaml is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(rdf, dict):
        raise CheckpointError(f"{where}: rdf.yaml is not a YAML mapping")
    return rdf


def _checkpoint_name(rdf: dict[str, Any], where: str) -> str:
    if rdf.get("type") != "model":
        raise CheckpointError(f"{where}: a bioimage.io resource of type {rdf.get('type')!r}, not a model")
    ours = (rdf.get("config") or {}).get(CONFIG_KEY) if isinstance(rdf.get("config"), dict) else None
    name = ours.get("checkpoint") if isinstance(ours, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(
            f"{where}: a bioimage.io model package, but not one exported by napari-mtunet (its rdf.yaml has no "
            f"config.{CONFIG_KEY}.checkpoint); run it with bioimageio.core instead"
        )
    pure = PurePosixPath(name)
    if pure.is_absolute() or len(pure.parts) != 1 or name in (".", "..") or not name.endswith(".safetensors"):
        raise CheckpointError(f"{where}: config.{CONFIG_KEY}.checkpoint must be a .safetensors file name, got {name!r}")
    attached = []
    for entry in rdf.get("attachments") or []:
        src = entry.get("source") if isinstance(entry, dict) else entry
        if isinstance(src, str):
            attached.append(PurePosixPath(src).name)
    if name not in attached:
        raise CheckpointError(f"{where}: the checkpoint {name!r} named in rdf.yaml is not among its attachments")
    return name


def _copy_limited(src: Any, dst: Path, limit: int, where: str) -> None:
    """Stream ``src`` (a binary file object) into ``dst``, refusing more than ``limit`` bytes."""
    total = 0
    with open(dst, "wb") as out:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise CheckpointError(f"{where}: the embedded checkpoint is larger than {limit} bytes; refused")
            out.write(chunk)


def extract_checkpoint(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Copy the checkpoint embedded in a napari-mtunet bioimage.io package into ``folder``; returns its path.

    Only the file that ``rdf.yaml`` names (a plain ``.safetensors`` file name
    listed among the attachments) is read, streamed with a size limit;
    nothing else in the package is extracted or executed.
    """
    p = Path(path)
    where = str(p)
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                rdf_name = _zip_rdf_name(zf)
                if rdf_name is None:
                    raise CheckpointError(f"{where}: a zip archive without rdf.yaml, not a bioimage.io package")
                if zf.getinfo(rdf_name).file_size > MAX_RDF_BYTES:
                    raise CheckpointError(f"{where}: rdf.yaml is implausibly large ({zf.getinfo(rdf_name).file_size} bytes)")
                name = _checkpoint_name(_parse_rdf(zf.read(rdf_name), where), where)
                try:
                    member = zf.getinfo(name)
                except KeyError:
                    raise CheckpointError(f"{where}: the package lacks its checkpoint file {name!r}") from None
                if member.file_size > MAX_CHECKPOINT_BYTES:
                    raise CheckpointError(f"{where}: the embedded checkpoint is larger than {MAX_CHECKPOINT_BYTES} bytes; refused")
                dst = Path(folder) / name
                with zf.open(member) as src:
                    _copy_limited(src, dst, MAX_CHECKPOINT_BYTES, where)
                return dst
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{where}: corrupt zip archive ({exc})") from None
    rdf_path = _rdf_in_folder(p) if p.is_dir() else p
    if rdf_path is None or not rdf_path.is_file():
        raise CheckpointError(f"{where}: no rdf.yaml found; not a bioimage.io package")
    if rdf_path.stat().st_size > MAX_RDF_BYTES:
        raise CheckpointError(f"{where}: rdf.yaml is implausibly large ({rdf_path.stat().st_size} bytes)")
    name = _checkpoint_name(_parse_rdf(rdf_path.read_bytes(), where), where)
    ckpt = rdf_path.parent / name
    if not ckpt.is_file():
        raise CheckpointError(f"{where}: the package lacks its checkpoint file {name!r} (expected {ckpt})")
    dst = Path(folder) / name
    with open(ckpt, "rb") as src:
        _copy_limited(src, dst, MAX_CHECKPOINT_BYTES, where)
    return dst


def open_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Open a ``.safetensors`` checkpoint or a bioimage.io package exported by napari-mtunet.

    Returns ``(model in eval mode, CheckpointInfo)`` exactly as
    :func:`~napari_mtunet.checkpoint.load_checkpoint` does for the original
    checkpoint (same weights, config, class names, metrics, content hash);
    for a package, ``info.path`` is the package.  Raises
    :class:`~napari_mtunet.checkpoint.CheckpointError` naming the file.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{p}: an ONNX file cannot be turned back into a PyTorch model; open the .safetensors checkpoint or "
            "the bioimage.io package it was exported from, or run it with Predictor(path, backend='onnxruntime')"
        )
    if not is_bioimageio_package(p):
        return load_checkpoint(p, device=device)
    with tempfile.TemporaryDirectory(prefix="mtunet-package-") as work:
        ckpt = extract_checkpoint(p, work)
        try:
            model, info = load_checkpoint(ckpt, device=device)
        except CheckpointError as exc:
            raise CheckpointError(f"{p}: the embedded checkpoint is not usable: {exc}") from None
    info.path = p
    return model, info
