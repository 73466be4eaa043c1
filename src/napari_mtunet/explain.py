"""Grad-CAM on the classification head: where the encoder looked when it chose a class.

``grad_cam(model, images)`` returns one heat map per image in ``[0, 1]`` at
the input size.  The target layer is configurable: a module, or a dotted
name from ``model.named_modules()`` (e.g. ``"encoder.features.14"``);
the default is the encoder's last stage (its deepest feature map, the one
the classification head pools).  For a layer whose output is a list/tuple
(the smp encoder itself), the last element is used.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import IMAGE_CHANNELS


class GradCAMError(ValueError):
    pass


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    if layer is None:
        return model.encoder
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        near = [n for n in modules if n.startswith(layer.rsplit(".", 1)[0])][:8]
        raise GradCAMError(f"no layer named {layer!r} in the model; e.g. {near or list(modules)[:8]}")
    return modules[layer]


def grad_cam(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    target_class: int | Sequence[int] | None = None,
    target_layer: str | nn.Module | None = None,
) -> np.ndarray:
    """Grad-CAM heat maps ``float32 (B, H, W)`` in ``[0, 1]`` for a batch ``(B, IMAGE_CHANNELS, H, W)`` in [0, 1]
    (an interactive model may also get its guidance channels after the image's).

    ``target_class``: one class for all images, one per image, or None for
    each image's predicted class.  Needs a model with a classification head
    (task ``both`` or ``cls``).
    """
    model = getattr(model, "module", model)
    if getattr(model, "classification_head", None) is None:
        raise GradCAMError("Grad-CAM needs a classification head (model task 'both' or 'cls')")
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    accepted = {IMAGE_CHANNELS, int(getattr(getattr(model, "config", None), "input_channels", IMAGE_CHANNELS))}
    if x.ndim != 4 or x.shape[1] not in accepted:
        raise GradCAMError(f"expected images of shape (B, {IMAGE_CHANNELS}, H, W), got {tuple(x.shape)}")
    device = next(model.parameters()).device
    x = x.to(device).detach().clone()
    layer = _resolve_layer(model, target_layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inp, out):
        act = out[-1] if isinstance(out, (list, tuple)) else out
        act.retain_grad()
        store["act"] = act

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # Only the encoder + head are needed; skip the decoder.
            feats = model.encoder(model.encoder_input(x.requires_grad_(True)))
            logits = model.classification_head(feats[-1])
            if "act" not in store:
                raise GradCAMError("the target layer was not used by the classification path")
            if target_class is None:
                target = logits.argmax(1)
            elif isinstance(target_class, int):
                target = torch.full((len(x),), int(target_class), device=device, dtype=torch.long)
            else:
                target = torch.as_tensor(list(target_class), device=device, dtype=torch.long)
            if target.min() < 0 or target.max() >= logits.shape[1]:
                raise GradCAMError(f"target class out of range 0..{logits.shape[1] - 1}")
            score = logits.gather(1, target[:, None]).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
        act = store["act"]
        grad = act.grad
        if grad is None or act.ndim != 4:
            raise GradCAMError("the target layer must produce a (B, C, h, w) feature map")
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.reshape(len(cam), -1)
        lo = flat.min(1).values[:, None, None]
        hi = flat.max(1).values[:, None, None]
        cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
        return cam.detach().cpu().numpy().astype(np.float32)
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
