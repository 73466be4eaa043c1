"""Opening bioimage.io model packages exported by napari-mtunet (a zip, its folder, or its ``rdf.yaml``).

A package written by :func:`~napari_mtunet.export.export_bioimageio` embeds
the original checkpoint file byte for byte (an attachment named in
``config.napari-mtunet.checkpoint`` of its ``rdf.yaml``).  Opening a package
reads that file -- never the package's pickled ``pytorch_state_dict``
weights -- so the round trip is exact and nothing is unpickled.  Neither
``bioimageio.spec`` nor ``bioimageio.core`` is needed.

A package is untrusted input:

- every problem (malformed YAML, absurd nesting, wrong types, an encrypted
  or oddly compressed entry, a corrupt zip) is a :class:`PackageError`
  naming the package and the entry, never a raw Python error;
- the checkpoint member's safetensors header is read and checked first
  (metadata, and the network it describes built on the ``meta`` device);
  the member must be exactly as long as that header says and may not
  inflate more than :data:`MAX_COMPRESSION_RATIO` times, so a small zip
  cannot fill the disk or the memory; the tensors are then read from the
  member stream itself -- nothing is extracted to a temporary file;
- in a package folder, the checkpoint and ``rdf.yaml`` must lie inside the
  folder: symbolic links pointing out of it are refused.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from .checkpoint_load import CheckpointInfo, build_checked, described_model, load_checkpoint, read_checked
from .errors import CheckpointError, PackageError
from .sniff import open_checkpoint
from .safetensors_format import MAX_HEADER_BYTES, MAX_PARAMETERS, read_tensors

if TYPE_CHECKING:
    import torch

#: Names a bioimage.io resource description may have inside a package.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari-mtunet"
MAX_RDF_BYTES = 4 * 1024 * 1024
#: The largest checkpoint a package may embed: the most values a checkpoint may hold, as float64, plus a header.
MAX_CHECKPOINT_BYTES = 8 * MAX_PARAMETERS + MAX_HEADER_BYTES + 8
#: Uncompressed / compressed size of a zip entry; trained float weights compress about 1.1 times.
MAX_COMPRESSION_RATIO = 100
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


@contextlib.contextmanager
def _entry_errors(package: Path, entry: str | None) -> Iterator[None]:
    """Turn any error raised while reading ``entry`` of ``package`` into one :class:`PackageError`."""
    try:
        yield
    except PackageError:
        raise
    except CheckpointError as exc:
        raise PackageError(package, f"the embedded checkpoint is not usable: {_strip(exc, entry)}", entry) from None
    except RecursionError:
        raise PackageError(package, "nested too deeply to be a bioimage.io description", entry) from None
    except MemoryError:
        raise PackageError(package, "too large to read", entry) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PackageError(package, f"corrupt zip data ({type(exc).__name__}: {str(exc)[:200]})", entry) from None
    except OSError as exc:
        raise PackageError(package, f"cannot be read ({exc.strerror or exc})", entry) from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError (encrypted), NotImplementedError (compression), ...
        raise PackageError(package, f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})", entry) from None


def _strip(exc: Exception, entry: str | None) -> str:
    """A nested checkpoint message without the temporary/where prefix it starts with."""
    text = str(exc)
    if entry and text.startswith(entry + ": "):
        return text[len(entry) + 2:]
    return text


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
    try:
        if p.is_dir():
            return _rdf_in_folder(p) is not None
        if not p.is_file():
            return False
        if p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml"):
            return True
        if not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as zf:
            return _zip_rdf_name(zf) is not None
    except Exception:  # noqa: BLE001 - an unreadable zip is not recognisably a package
        return False


def parse_rdf(text: bytes, package: Path, entry: str) -> dict[str, Any]:
    """``rdf.yaml`` as a mapping (safe loader: no tags, no code), or a :class:`PackageError`."""
    import yaml

    if len(text) > MAX_RDF_BYTES:
        raise PackageError(package, f"implausibly large ({len(text)} bytes; limit {MAX_RDF_BYTES})", entry)
    with _entry_errors(package, entry):
        try:
            rdf = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PackageError(package, f"not valid YAML ({str(exc).splitlines()[0][:200]})", entry) from None
    if not isinstance(rdf, dict):
        raise PackageError(package, f"not a YAML mapping (a {type(rdf).__name__})", entry)
    return rdf


def checkpoint_name(rdf: dict[str, Any], package: Path, entry: str) -> str:
    """The checkpoint file the description names, checked: a plain ``.safetensors`` name among the attachments."""
    kind = rdf.get("type")
    if kind != "model":
        raise PackageError(package, f"a bioimage.io resource of type {str(kind)[:60]!r}, not a model", entry)
    config = rdf.get("config")
    ours = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    name = ours.get("checkpoint") if isinstance(ours, dict) else None
    if not isinstance(name, str):
        raise PackageError(
            package, f"a bioimage.io model package, but not one exported by napari-mtunet (no "
            f"config.{CONFIG_KEY}.checkpoint naming a file); run it with bioimageio.core instead", entry)
    pure = PurePosixPath(name)
    if (pure.is_absolute() or len(pure.parts) != 1 or name in (".", "..") or not name.endswith(".safetensors")
            or "\\" in name or "\0" in name or len(name) > 255):
        raise PackageError(package, f"config.{CONFIG_KEY}.checkpoint must be a .safetensors file name, "
                           f"got {name[:100]!r}", entry)
    if name not in _attachment_names(rdf.get("attachments"), package, entry):
        raise PackageError(package, f"the checkpoint {name!r} it names is not among its attachments", entry)
    return name


def _attachment_names(attachments: Any, package: Path, entry: str) -> list[str]:
    """File names of the attachments: spec 0.5 (a list of ``{source: ...}``) or 0.4 (``{files: [...]}``)."""
    if attachments is None:
        return []
    if isinstance(attachments, dict) and "files" in attachments:  # spec 0.4
        attachments = attachments["files"]
    if not isinstance(attachments, list):
        raise PackageError(package, f"'attachments' must be a list of files, got {type(attachments).__name__}", entry)
    names = []
    for item in attachments:
        src = item.get("source") if isinstance(item, dict) else item
        if isinstance(src, str):
            names.append(PurePosixPath(src).name)
    return names


# --------------------------------------------------------------------------- zip packages


def _checked_member(zf: zipfile.ZipFile, name: str, package: Path) -> zipfile.ZipInfo:
    """The zip entry ``name``: present, a plain file, not encrypted, a known compression, a sane size and ratio."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise PackageError(package, "missing: the package lacks the checkpoint its rdf.yaml names", name) from None
    if info.is_dir():
        raise PackageError(package, "is a folder, not a file", name)
    if info.flag_bits & 0x1:
        raise PackageError(package, "is encrypted; napari-mtunet opens only unencrypted packages", name)
    if info.compress_type not in _ZIP_METHODS:
        raise PackageError(package, f"uses zip compression method {info.compress_type}, which is not supported "
                           f"(supported: {', '.join(sorted(_ZIP_METHODS.values()))})", name)
    if info.file_size > MAX_CHECKPOINT_BYTES:
        raise PackageError(package, f"declares {info.file_size:,} bytes, more than any checkpoint "
                           f"(limit {MAX_CHECKPOINT_BYTES:,})", name)
    if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
        raise PackageError(package, f"inflates from {info.compress_size:,} to {info.file_size:,} bytes "
                           f"(more than {MAX_COMPRESSION_RATIO} times): a zip bomb, not a checkpoint", name)
    return info


def _read_rdf_from_zip(zf: zipfile.ZipFile, package: Path) -> tuple[str, dict[str, Any]]:
    rdf_name = _zip_rdf_name(zf)
    if rdf_name is None:
        raise PackageError(package, "a zip archive without rdf.yaml, not a bioimage.io package")
    info = _checked_member(zf, rdf_name, package)
    if info.file_size > MAX_RDF_BYTES:
        raise PackageError(package, f"implausibly large ({info.file_size} bytes; limit {MAX_RDF_BYTES})", rdf_name)
    with _entry_errors(package, rdf_name), zf.open(info) as fh:
        text = fh.read(MAX_RDF_BYTES + 1)
    return rdf_name, parse_rdf(text, package, rdf_name)


@contextlib.contextmanager
def _open_zip(package: Path) -> Iterator[zipfile.ZipFile]:
    with _entry_errors(package, None):
        zf = zipfile.ZipFile(package)
    with zf:
        yield zf


def _member_stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, package: Path) -> BinaryIO:
    with _entry_errors(package, info.filename):
        return zf.open(info)  # type: ignore[return-value]


def _check_member_length(header_end: int, info: zipfile.ZipInfo, package: Path) -> None:
    if info.file_size != header_end:
        raise PackageError(
            package, f"is {info.file_size:,} bytes long but its safetensors header describes {header_end:,}; "
            "the package was damaged or edited", info.filename)


def _ensure_exhausted(fh: BinaryIO, package: Path, entry: str) -> None:
    """Reading past the last declared byte returns nothing (and makes zipfile check the entry's CRC)."""
    with _entry_errors(package, entry):
        if fh.read(1):
            raise PackageError(package, "holds more bytes than its size says; the package was damaged or edited",
                               entry)


def _open_zip_model(package: Path, device: Any) -> tuple[Any, CheckpointInfo]:
    with _open_zip(package) as zf:
        _rdf_name, rdf = _read_rdf_from_zip(zf, package)
        name = checkpoint_name(rdf, package, _rdf_name)
        info = _checked_member(zf, name, package)
        with _entry_errors(package, name), _member_stream(zf, info, package) as fh:
            meta, header = read_checked(fh, info.file_size, name)
            _check_member_length(header.data_end, info, package)
            config, preprocessing = described_model(meta, header, name)
            tensors = read_tensors(fh, header, name)  # exactly the declared bytes, from the member stream
            _ensure_exhausted(fh, package, name)
            return build_checked(tensors, meta, config, preprocessing, name, path=package, device=device)


# --------------------------------------------------------------------------- folder packages


def _inside(path: Path, folder: Path, package: Path, entry: str) -> Path:
    """``path`` resolved, refusing a symbolic link (or ``..``) that leads out of ``folder``."""
    try:
        real = path.resolve(strict=True)
        root = folder.resolve(strict=True)
    except FileNotFoundError:
        raise PackageError(package, f"missing: the package lacks this file (expected {path})", entry) from None
    except (OSError, RuntimeError) as exc:
        raise PackageError(package, f"cannot be resolved ({exc})", entry) from None
    if real != root and root not in real.parents:
        raise PackageError(package, f"is a symbolic link to {real}, outside the package folder; refused", entry)
    if not real.is_file():
        raise PackageError(package, "is not a regular file", entry)
    return real


def _folder_rdf(p: Path) -> tuple[Path, Path, dict[str, Any]]:
    """``(folder, rdf path, rdf)`` of a package folder or of its rdf.yaml file."""
    rdf_path = _rdf_in_folder(p) if p.is_dir() else p
    if rdf_path is None or not rdf_path.exists():
        raise PackageError(p, "no rdf.yaml found; not a bioimage.io package")
    folder = rdf_path.parent
    real = _inside(rdf_path, folder, p, rdf_path.name)
    with _entry_errors(p, rdf_path.name):
        size = real.stat().st_size
        if size > MAX_RDF_BYTES:
            raise PackageError(p, f"implausibly large ({size} bytes; limit {MAX_RDF_BYTES})", rdf_path.name)
        with open(real, "rb") as fh:
            text = fh.read(MAX_RDF_BYTES + 1)
    return folder, rdf_path, parse_rdf(text, p, rdf_path.name)


def _folder_checkpoint(p: Path) -> Path:
    folder, rdf_path, rdf = _folder_rdf(p)
    name = checkpoint_name(rdf, p, rdf_path.name)
    return _inside(folder / name, folder, p, name)


# --------------------------------------------------------------------------- public API


def extract_checkpoint(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Copy the checkpoint embedded in a napari-mtunet bioimage.io package into ``folder``; returns its path.

    Only the file that ``rdf.yaml`` names is read.  Its header is read and
    checked first (a valid napari-mtunet checkpoint whose declared size the
    entry has), then exactly that many bytes are copied.
    """
    p = Path(path)
    if p.is_file() and zipfile.is_zipfile(p):
        with _open_zip(p) as zf:
            rdf_name, rdf = _read_rdf_from_zip(zf, p)
            name = checkpoint_name(rdf, p, rdf_name)
            info = _checked_member(zf, name, p)
            with _entry_errors(p, name):
                with _member_stream(zf, info, p) as fh:
                    meta, header = read_checked(fh, info.file_size, name)
                    _check_member_length(header.data_end, info, p)
                    described_model(meta, header, name)
                with _member_stream(zf, info, p) as fh:
                    dst = Path(folder) / name
                    _copy_exactly(fh, dst, info.file_size, p, name)
                    _ensure_exhausted(fh, p, name)
            return dst
    src = _folder_checkpoint(p)
    name = src.name
    with _entry_errors(p, name):
        with open(src, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            meta, header = read_checked(fh, size, name)
            if header.data_end != size:
                raise PackageError(p, f"is {size:,} bytes long but its safetensors header describes "
                                   f"{header.data_end:,}; the package was damaged or edited", name)
            described_model(meta, header, name)
            fh.seek(0)
            dst = Path(folder) / name
            _copy_exactly(fh, dst, size, p, name)
    return dst


def _copy_exactly(src: BinaryIO, dst: Path, n: int, package: Path, entry: str) -> None:
    left = n
    with open(dst, "wb") as out:
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise PackageError(package, f"is truncated ({n - left:,} of {n:,} bytes)", entry)
            out.write(chunk)
            left -= len(chunk)


def _explain_zip(p: Path) -> None:
    """A ``.zip`` that is not a readable package: say what is wrong with it as a package."""
    with _entry_errors(p, None):
        if not zipfile.is_zipfile(p):
            raise PackageError(p, "not a readable zip archive (truncated or corrupt: no central directory)")
    with _open_zip(p) as zf:
        _read_rdf_from_zip(zf, p)  # raises: no rdf.yaml


def open_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, CheckpointInfo]:
    """Open a ``.safetensors`` checkpoint or a bioimage.io package exported by napari-mtunet.

    Returns ``(model in eval mode, CheckpointInfo)`` exactly as
    :func:`~napari_mtunet.checkpoint.load_checkpoint` does for the original
    checkpoint (same weights, config, class names, metrics, content hash);
    for a package, ``info.path`` is the package.  Raises
    :class:`~napari_mtunet.checkpoint.CheckpointError` (for packages its
    subclass :class:`PackageError`) naming the file.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{p}: an ONNX file cannot be turned back into a PyTorch model; open the .safetensors checkpoint or "
            "the bioimage.io package it was exported from, or run it with Predictor(path, backend='onnxruntime')"
        )
    if not is_bioimageio_package(p):
        if p.suffix.lower() == ".zip" and p.is_file():
            _explain_zip(p)
        return load_checkpoint(p, device=device)
    if p.is_file() and zipfile.is_zipfile(p):
        return _open_zip_model(p, device)
    ckpt = _folder_checkpoint(p)
    with _entry_errors(p, ckpt.name):
        real, fh, size = open_checkpoint(ckpt)
        with fh:  # one handle: header, length check, tensors
            meta, header = read_checked(fh, size, str(real))
            if header.data_end != size:
                raise PackageError(p, f"is {size:,} bytes long but its safetensors header describes "
                                   f"{header.data_end:,}; the package was damaged or edited", ckpt.name)
            config, preprocessing = described_model(meta, header, str(real))
            tensors = read_tensors(fh, header, str(real))
        return build_checked(tensors, meta, config, preprocessing, str(real), path=p, device=device)
