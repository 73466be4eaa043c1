"""How a fine-tuned checkpoint names its parent (the fine-tuning workflow is :mod:`napari_mtunet.workflows.finetune`)."""

from __future__ import annotations


def parent_record(info) -> str:
    """How a child checkpoint names its parent: ``"<sha256>:<run folder>/<file name>"`` (the folder tells
    which ``best.safetensors`` it was; the hash identifies it exactly)."""
    if info.path is None:
        return f"{info.content_hash}:<in-memory>"
    folder = info.path.parent.name
    return f"{info.content_hash}:{folder + '/' if folder else ''}{info.path.name}"
