"""What a checkpoint's metadata must hold: the file-format fields here, every configuration value by the
config dataclasses' own validation (:mod:`napari_mtunet.config`: one schema, one set of limits).

The metadata may come from an untrusted file.  The order of checks keeps
it from making us allocate or raise stray exceptions: the JSON is bounded
in size before it is parsed; the file-format fields (format, versions,
hashes, section types) are checked here; the configuration parts go through
``from_dict`` of their dataclass, which checks every value's type before
its ``__post_init__`` checks ranges (``num_classes`` is bounded before a
class-name list is built); fields stated twice must agree.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ..config import DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
from .errors import CheckpointError
from .hashing import HASH_VERSION

FORMAT = "napari-mtunet-checkpoint"
FORMAT_VERSION = 1
META_KEY = "mtunet"
MAX_METADATA_BYTES = 16 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DAMAGED = "the file was damaged or edited after it was saved; use an intact copy of the checkpoint"
#: Model-config fields that may differ between ``model`` and ``run.model``: the weights a model
#: was *initialised* from (a loaded model's is None: its weights are the checkpoint's).
_MAY_DIFFER = frozenset({"encoder_weights"})


def _package_version() -> str:
    from .. import __version__

    return __version__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_metadata(raw: str | None, where: str) -> dict[str, Any]:
    """The ``mtunet`` string of a safetensors header (or an ONNX file), parsed and validated."""
    if raw is None:
        raise CheckpointError(f"{where}: a safetensors file, but not a napari-mtunet checkpoint (no '{META_KEY}' metadata)")
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{where}: metadata is implausibly large ({len(raw)} bytes)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers, absurd nesting
        raise CheckpointError(f"{where}: metadata is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    return validate_metadata(meta, where=where)


def validate_metadata(meta: Any, *, where: str) -> dict[str, Any]:
    """Check a decoded metadata document; returns it unchanged or raises :class:`CheckpointError`."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: metadata format is {str(meta.get('format'))[:100]!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not _is_int(version):
        raise CheckpointError(f"{where}: format_version must be an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer napari-mtunet (checkpoint format {version}, package "
            f"{str(meta.get('package_version'))[:40]}); this version ({_package_version()}) reads format "
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
    if not _HEX64.fullmatch(meta["content_hash"]):
        raise CheckpointError(f"{where}: content_hash must be 64 hexadecimal characters")
    _check_no_nul(meta, where)
    _check_hash_fields(meta, where)
    _check_training_section(meta["training"], where)
    _check_resume_record(meta["extra"], where)
    model, preprocessing = _check_config(meta, where)
    _check_agreement(meta, model, preprocessing, where)
    return meta


def _check_config(meta: dict[str, Any], where: str) -> tuple[ModelConfig, Preprocessing]:
    """Every configuration value, checked by the config dataclasses themselves (types first, then ranges)."""
    try:
        model = ModelConfig.from_dict(meta["model"])
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        if meta.get("run") is not None:
            RunConfig.from_dict(meta["run"])
    except (ValueError, TypeError, OverflowError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{where}: invalid model configuration in metadata ({str(exc)[:400]})") from None
    return model, preprocessing


def _check_agreement(meta: dict[str, Any], model: ModelConfig, preprocessing: Preprocessing, where: str) -> None:
    """Fields stated twice say the same: ``class_names`` and ``model.class_names``; ``run`` and ``model``/``preprocessing``."""
    names = meta["class_names"]
    if names != list(model.class_names):
        raise CheckpointError(
            f"{where}: the metadata's class_names {_short(names)} differ from its model.class_names "
            f"{_short(model.class_names)}; which one the model was trained with cannot be told: {_DAMAGED}"
        )
    run = meta.get("run")
    if run is None:
        return
    run_cfg = RunConfig.from_dict(run)
    mine, theirs = model.to_dict(), run_cfg.model.to_dict()
    differ = sorted(k for k in mine if k not in _MAY_DIFFER and mine[k] != theirs.get(k))
    pre, run_pre = preprocessing.to_dict(), run_cfg.preprocessing.to_dict()
    differ += [f"preprocessing.{k}" for k in sorted(pre) if run_pre.get(k) is not None and pre[k] != run_pre[k]]
    if differ:
        raise CheckpointError(
            f"{where}: the metadata's run configuration disagrees with its model on {', '.join(differ[:5])}; "
            f"{_DAMAGED}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


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
