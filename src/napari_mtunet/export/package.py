"""Kept for the import path ``napari_mtunet.export.package``: opening packages is
:mod:`napari_mtunet.modelfiles.package` (reading model files lives below inference; export/ only writes)."""

from __future__ import annotations

from ..modelfiles.package import (  # noqa: F401
    CONFIG_KEY,
    MAX_CHECKPOINT_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_RDF_BYTES,
    RDF_NAMES,
    extract_checkpoint,
    is_bioimageio_package,
    open_model,
)
