"""Checkpoints: one portable ``.safetensors`` file per model, never unpickled (the public import path).

Layout: the tensors are the model's ``state_dict`` (plus optional extra
tensors such as optimizer state, under ``__extra__/``); the safetensors
header's string metadata holds one key, ``"mtunet"``, whose value is a JSON
document with the model config, preprocessing, class names, the whole run
config, training summary, metrics, parent checkpoint, package version and
the hashes.  Any safetensors reader can open the file; nothing in it can
execute code.

The implementation lives in :mod:`napari_mtunet.modelfiles`, one job per module:

- :mod:`~napari_mtunet.modelfiles.hashing`: ``content_hash`` (tensors) and ``metadata_hash`` (metadata);
- :mod:`~napari_mtunet.modelfiles.sniff`: what a path is (regular file, not a pickle or zip), opened once;
- :mod:`~napari_mtunet.modelfiles.safetensors_format`: the header parser and the tensor reader (one handle);
- :mod:`~napari_mtunet.modelfiles.schema`: the metadata's file-format fields; every configuration value
  is checked by the config dataclasses themselves (one schema, the limits of :mod:`napari_mtunet.config`);
- :mod:`~napari_mtunet.modelfiles.checkpoint_save` / :mod:`~napari_mtunet.modelfiles.checkpoint_load`.

Torch is imported only inside the functions that handle tensors, so
:func:`read_metadata` and :func:`check_checkpoint_path` run on a GUI thread
without importing torch.
"""

from __future__ import annotations

from .config import MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_NAME_CHARS  # noqa: F401
from .modelfiles.checkpoint_load import (
    CheckpointInfo,
    check_architecture,
    check_values,
    info_for_model,
    load_checkpoint,
    read_metadata,
)
from .modelfiles.checkpoint_save import EXTRA_PREFIX, build_metadata, save_checkpoint
from .modelfiles.errors import CheckpointError, PackageError
from .modelfiles.hashing import HASH_VERSION, content_hash, metadata_hash
from .modelfiles.safetensors_format import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    MAX_PARAMETERS,
    TensorSpec,
)
from .modelfiles.schema import FORMAT, FORMAT_VERSION, MAX_METADATA_BYTES, META_KEY, validate_metadata
from .modelfiles.sniff import SUFFIX, check_checkpoint_path

__all__ = [
    "DTYPE_SIZES",
    "EXTRA_PREFIX",
    "FLOAT_DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "HASH_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_PARAMETERS",
    "META_KEY",
    "SUFFIX",
    "CheckpointError",
    "CheckpointInfo",
    "PackageError",
    "TensorSpec",
    "build_metadata",
    "check_architecture",
    "check_checkpoint_path",
    "check_values",
    "content_hash",
    "info_for_model",
    "load_checkpoint",
    "metadata_hash",
    "read_metadata",
    "save_checkpoint",
    "validate_metadata",
]
