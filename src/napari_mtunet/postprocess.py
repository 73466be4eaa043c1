"""Post-processing of predicted masks and test-time augmentation: one implementation for the Predictor,
evaluation, experiments and fine-tuning metrics (settings: :class:`napari_mtunet.config.Postprocessing`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def remove_small_lesions(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Drop connected components smaller than ``min_fraction`` of the image from a (N,) H x W boolean mask."""
    m = np.asarray(mask).astype(bool)
    if min_fraction <= 0 or not m.any():
        return m
    from scipy import ndimage as ndi

    single = m.ndim == 2
    stack = m[None] if single else m
    out = np.zeros_like(stack)
    for i, mm in enumerate(stack):
        lab, n = ndi.label(mm)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_fraction * mm.size
        keep[0] = False
        out[i] = keep[lab]
    return out[0] if single else out


def forward(model: Any, x: torch.Tensor, *, hflip_tta: bool = False):
    """The model's outputs for ``x``; with ``hflip_tta`` the logits of ``x`` and its mirror are averaged."""
    out = model(x)
    if not hflip_tta:
        return out
    flipped = model(x.flip(-1))
    seg = None if out.seg is None else (out.seg + flipped.seg.flip(-1)) / 2
    cls = None if out.cls is None else (out.cls + flipped.cls) / 2
    return type(out)(seg, cls)
