"""Joint image + mask transforms with ``torchvision.transforms.v2``.

The image is a :class:`tv_tensors.Image` ``(3, H, W)`` (uint8 or float) and
the mask a :class:`tv_tensors.Mask` ``(1, H, W)`` uint8 in ``{0, 1}``;
geometric transforms are drawn once and applied to both (masks use nearest
interpolation, so they stay binary).  Output: image ``float32 (3, S, S)`` in
``[0, 1]`` (not normalised: the model applies its own mean/std buffers), mask
``uint8 (1, S, S)`` in ``{0, 1}``.

Augmentation (the paper's set, from :class:`~napari_mtunet.config.AugmentConfig`):
horizontal/vertical flips (p = 0.5 each) and one random affine warp combining
rotation (±``rotation_degrees``) and x-shear (±``shear_degrees``) — a single
warp interpolates the image once instead of twice.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from napari_mtunet.config import AugmentConfig, Preprocessing


class JointTransform:
    """Callable ``(image, mask | None) -> (image float32 (3,S,S), mask uint8 (1,S,S) | None)``."""

    def __init__(self, preprocessing: Preprocessing, augment: AugmentConfig | None = None, train: bool = False):
        self.preprocessing = preprocessing
        self.augment = augment
        self.train = bool(train)
        s = preprocessing.image_size
        ops: list = []
        if preprocessing.resize:
            ops.append(v2.Resize((s, s), antialias=True))
        elif train:
            ops.append(v2.RandomCrop((s, s), pad_if_needed=True))
        else:
            ops.append(v2.CenterCrop((s, s)))
        if train and augment is not None and augment.enabled:
            if augment.hflip:
                ops.append(v2.RandomHorizontalFlip(0.5))
            if augment.vflip:
                ops.append(v2.RandomVerticalFlip(0.5))
            if augment.rotation_degrees > 0 or augment.shear_degrees > 0:
                ops.append(
                    v2.RandomAffine(
                        degrees=float(augment.rotation_degrees),
                        shear=float(augment.shear_degrees) if augment.shear_degrees > 0 else None,
                        interpolation=v2.InterpolationMode.BILINEAR,
                        fill=0,
                    )
                )
        ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
        self.pipeline = v2.Compose(ops)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        img = tv_tensors.Image(image)
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"expected an image tensor (3, H, W), got {tuple(img.shape)}")
        if mask is None:
            out = self.pipeline(img)
            return out.as_subclass(torch.Tensor).clamp_(0.0, 1.0), None
        m = tv_tensors.Mask(mask if mask.ndim == 3 else mask[None])
        if m.shape[-2:] != img.shape[-2:]:
            raise ValueError(f"mask size {tuple(m.shape[-2:])} differs from image size {tuple(img.shape[-2:])}")
        out_img, out_mask = self.pipeline(img, m)
        return out_img.as_subclass(torch.Tensor).clamp_(0.0, 1.0), out_mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"JointTransform(train={self.train}, {self.pipeline})"


def build_transforms(
    preprocessing: Preprocessing, augment: AugmentConfig | None = None, train: bool = False
) -> JointTransform:
    """Training (``train=True``: resize/crop + augmentation) or evaluation transforms."""
    return JointTransform(preprocessing, augment, train)
