"""A tiny in-memory Dataset of item dicts (tests, notebooks, napari layers already in memory)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """Items like the data package's: ``image`` (3,S,S) float in [0,1], ``mask`` (1,S,S),
    ``label`` (-1 none), ``has_mask``, ``has_label``, ``index``.

    ``images``: float (N, S, S, 3) / (N, S, S) in [0, 1] or uint8; ``masks``: (N, S, S) or None
    entries; ``labels``: int or None entries.
    """

    def __init__(self, images, masks=None, labels: Sequence[int | None] | None = None):
        imgs = np.asarray(images)
        if imgs.dtype == np.uint8:
            imgs = imgs.astype(np.float32) / 255.0
        if imgs.ndim == 3:
            imgs = np.repeat(imgs[..., None], 3, axis=-1)
        self.images = torch.as_tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
        n, _, h, w = self.images.shape
        masks = [None] * n if masks is None else list(masks)
        labels = [None] * n if labels is None else list(labels)
        if len(masks) != n or len(labels) != n:
            raise ValueError("images, masks and labels must have the same length")
        self.has_mask = [m is not None for m in masks]
        self.masks = torch.stack(
            [torch.as_tensor(np.asarray(m) > 0, dtype=torch.float32)[None] if m is not None else torch.zeros(1, h, w) for m in masks]
        )
        self.labels = [-1 if v is None else int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "has_mask": torch.tensor(self.has_mask[i]),
            "has_label": torch.tensor(self.labels[i] >= 0),
            "index": torch.tensor(i),
        }


def blobs_dataset(n: int = 12, size: int = 64, num_classes: int = 2, seed: int = 0) -> ArrayDataset:
    """Learnable toy data: class 1 images contain a bright disc (the mask), class 0 are blank noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, labels = [], [], []
    for i in range(n):
        label = i % num_classes
        img = rng.normal(0.3, 0.05, (size, size)).clip(0, 1)
        mask = np.zeros((size, size), np.uint8)
        if label > 0:
            r = size // 8 * label
            cy, cx = rng.integers(r, size - r, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            img = np.where(mask > 0, 0.9, img)
        images.append(img.astype(np.float32))
        masks.append(mask)
        labels.append(label)
    return ArrayDataset(np.stack(images), masks, labels)


class EchoNet(torch.nn.Module):
    """Test-only network: segmentation logit = logit(red channel), so sigmoid returns the input;
    constant class logits.  It has the attributes the Predictor reads; it is never shipped."""

    def __init__(self):
        from napari_mtunet.config import ModelConfig, Preprocessing

        super().__init__()
        self.config = ModelConfig(encoder_weights=None, num_classes=2, encoder_depth=5)
        self.preprocessing = Preprocessing(image_size=64, resize=False)
        self.output_stride = 32
        self.decoder = torch.nn.Identity()
        self.classification_head = torch.nn.Identity()
        self.bias = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x):
        from napari_mtunet.model import ModelOutput

        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0  # the Predictor pads to the output stride
        p = x[:, :1].float().clamp(1e-6, 1 - 1e-6)
        return ModelOutput(seg=torch.log(p) - torch.log1p(-p), cls=self.bias.expand(x.shape[0], 2))
