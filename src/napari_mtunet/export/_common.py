"""Shared by the exporters: errors, output checks, atomic no-clobber publishing (through paths.py), source loading."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import paths


class ExportError(ValueError):
    """A model cannot be exported or imported; the message names the file and the problem."""


@dataclass
class Source:
    """A model to export: the network, its checkpoint info and the checkpoint file it came from."""

    model: torch.nn.Module
    info: Any  # CheckpointInfo
    checkpoint_file: Path  # a .safetensors checkpoint (a temporary copy for packages / in-memory models)


def check_output(out: str | os.PathLike, suffix: str, *, overwrite: bool, what: str) -> Path:
    """Validate an output path before any work is done (fail fast, never clobber)."""
    out = Path(out).expanduser()
    if out.suffix.lower() != suffix:
        raise ExportError(f"{out}: {what} files must end in {suffix}")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give a file name ending in {suffix}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists; it was not overwritten (choose another name or pass overwrite=True)")
    return out


def publish(tmp: Path, out: Path, *, overwrite: bool) -> Path:
    """Move a finished temporary file into place (:func:`napari_mtunet.paths.publish`; umask's mode).

    Without ``overwrite`` a file that appeared at ``out`` meanwhile is never
    replaced: :class:`ExportError`.  ``tmp`` is gone afterwards either way.
    """
    try:
        return paths.publish(tmp, out, overwrite=overwrite)
    except FileExistsError:
        raise ExportError(f"{out}: already exists; it was not overwritten") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


@contextmanager
def staging_file(out: Path, suffix: str) -> Iterator[Path]:
    """A temporary file next to ``out`` with the umask's mode (:func:`napari_mtunet.paths.temporary_sibling`)."""
    with paths.temporary_sibling(out, suffix) as tmp:
        yield tmp


def load_source(checkpoint: Any, workdir: Path) -> Source:
    """Open what the caller wants exported: a checkpoint file, a package exported by us, or a model.

    ``workdir`` receives a checkpoint file when the source is not already one
    (the exported package embeds that file, so the round trip is exact).
    """
    from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .package import extract_checkpoint, is_bioimageio_package

    if isinstance(checkpoint, torch.nn.Module):
        module = getattr(checkpoint, "module", checkpoint)
        path = workdir / "model.safetensors"
        try:
            save_checkpoint(path, module)
        except CheckpointError as exc:
            raise ExportError(f"cannot export the in-memory model: {exc}") from None
        try:
            model, info = load_checkpoint(path)
        except CheckpointError as exc:
            raise ExportError(f"cannot export the in-memory model: {exc}") from None
        info.path = None
        return Source(model, info, path)
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ExportError(f"{path}: no such file or folder")
    if is_bioimageio_package(path):
        ckpt = extract_checkpoint(path, workdir)
        try:
            model, info = load_checkpoint(ckpt)
        except CheckpointError as exc:
            raise ExportError(f"{path}: the embedded checkpoint cannot be read ({exc})") from None
        info.path = path
        return Source(model, info, ckpt)
    try:
        model, info = load_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    return Source(model, info, path)
