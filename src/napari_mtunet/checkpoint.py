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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ModelConfig, Preprocessing

FORMAT = "napari-mtunet-checkpoint"
FORMAT_VERSION = 1
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
        meta_json = json.dumps(meta, allow_nan=False, default=_json_default)
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


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


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


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the JSON metadata of a checkpoint without loading tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    problem = _sniff(path)
    if problem:
        raise CheckpointError(f"{path}: not a napari-mtunet checkpoint: {problem}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors header ({exc})") from None
    raw = header.get(META_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not a napari-mtunet checkpoint (no '{META_KEY}' metadata)")
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: metadata is implausibly large ({len(raw)} bytes)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers, absurd nesting
        raise CheckpointError(f"{path}: metadata is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    return validate_metadata(meta, where=str(path))


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


#: Upper bounds on what a checkpoint may describe (far above any real model).
MAX_CLASSES = 10_000
MAX_SEG_CLASSES = 255
MAX_NAME_CHARS = 500
MAX_CHANNELS = 8192
MAX_IMAGE_SIZE = 16384
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
    "image_size": _int_in(32, MAX_IMAGE_SIZE),
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
    """Rebuild the model stored in ``path``; returns ``(model in eval mode, info)``."""
    from safetensors.torch import load_file

    from .model import build_model

    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    if verify_hash and content_hash(tensors) != meta["content_hash"]:
        raise CheckpointError(f"{path}: content hash mismatch: the file is corrupt or was modified")
    config = ModelConfig.from_dict(meta["model"])
    config.encoder_weights = None  # weights come from the checkpoint, never downloaded again
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    try:
        model = build_model(config, preprocessing)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot build the model it describes ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} tensor(s) e.g. {unexpected[:3]}")
        if shapes:
            k = sorted(shapes)[0]
            detail.append(
                f"{len(shapes)} tensor(s) of the wrong shape e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)}"
            )
        raise CheckpointError(f"{path}: weights do not fit the model in its metadata: " + "; ".join(detail))
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(device)
    info = CheckpointInfo(path=path, model_config=config, preprocessing=preprocessing, metadata=meta, extra_tensors=extra)
    return model, info


def info_for_model(model: torch.nn.Module) -> CheckpointInfo:
    """A CheckpointInfo describing an in-memory model (hash computed from its weights)."""
    module = getattr(model, "module", model)
    tensors = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    meta = build_metadata(module, tensors)
    return CheckpointInfo(path=None, model_config=module.config, preprocessing=module.preprocessing, metadata=meta)
