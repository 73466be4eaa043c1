"""Joint transforms: the mask follows the image exactly; output types and ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtunet.config import AugmentConfig, Preprocessing
from napari_mtunet.data import build_transforms


def derived_pair(h=80, w=96, seed=0):
    """An image that *is* its mask (255 inside, 0 outside), plus the mask."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        m[y : y + rng.integers(8, 20), x : x + rng.integers(8, 20)] = 1
    img = torch.from_numpy(np.stack([m * 255] * 3)).to(torch.uint8)
    return img, torch.from_numpy(m)[None]


@pytest.mark.parametrize("seed", range(6))
def test_mask_follows_image_under_augmentation(seed):
    torch.manual_seed(seed)
    aug = AugmentConfig(rotation_degrees=30, shear_degrees=15, hflip=True, vflip=True)
    tf = build_transforms(Preprocessing(image_size=64), aug, train=True)
    img, mask = derived_pair(seed=seed)
    out_img, out_mask = tf(img, mask)
    assert out_img.dtype == torch.float32 and out_img.shape == (3, 64, 64)
    assert out_mask.dtype == torch.uint8 and out_mask.shape == (1, 64, 64)
    assert set(out_mask.unique().tolist()) <= {0, 1}
    assert 0.0 <= out_img.min() and out_img.max() <= 1.0
    # where the (bilinear) image is clearly in/out, the (nearest) mask agrees
    inside = out_img[0] > 0.9
    outside = out_img[0] < 0.1
    m = out_mask[0].bool()
    assert m[inside].float().mean() > 0.97
    assert (~m[outside]).float().mean() > 0.97
    agree = ((out_img[0] > 0.5) == m).float().mean()
    assert agree > 0.97


def test_flips_alone_are_exact():
    torch.manual_seed(0)
    aug = AugmentConfig(rotation_degrees=0, shear_degrees=0, hflip=True, vflip=True)
    tf = build_transforms(Preprocessing(image_size=64), aug, train=True)
    img, mask = derived_pair(64, 64, seed=3)
    for _ in range(8):
        out_img, out_mask = tf(img, mask)
        assert torch.equal((out_img[0] > 0.5).to(torch.uint8), out_mask[0])


def test_eval_is_deterministic_resize_keeps_mask_binary_and_no_normalisation():
    tf = build_transforms(Preprocessing(image_size=32), AugmentConfig(), train=False)
    img, mask = derived_pair()
    a, ma = tf(img, mask)
    b, mb = tf(img, mask)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert set(ma.unique().tolist()) <= {0, 1}
    assert a.max() == pytest.approx(1.0) and a.min() == pytest.approx(0.0)  # [0, 1], not mean/std normalised
    out, none = tf(img, None)
    assert none is None and out.shape == (3, 32, 32)


def test_native_resolution_crops_and_pads():
    pre = Preprocessing(image_size=32, resize=False)
    tf = build_transforms(pre, None, train=True)
    img, mask = derived_pair(24, 50)
    out, m = tf(img, mask)
    assert out.shape == (3, 32, 32) and m.shape == (1, 32, 32)
    ev = build_transforms(pre, None, train=False)
    out, m = ev(img, mask)
    assert out.shape == (3, 32, 32)


def test_shape_errors():
    tf = build_transforms(Preprocessing(image_size=32))
    with pytest.raises(ValueError, match="expected an image tensor"):
        tf(torch.zeros(4, 10, 10, dtype=torch.uint8), None)
    with pytest.raises(ValueError, match="differs"):
        tf(torch.zeros(3, 10, 10, dtype=torch.uint8), torch.zeros(1, 9, 10, dtype=torch.uint8))
