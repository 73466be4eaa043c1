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


def consistent_class_probabilities(probabilities: np.ndarray, has_lesion: np.ndarray | bool,
                                   no_lesion_index: int) -> np.ndarray:
    """Make the class agree with the mask: ``(N, C)`` (or ``(C,)``) probabilities restricted to the classes
    consistent with each image's final mask and renormalised.

    No lesion in the mask: all probability goes to ``no_lesion_index``.  A lesion: that class gets 0 and
    the others keep their proportions (equal shares if the classifier gave them nothing).
    """
    p = np.array(probabilities, dtype=np.float32, copy=True)
    single = p.ndim == 1
    p2 = p[None] if single else p
    lesion = np.atleast_1d(np.asarray(has_lesion, dtype=bool))
    c = int(no_lesion_index)
    p2[~lesion] = 0.0
    p2[~lesion, c] = 1.0
    rest = p2[lesion]
    rest[:, c] = 0.0
    total = rest.sum(axis=1, keepdims=True)
    others = np.ones(p2.shape[1], dtype=np.float32)
    others[c] = 0.0
    rest = np.where(total > 0, rest / np.where(total > 0, total, 1.0), others / max(1.0, others.sum()))
    p2[lesion] = rest
    return p2[0] if single else p2


def no_lesion_index(postprocessing: Any, class_names: list[str] | None) -> int | None:
    """The index of ``postprocessing.no_lesion_class`` among ``class_names`` (None: rule off)."""
    name = getattr(postprocessing, "no_lesion_class", None)
    if not name or not class_names or name not in class_names:
        return None
    return list(class_names).index(name)


def describe_postprocessing(pp: Any) -> str:
    """One line saying what the post-processing does ("" when it does nothing)."""
    if pp is None:
        return ""
    parts = []
    if pp.min_lesion_fraction > 0:
        parts.append(f"lesions smaller than {pp.min_lesion_fraction:.2%} of the image removed")
    if pp.hflip_tta:
        parts.append("left-right test-time augmentation")
    if getattr(pp, "no_lesion_class", None):
        parts.append(f"class '{pp.no_lesion_class}' exactly when no lesion is found")
    return ", ".join(parts)


def forward(model: Any, x: torch.Tensor, *, hflip_tta: bool = False):
    """The model's outputs for ``x``; with ``hflip_tta`` the logits of ``x`` and its mirror are averaged."""
    out = model(x)
    if not hflip_tta:
        return out
    flipped = model(x.flip(-1))
    seg = None if out.seg is None else (out.seg + flipped.seg.flip(-1)) / 2
    cls = None if out.cls is None else (out.cls + flipped.cls) / 2
    return type(out)(seg, cls)
