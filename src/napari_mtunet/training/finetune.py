"""How a fine-tuned checkpoint names its parent (the fine-tuning workflow is :mod:`napari_mtunet.workflows.finetune`)."""

from __future__ import annotations


def parent_record(info) -> str:
    """How a child checkpoint names its parent: ``"<sha256>:<file name>"``."""
    name = info.path.name if info.path is not None else "<in-memory>"
    return f"{info.content_hash}:{name}"
