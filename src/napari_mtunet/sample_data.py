"""A built-in SYNTHETIC phantom dataset: ultrasound-like images with lesions.

Nothing here is real patient data.  Images imitate breast ultrasound (BUSI):
speckle over layered tissue; a lesion whose shape depends on the class:

- ``benign``: a smooth, well-circumscribed, hypoechoic ellipse;
- ``malignant``: an irregular, spiculated, darker lesion with posterior
  acoustic shadowing;
- ``normal``: no lesion (empty mask).

Generation is deterministic for a given seed and needs no downloads.  It is
the demo's training set and napari's sample data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

PHANTOM_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")


@dataclass
class Phantom:
    images: np.ndarray  # uint8 (n, H, W)
    masks: np.ndarray  # uint8 (n, H, W) in {0, 1}
    labels: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    yy = np.linspace(0, 1, size)[:, None]
    # Layered echogenicity (skin, fat, glandular tissue) with a gentle slope.
    bands = 0.55 + 0.15 * np.sin(2 * np.pi * (yy * rng.uniform(1.5, 3.0) + rng.uniform(0, 1)))
    bands = bands + 0.1 * ndi.gaussian_filter(rng.standard_normal((size, size)), size / 12)
    return np.clip(bands * np.ones((1, size)), 0.15, 1.0)


def _lesion_mask(rng: np.random.Generator, size: int, label: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    cy = rng.uniform(0.35, 0.6) * size
    cx = rng.uniform(0.3, 0.7) * size
    r0 = rng.uniform(0.12, 0.2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    if label == "benign":
        a = r0 * rng.uniform(1.1, 1.5)  # wider than tall ("parallel" orientation)
        b = r0 * rng.uniform(0.7, 0.9)
        phi = rng.uniform(-0.3, 0.3)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    else:
        radius = np.full_like(theta, r0)
        for k in range(2, 7):
            radius += r0 * rng.uniform(0.05, 0.16) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        n_spikes = int(rng.integers(5, 10))
        for ang in rng.uniform(-np.pi, np.pi, n_spikes):
            d = np.angle(np.exp(1j * (theta - ang)))
            radius += r0 * rng.uniform(0.3, 0.6) * np.exp(-(d**2) / (2 * 0.06**2))
        mask = np.hypot(xx - cx, yy - cy) <= radius
    return mask, (cy, cx, r0)


def make_phantom_image(rng: np.random.Generator, size: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic ultrasound-like image (uint8) and its binary lesion mask."""
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; use one of {PHANTOM_CLASSES}")
    echo = _tissue(rng, size)
    mask = np.zeros((size, size), bool)
    if label != "normal":
        mask, (cy, cx, r0) = _lesion_mask(rng, size, label)
        soft = ndi.gaussian_filter(mask.astype(np.float32), 1.0 if label == "benign" else 0.6)
        level = rng.uniform(0.12, 0.22) if label == "benign" else rng.uniform(0.05, 0.12)
        echo = echo * (1 - soft) + level * soft
        if label == "benign":  # posterior acoustic enhancement below cysts
            below = np.zeros_like(echo)
            cols = mask.any(axis=0)
            bottom = int(min(size - 1, cy + r0))
            below[bottom:, cols] = 0.15
            echo = echo + ndi.gaussian_filter(below, 3)
        else:  # posterior shadowing below malignant lesions
            below = np.zeros_like(echo)
            cols = mask.any(axis=0)
            bottom = int(min(size - 1, cy + r0 * 0.8))
            below[bottom:, cols] = 0.35
            echo = echo * (1 - ndi.gaussian_filter(below, 3))
    # Multiplicative speckle (Rayleigh), slightly correlated like a real PSF.
    speckle = rng.rayleigh(scale=0.8, size=(size, size)).astype(np.float32)
    speckle = ndi.gaussian_filter(speckle, 0.7)
    img = echo * speckle
    # Depth attenuation and a dark near-field band, as on real scanners.
    depth = np.linspace(1.0, 0.7, size)[:, None]
    img = img * depth
    img[: max(1, size // 40)] *= 0.3
    img = np.clip(img / np.percentile(img, 99.5), 0, 1)
    return (img * 255).astype(np.uint8), mask.astype(np.uint8)


def make_phantom(
    n: int = 60,
    size: int = 128,
    seed: int = 0,
    class_names: tuple[str, ...] = PHANTOM_CLASSES,
) -> Phantom:
    """``n`` images cycling through the classes, deterministic for ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    labels = []
    for i in range(n):
        label = class_names[i % len(class_names)]
        images[i], masks[i] = make_phantom_image(rng, size, label)
        labels.append(label)
    return Phantom(images=images, masks=masks, labels=labels, class_names=list(class_names))


def write_phantom_dataset(root: str | Path, n: int = 60, size: int = 128, seed: int = 0) -> Path:
    """Write the phantom in the generic layout (images/, masks/, labels.csv); refuses to overwrite."""
    from skimage.io import imsave

    root = Path(root)
    if (root / "labels.csv").exists() or (root / "images").exists():
        raise FileExistsError(f"{root}: already contains a dataset; choose an empty folder")
    ph = make_phantom(n=n, size=size, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, (img, msk, label) in enumerate(zip(ph.images, ph.masks, ph.labels)):
        name = f"phantom_{i:04d}"
        imsave(root / "images" / f"{name}.png", img, check_contrast=False)
        imsave(root / "masks" / f"{name}.png", (msk * 255).astype(np.uint8), check_contrast=False)
        rows.append(f"{name}.png,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------- napari sample data


def napari_phantom_sample() -> list[tuple]:
    """napari sample: a stack of phantom images + their lesion labels, classes in metadata."""
    from . import layer_meta

    ph = make_phantom(n=12, size=256, seed=7)
    meta = layer_meta.as_metadata(layer_meta.ground_truth(ph.labels, ph.class_names, kind="sample",
                                                          extra={"synthetic": True}))
    return [
        (ph.images, {"name": "phantom (synthetic)", "metadata": meta}, "image"),
        (ph.masks.astype(np.uint8), {"name": "phantom lesions", "metadata": meta}, "labels"),
    ]
