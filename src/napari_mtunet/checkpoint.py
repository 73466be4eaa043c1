"""Checkpoints: one portable ``.safetensors`` file per model, never unpickled.

Layout: the tensors are the model's ``state_dict`` (plus optional extra
tensors such as optimizer state, under ``__extra__/``); the safetensors
header's string metadata holds one key, ``"mtunet"``, whose value is a JSON
document with the model config, preprocessing, class names, training summary,
metrics, parent checkpoint, package version and a content hash of the
tensors.  Any safetensors reader can open the file; nothing in it can execute
code.

Writing is atomic: the file is written to a temporary name in the same
folder, flushed to disk, then ``os.replace``-d over the destination, so a
crash mid-write leaves the previous file intact.

Integrity: ``content_hash`` is a SHA-256 of the tensors (names, dtypes,
shapes, bytes); parents are recorded by it.  Since ``hash_version`` 2,
``metadata_hash`` is a SHA-256 of the canonical JSON of all other metadata,
``content_hash`` included, so it covers the metadata *and* the tensors.
Files without ``hash_version`` (written before) are checked by their tensor
hash only.  Neither hash is a signature: they detect damage and edits, not a
forger who recomputes them.

Untrusted files: the header is parsed and checked here (bounded sizes,
dtypes, offsets inside the file) before anything else; every metadata field
is type- and range-checked; the network the metadata describes is built on
PyTorch's ``meta`` device (no memory) and compared, tensor by tensor, with
the shapes and dtypes declared in the file before any real allocation; the
weights must be finite floating-point numbers.

This module imports torch only inside the functions that handle tensors, so
:func:`read_metadata` (and :func:`check_checkpoint_path`) can run on a GUI
thread without importing torch.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import re
import stat as _stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelConfig, Preprocessing
from .jsonutil import json_default

if TYPE_CHECKING:  # torch is imported inside the functions that need tensors (see the module docstring)
    import torch

FORMAT = "napari-mtunet-checkpoint"
FORMAT_VERSION = 1
#: 1 (or absent): ``content_hash`` covers the tensors only; 2: ``metadata_hash`` covers the metadata too.
HASH_VERSION = 2
META_KEY = "mtunet"
EXTRA_PREFIX = "__extra__/"
MAX_METADATA_BYTES = 16 * 1024 * 1024
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and the reason."""


def _package_version() -> str:
    from . import __version__

    return __version__


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (order-independent)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class CheckpointInfo:
    """Everything a checkpoint says about its model, validated."""

    path: Path | None
    model_config: ModelConfig
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.model_config.class_names)

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.metadata.get("training") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.metadata.get("metrics") or {})

    @property
    def postprocessing(self):
        """How outputs become masks (:class:`~napari_mtunet.config.Postprocessing`; the default for older files)."""
        return self.run.postprocessing

    @property
    def run(self):
        """The run configuration (:class:`~napari_mtunet.config.RunConfig`); migrated for format-1 files."""
        from .config import RunConfig

        return RunConfig.from_metadata(self.metadata)

    @property
    def parent(self) -> str | None:
        return self.metadata.get("parent")

    @property
    def content_hash(self) -> str:
        return str(self.metadata["content_hash"])

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "<in-memory model>"

    def describe(self) -> str:
        c = self.model_config
        return (
            f"{self.name}: {c.encoder_name} UNet, task={c.task}, classes={c.class_names}, "
            f"input {self.preprocessing.image_size}px, hash {self.short_hash}"
        )


def build_metadata(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import torch

    config: ModelConfig = model.config  # type: ignore[assignment]
    preprocessing: Preprocessing = model.preprocessing  # type: ignore[assignment]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": config.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(config.class_names),
        "training": training or {},
        "metrics": metrics or {},
        "parent": parent,
        "extra": extra_metadata or {},
        "run": run,
        "content_hash": content_hash(tensors),
    }
    return meta


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: str | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a :class:`~napari_mtunet.model.MultiTaskUNet`) atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"{path}: checkpoint files must end in {SUFFIX}")
    module = getattr(model, "module", model)  # unwrap DDP
    if not hasattr(module, "config") or not hasattr(module, "preprocessing"):
        raise CheckpointError("save_checkpoint needs a napari_mtunet MultiTaskUNet (built by build_model)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + k] = v.detach().cpu().contiguous()
    meta = build_metadata(
        module, tensors, training=training, metrics=metrics, parent=parent, extra_metadata=extra_metadata, run=run
    )
    try:
        meta_json = _seal(json.dumps(meta, allow_nan=False, default=json_default))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({exc})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        try:
            save_file(_dedupe_shared(tensors), tmp, metadata={META_KEY: meta_json})
        except Exception as exc:
            if isinstance(exc, OSError):
                raise
            # safetensors reports I/O failures (disk full, file too large) as its own error type
            raise CheckpointError(
                f"{path}: could not write the checkpoint ({exc}); is the disk full? "
                "The previous file at this path, if any, is unchanged."
            ) from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def metadata_hash(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every metadata field except ``metadata_hash`` itself.

    The metadata holds ``content_hash`` (the tensors' hash), so this one hash
    covers the metadata and the weights (``hash_version`` 2).
    """
    body = {k: v for k, v in meta.items() if k != "metadata_hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(b"napari-mtunet-metadata\0" + blob.encode("ascii")).hexdigest()


def _seal(meta_json: str) -> str:
    """Add ``hash_version`` and ``metadata_hash`` to serialised metadata (hashed as a reader will parse it)."""
    meta = json.loads(meta_json)
    meta["hash_version"] = HASH_VERSION
    meta["metadata_hash"] = metadata_hash(meta)
    return json.dumps(meta, allow_nan=False)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); best effort elsewhere."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; give each its own storage."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _sniff(path: Path) -> str | None:
    """Describe a file that is clearly not safetensors (pickles, zip archives)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        return "the file is empty"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (
            "it is a Python pickle (e.g. torch.save output); pickles can run arbitrary code when "
            "loaded and are refused"
        )
    if head[:2] == b"PK":
        return (
            "it is a zip archive (torch.save format, containing a pickle); pickles can run "
            "arbitrary code when loaded and are refused"
        )
    if len(head) < 8:
        return "the file is truncated (shorter than a safetensors header)"
    n = int.from_bytes(head, "little")
    size = path.stat().st_size
    if n <= 0 or n > min(size - 8, 100 * 1024 * 1024):
        return "its header is not a safetensors header (corrupt, truncated or another format)"
    return None


_FILE_KINDS = (
    (_stat.S_ISFIFO, "a FIFO (named pipe)"),
    (_stat.S_ISSOCK, "a socket"),
    (_stat.S_ISCHR, "a character device"),
    (_stat.S_ISBLK, "a block device"),
)


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a readable regular file; else a :class:`CheckpointError` saying what it is.

    Distinguishes a missing file, a folder, a FIFO/socket/device (never
    opened: reading a FIFO would block), a symbolic link loop, a broken link,
    a NUL byte in the path and a permission problem.  Torch-free.
    """
    try:
        p = Path(path)
    except TypeError:
        raise CheckpointError(f"{path!r}: a checkpoint path must be a string or path, got {type(path).__name__}") from None
    if "\0" in str(p):
        raise CheckpointError(f"{str(p)!r}: the checkpoint path contains a NUL byte; check how it was typed or generated")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise CheckpointError(
                f"{p}: is a broken symbolic link (it points to {os.readlink(p)!r}, which does not exist)"
            ) from None
        raise CheckpointError(f"{p}: no such checkpoint file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{p}: is a symbolic link loop (the link points back to itself); "
                                  "give the real .safetensors file") from None
        if exc.errno == errno.ENOTDIR:
            raise CheckpointError(f"{p}: no such checkpoint file (a part of the path is a file, not a folder)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CheckpointError(f"{p}: no permission to access the checkpoint") from None
        raise CheckpointError(f"{p}: cannot access the checkpoint ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. a path too long for the platform's API
        raise CheckpointError(f"{str(p)!r}: not a usable checkpoint path ({exc})") from None
    if _stat.S_ISDIR(st.st_mode):
        try:
            inside = sorted(q.name for q in p.iterdir() if q.suffix == SUFFIX and not q.name.startswith("."))[:5]
        except OSError:
            inside = []
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointError(
            f"{p}: is a folder, not a checkpoint file; give the {SUFFIX} file itself, e.g. a training run's "
            f"best{SUFFIX}{hint}"
        )
    if not _stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise CheckpointError(f"{p}: is {kind}, not a regular checkpoint file; it is not read")
    if not os.access(p, os.R_OK):
        raise CheckpointError(f"{p}: no permission to read the checkpoint")
    return p


#: safetensors dtypes and their sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
#: At most this many tensor values in one file (4 GiB of float32; real UNets hold 2-40 M).
MAX_PARAMETERS = 1_000_000_000
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the safetensors header declares it (nothing loaded)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _header(path: Path) -> tuple[dict[str, Any], dict[str, TensorSpec]]:
    """Parse and check the safetensors header: ``(string metadata, tensor specs)``; never reads tensor data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: not a napari-mtunet checkpoint: its header is not a safetensors "
                                      "header (corrupt, truncated or another format)")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors header (not valid JSON: {type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: cannot read safetensors header (not a JSON object)")
    strings = header.pop("__metadata__", None) or {}
    if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
        raise CheckpointError(f"{path}: cannot read safetensors header (__metadata__ must map names to strings)")
    data_len = size - 8 - n
    specs: dict[str, TensorSpec] = {}
    spans = []
    total = 0
    for name, entry in header.items():
        shown = name[:100]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: cannot read safetensors header (tensor {shown!r} is malformed)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: cannot read safetensors header (tensor {shown!r} has unknown dtype "
                                  f"{str(dtype)[:20]!r})")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(type(d) is int and 0 <= d < 2**40 for d in shape)):
            raise CheckpointError(f"{path}: cannot read safetensors header (tensor {shown!r} has an invalid shape)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{path}: cannot read safetensors header (tensor {shown!r} has invalid offsets)")
        spec = TensorSpec(name, dtype, tuple(shape))
        begin, end = offsets
        if not 0 <= begin <= end <= data_len or end - begin != spec.numel * DTYPE_SIZES[dtype]:
            raise CheckpointError(
                f"{path}: tensor {shown!r} lies outside the file or its size does not match its shape "
                "(the file is truncated or corrupt)"
            )
        total += spec.numel
        spans.append((begin, end, shown))
        specs[name] = spec
    spans.sort()
    for (b0, e0, a), (b1, _e1, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the file (corrupt or crafted)")
    if total > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path}: the file declares {total:,} tensor values, more than any real model "
            f"(limit {MAX_PARAMETERS:,}); refused"
        )
    return strings, specs


def read_metadata(path: str | os.PathLike, *, verify_hash: bool = True) -> dict[str, Any]:
    """Read and validate the JSON metadata of a checkpoint without loading tensors (and without torch).

    ``verify_hash``: for files with ``hash_version`` 2, check ``metadata_hash``
    (the metadata was not modified).  The tensors are checked by
    :func:`load_checkpoint`.
    """
    meta, _specs = _read_checked(path, verify_hash=verify_hash)
    return meta


def _read_checked(path: str | os.PathLike, *, verify_hash: bool) -> tuple[dict[str, Any], dict[str, TensorSpec]]:
    path = check_checkpoint_path(path)
    problem = _sniff(path)
    if problem:
        raise CheckpointError(f"{path}: not a napari-mtunet checkpoint: {problem}")
    strings, specs = _header(path)
    raw = strings.get(META_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not a napari-mtunet checkpoint (no '{META_KEY}' metadata)")
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: metadata is implausibly large ({len(raw)} bytes)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers, absurd nesting
        raise CheckpointError(f"{path}: metadata is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    meta = validate_metadata(meta, where=str(path))
    if verify_hash and meta.get("hash_version") == HASH_VERSION:
        try:
            expected = metadata_hash(meta)
        except ValueError:  # NaN/Infinity literals cannot be canonicalised: not what save_checkpoint wrote
            expected = None
        if expected != meta["metadata_hash"]:
            raise CheckpointError(
                f"{path}: metadata hash mismatch: the checkpoint's metadata was modified or damaged after it was "
                "saved; use an intact copy of the file (or re-save the model)"
            )
    return meta, specs


def validate_metadata(meta: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where}: format_version must be an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer napari-mtunet (checkpoint format {version}, package "
            f"{meta.get('package_version')}); this version ({_package_version()}) reads format "
            f"<= {FORMAT_VERSION}. Upgrade napari-mtunet."
        )
    expected_types = {
        "model": dict,
        "preprocessing": dict,
        "class_names": list,
        "training": dict,
        "metrics": dict,
        "extra": dict,
        "content_hash": str,
    }
    for key, typ in expected_types.items():
        if not isinstance(meta.get(key), typ):
            raise CheckpointError(f"{where}: metadata field {key!r} must be a {typ.__name__}")
    if meta.get("parent") is not None and not isinstance(meta["parent"], str):
        raise CheckpointError(f"{where}: metadata field 'parent' must be a string or null")
    if not all(isinstance(c, str) for c in meta["class_names"]):
        raise CheckpointError(f"{where}: class_names must be strings")
    if len(meta["class_names"]) > MAX_CLASSES or any(len(c) > MAX_NAME_CHARS for c in meta["class_names"]):
        raise CheckpointError(f"{where}: class_names: at most {MAX_CLASSES} names of <= {MAX_NAME_CHARS} characters")
    if not _HEX64.fullmatch(meta["content_hash"]):
        raise CheckpointError(f"{where}: content_hash must be 64 hexadecimal characters")
    _check_no_nul(meta, where)
    _check_hash_fields(meta, where)
    _check_training_section(meta["training"], where)
    _check_resume_record(meta["extra"], where)
    # Check types and sizes of the raw values *before* building config objects: an
    # untrusted file must not be able to make us allocate (num_classes=10**12 would
    # otherwise build a 10**12-entry class-name list) or raise stray exceptions.
    _check_fields(meta["model"], _MODEL_SCHEMA, where=f"{where}: invalid model configuration in metadata")
    _check_fields(meta["preprocessing"], _PREPROCESSING_SCHEMA, where=f"{where}: invalid model configuration in metadata")
    try:
        ModelConfig.from_dict(meta["model"])
        Preprocessing.from_dict(meta["preprocessing"])
        if meta.get("run") is not None:
            from .config import RunConfig

            RunConfig.from_dict(meta["run"])
    except (ValueError, TypeError, OverflowError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{where}: invalid model configuration in metadata ({exc})") from None
    return meta


_DAMAGED = "the file was damaged or edited after it was saved; use an intact copy of the checkpoint"


def _check_no_nul(meta: dict[str, Any], where: str) -> None:
    """No string (key or value) anywhere in the metadata may hold a NUL byte (they end up in paths)."""
    stack: list[tuple[str, Any]] = [("", meta)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            if "\0" in value:
                raise CheckpointError(f"{where}: metadata field {name!r} contains a NUL byte; {_DAMAGED}")
        elif isinstance(value, dict):
            for k, v in value.items():
                key = f"{name}.{k}" if name else str(k)
                if "\0" in str(k):
                    raise CheckpointError(f"{where}: metadata key {key[:100]!r} contains a NUL byte; {_DAMAGED}")
                stack.append((key[:200], v))
        elif isinstance(value, list):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))


def _check_hash_fields(meta: dict[str, Any], where: str) -> None:
    version = meta.get("hash_version", 1)
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{where}: metadata field 'hash_version' must be a positive integer; {_DAMAGED}")
    if version > HASH_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer napari-mtunet (hash version {version}; this version reads <= "
            f"{HASH_VERSION}). Upgrade napari-mtunet."
        )
    if version == HASH_VERSION and not (isinstance(meta.get("metadata_hash"), str)
                                        and _HEX64.fullmatch(meta["metadata_hash"])):
        raise CheckpointError(f"{where}: metadata field 'metadata_hash' must be 64 hexadecimal characters; {_DAMAGED}")


def _check_training_section(training: dict[str, Any], where: str) -> None:
    """``training.train_config`` / ``training.data_config`` as resume, fine-tune and evaluate read them.

    Fields this version does not know are ignored (as when migrating older
    files); known fields must have valid values.
    """
    import dataclasses

    from .config import DataConfig, TrainConfig

    for key, cls in (("train_config", TrainConfig), ("data_config", DataConfig)):
        value = training.get(key)
        if value is None:
            continue
        field_name = f"training.{key}"
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{where}: metadata field {field_name!r} must be a JSON object, got {type(value).__name__}; {_DAMAGED}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            cls.from_dict({k: v for k, v in value.items() if k in known})
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            detail = str(exc)[:300]
            raise CheckpointError(f"{where}: metadata field {field_name!r} is invalid ({detail}); {_DAMAGED}") from None
    for key in ("epoch", "best_epoch"):
        value = training.get(key)
        if value is not None and not (_is_int(value) and 0 <= value <= 10**7):
            raise CheckpointError(f"{where}: metadata field 'training.{key}' must be an epoch number; {_DAMAGED}")
    if training.get("history") is not None and not (
        isinstance(training["history"], list) and all(isinstance(h, dict) for h in training["history"])
    ):
        raise CheckpointError(f"{where}: metadata field 'training.history' must be a list of objects; {_DAMAGED}")


_RESUME_FIELDS: dict[str, tuple[Any, str]] = {
    "epoch": (lambda v: _is_int(v) and 0 <= v <= 10**7, "an epoch number"),
    "best_epoch": (lambda v: _is_int(v) and 0 <= v <= 10**7, "an epoch number"),
    "bad_epochs": (lambda v: _is_int(v) and 0 <= v <= 10**7, "a count of epochs"),
    "best_value": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of objects"),
    "optimizer": (
        lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list)
        and all(isinstance(g, dict) for g in v["param_groups"]) and isinstance(v.get("scalars", {}), dict),
        "the optimizer state (an object with 'param_groups' and 'scalars')",
    ),
}


def _check_resume_record(extra: dict[str, Any], where: str) -> None:
    """``extra.resume`` (what ``last.safetensors`` needs to continue a run) is complete and well typed."""
    if "resume" not in extra:
        return
    raw = extra["resume"]
    fix = ("the file was damaged or edited; resume from an intact last.safetensors, or start a new run "
           "(fine-tune from this checkpoint)")
    if not isinstance(raw, str):
        raise CheckpointError(f"{where}: metadata field 'extra.resume' must be a JSON string; {fix}")
    try:
        state = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{where}: metadata field 'extra.resume' is not valid JSON; {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: metadata field 'extra.resume' must hold a JSON object; {fix}")
    for key, (ok, expected) in _RESUME_FIELDS.items():
        if key not in state:
            raise CheckpointError(f"{where}: metadata field 'extra.resume' lacks {key!r} ({expected}); {fix}")
        if not ok(state[key]):
            raise CheckpointError(f"{where}: metadata field 'extra.resume.{key}' must be {expected}; {fix}")
    for key in ("scheduler", "scaler"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise CheckpointError(f"{where}: metadata field 'extra.resume.{key}' must be an object or null; {fix}")


#: Upper bounds on what a checkpoint may describe (far above any real model).
MAX_CLASSES = 10_000
MAX_SEG_CLASSES = 255
MAX_NAME_CHARS = 500
MAX_CHANNELS = 2048
#: The largest training size a checkpoint may declare (a resize-mode prediction allocates image_size**2 * 3 floats).
MAX_IMAGE_SIZE = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENCODER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_in(lo: int, hi: int):
    return lambda v: _is_int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]"


def _numbers(n: int, positive: bool = False):
    def ok(v: Any) -> bool:
        return (
            isinstance(v, list)
            and len(v) == n
            and all(_is_number(x) and (x > 0 if positive else True) for x in v)
        )

    return ok, f"a list of {n} finite {'positive ' if positive else ''}numbers"


_MODEL_SCHEMA: dict[str, tuple[Any, str]] = {
    "encoder_name": (lambda v: isinstance(v, str) and bool(_ENCODER_NAME.fullmatch(v)), "an encoder name ([A-Za-z0-9_.-], <= 100 characters)"),
    "encoder_weights": (lambda v: v is None or (isinstance(v, str) and len(v) <= 4096), "a string or null"),
    "in_channels": _int_in(3, 3),
    "num_classes": _int_in(1, MAX_CLASSES),
    "seg_classes": _int_in(1, MAX_SEG_CLASSES),
    "task": (lambda v: isinstance(v, str), "a string"),
    "skip_connections": (lambda v: isinstance(v, bool), "true or false"),
    "dropout": (_is_number, "a finite number"),
    "encoder_depth": _int_in(1, 5),
    "decoder_channels": (
        lambda v: isinstance(v, list) and 1 <= len(v) <= 5 and all(_is_int(c) and 1 <= c <= MAX_CHANNELS for c in v),
        f"a list of 1-5 integers in [1, {MAX_CHANNELS}]",
    ),
    "class_names": (
        lambda v: isinstance(v, list) and len(v) <= MAX_CLASSES and all(isinstance(c, str) and len(c) <= MAX_NAME_CHARS for c in v),
        f"a list of at most {MAX_CLASSES} strings",
    ),
}

_PREPROCESSING_SCHEMA: dict[str, tuple[Any, str]] = {
    "image_size": (
        lambda v: _is_int(v) and 32 <= v <= MAX_IMAGE_SIZE,
        f"an integer in [32, {MAX_IMAGE_SIZE}] (the model's input side in pixels; real models use 224-1024)",
    ),
    "resize": (lambda v: isinstance(v, bool), "true or false"),
    "mean": _numbers(3),
    "std": _numbers(3, positive=True),
}


def _check_fields(data: dict[str, Any], schema: dict[str, tuple[Any, str]], *, where: str) -> None:
    for key, value in data.items():
        if key not in schema:
            raise CheckpointError(f"{where} (unknown field {str(key)[:100]!r})")
        ok, expected = schema[key]
        if not ok(value):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise CheckpointError(f"{where} (field {key!r} must be {expected}, got {shown})")


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, verify_hash: bool = True
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the model stored in ``path``; returns ``(model in eval mode, info)``.

    Order of checks (each failure is a :class:`CheckpointError` naming the
    file): the path is a regular file; the header and metadata are valid
    (and, for hash version 2, unmodified); the network the metadata
    describes is built on the ``meta`` device (no memory) and must be of a
    sane size and match every tensor name, shape and dtype declared in the
    file -- all before any tensor is allocated; then the tensors are read,
    their hash checked, and every floating-point value must be finite.
    """
    from safetensors.torch import load_file

    from .model import build_model

    meta, specs = _read_checked(path, verify_hash=verify_hash)
    path = Path(path)
    config = ModelConfig.from_dict(meta["model"])
    config.encoder_weights = None  # weights come from the checkpoint, never downloaded again
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    _check_architecture(path, config, preprocessing, {k: v for k, v in specs.items() if not k.startswith(EXTRA_PREFIX)})
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    if verify_hash and content_hash(tensors) != meta["content_hash"]:
        raise CheckpointError(f"{path}: content hash mismatch: the file is corrupt or was modified")
    _check_values(path, tensors, preprocessing)
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    try:
        model = build_model(config, preprocessing)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot build the model it describes ({exc})") from None
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(device)
    info = CheckpointInfo(path=path, model_config=config, preprocessing=preprocessing, metadata=meta, extra_tensors=extra)
    return model, info


def _check_architecture(
    path: Path, config: ModelConfig, preprocessing: Preprocessing, specs: dict[str, TensorSpec]
) -> None:
    """Build the described network on the ``meta`` device and compare it with the file's declared tensors."""
    import torch

    from .model import build_model

    try:
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever the metadata says
            skeleton = build_model(config, preprocessing)
        own = {k: (tuple(v.shape), v.dtype.is_floating_point) for k, v in skeleton.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - unknown encoder names etc.
        raise CheckpointError(f"{path}: cannot build the model it describes ({type(exc).__name__}: {str(exc)[:200]})") from None
    n_params = sum(math.prod(shape) for shape, _ in own.values())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path}: the metadata describes a network of {n_params:,} values ({4 * n_params / 2**30:.1f} GiB), "
            f"more than any real model (limit {MAX_PARAMETERS:,}); refused before allocating it"
        )
    missing = sorted(set(own) - set(specs))
    unexpected = sorted(set(specs) - set(own))
    shapes = sorted(k for k in set(own) & set(specs) if own[k][0] != specs[k].shape)
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} tensor(s) e.g. {[u[:100] for u in unexpected[:3]]}")
        if shapes:
            k = shapes[0]
            detail.append(
                f"{len(shapes)} tensor(s) of the wrong shape e.g. {k}: file {specs[k].shape} vs model {own[k][0]}"
            )
        raise CheckpointError(f"{path}: weights do not fit the model in its metadata: " + "; ".join(detail))
    for k in sorted(own):
        wants_float = own[k][1]
        if wants_float != (specs[k].dtype in FLOAT_DTYPES):
            need = "floating-point numbers" if wants_float else "integers"
            raise CheckpointError(
                f"{path}: tensor {k!r} is stored as {specs[k].dtype} but the model needs {need}; "
                "the file was damaged or not written by napari-mtunet"
            )


def _check_values(path: Path, tensors: dict[str, torch.Tensor], preprocessing: Preprocessing) -> None:
    """Every floating-point tensor finite; the normalisation buffers equal the metadata's mean/std."""
    import torch

    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype.is_floating_point and t.numel():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                n_bad = int((~finite).sum())
                raise CheckpointError(
                    f"{path}: tensor {name!r} holds {n_bad} NaN/infinite value(s); the weights are unusable "
                    "(training diverged, or the file is damaged). Use an earlier checkpoint (e.g. "
                    "best.safetensors) or retrain"
                )
    if preprocessing.mean is not None:
        for key, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
            t = tensors.get(key)
            if t is None:
                continue
            want = torch.tensor(values, dtype=torch.float64)
            if t.numel() != 3 or not torch.allclose(t.double().reshape(-1), want, rtol=1e-5, atol=1e-6):
                raise CheckpointError(
                    f"{path}: the network's normalisation {key} {t.reshape(-1).tolist()[:3]} differs from the "
                    f"metadata's preprocessing.{key} {list(values)}; the file was damaged or edited"
                )


def info_for_model(model: torch.nn.Module) -> CheckpointInfo:
    """A CheckpointInfo describing an in-memory model (hash computed from its weights)."""
    module = getattr(model, "module", model)
    tensors = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    meta = build_metadata(module, tensors)
    return CheckpointInfo(path=None, model_config=module.config, preprocessing=module.preprocessing, metadata=meta)
