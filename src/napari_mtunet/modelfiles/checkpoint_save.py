"""Writing a checkpoint: the model's tensors and its JSON metadata in one ``.safetensors`` file, atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, Preprocessing
from ..jsonutil import json_default
from ..paths import atomic_path
from .errors import CheckpointError
from .hashing import content_hash, seal
from .schema import FORMAT, FORMAT_VERSION, META_KEY, _package_version
from .sniff import SUFFIX

if TYPE_CHECKING:
    import torch

EXTRA_PREFIX = "__extra__/"


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
    """The metadata document of ``model`` (a MultiTaskUNet) whose tensors are ``tensors`` (not yet sealed)."""
    import torch

    config: ModelConfig = model.config  # type: ignore[assignment]
    preprocessing: Preprocessing = model.preprocessing  # type: ignore[assignment]
    return {
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
    from safetensors import torch as st

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
        meta_json = seal(json.dumps(meta, allow_nan=False, default=json_default))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({exc})") from None

    with atomic_path(path) as tmp:  # temporary file, fsync, umask's mode, rename
        try:
            st.save_file(_dedupe_shared(tensors), str(tmp), metadata={META_KEY: meta_json})
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors reports I/O failures as its own error type
            raise CheckpointError(
                f"{path}: could not write the checkpoint ({exc}); is the disk full? "
                "The previous file at this path, if any, is unchanged."
            ) from None
    return path


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
