"""The network as bioimage.io packages exported by napari-mtunet describe it.

``rdf.yaml`` names :class:`BioimageioMTUNet` (``import_from:
napari_mtunet.export.bioimageio_arch``) with the checkpoint's model config
and preprocessing as keyword arguments; bioimageio.core builds it and loads
the package's ``pytorch_state_dict`` weights into it.  Its state dict is the
checkpoint's (same keys), and its forward returns *probabilities*:

- ``mask_probability`` ``(B, K, H, W)``: sigmoid (K = 1) or softmax over K;
- ``class_probabilities`` ``(B, C)``: softmax;

in that order, each only when the task produces it.  The input is float RGB
in ``[0, 1]`` (the package's preprocessing scales 8-bit images by 1/255);
the mean/std normalisation is the model's own.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig, Preprocessing
from ..model import MultiTaskUNet


class BioimageioMTUNet(MultiTaskUNet):
    """A :class:`~napari_mtunet.model.MultiTaskUNet` whose forward returns a tuple of probabilities."""

    def __init__(self, model: dict[str, Any], preprocessing: dict[str, Any]):
        config = ModelConfig.from_dict({**model, "encoder_weights": None})  # weights come from the package
        super().__init__(config, Preprocessing.from_dict(preprocessing))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = super().forward(x)  # an interactive model gets zero guidance: its automatic mode
        return tuple(t for t in (out.segmentation_probabilities(), out.class_probabilities()) if t is not None)
