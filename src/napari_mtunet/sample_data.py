"""A built-in SYNTHETIC phantom dataset: ultrasound-like images with lesions.

Nothing here is real patient data.  Images imitate breast ultrasound (BUSI):
speckle over layered tissue; a lesion whose look depends on the class, with
the textbook signs that tell benign from malignant masses on ultrasound,
each strong enough to survive 64-pixel images:

- ``benign``: a smooth, well-circumscribed ellipse, wider than tall
  ("parallel" orientation), moderately hypoechoic, with a thin bright
  capsule and posterior acoustic enhancement (brighter below);
- ``malignant``: an irregular, spiculated, very dark lesion, taller than
  wide, with posterior acoustic shadowing (dark below);
- ``normal``: no lesion (empty mask).

Several independent cues (orientation, margin, echogenicity, what lies
below) make the classes learnable from a few dozen images, so the demo shows
a model that works; the speckle, tissue bands and random sizes and places
keep it from being trivial.  Generation is deterministic for a given seed
and needs no downloads.  It is the demo's training set and napari's sample
data.
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
    cy = rng.uniform(0.35, 0.55) * size
    cx = rng.uniform(0.3, 0.7) * size
    r0 = rng.uniform(0.13, 0.2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if label == "benign":
        a = r0 * rng.uniform(1.25, 1.6)  # wider than tall ("parallel" orientation)
        b = r0 * rng.uniform(0.65, 0.8)
        phi = rng.uniform(-0.25, 0.25)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    else:  # taller than wide, irregular and spiculated
        sx, sy = rng.uniform(0.75, 0.9), rng.uniform(1.15, 1.35)
        dx, dy = (xx - cx) / sx, (yy - cy) / sy
        theta = np.arctan2(dy, dx)
        radius = np.full_like(theta, r0)
        for k in range(2, 6):
            radius += r0 * rng.uniform(0.08, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        n_spikes = int(rng.integers(5, 9))
        for ang in rng.uniform(-np.pi, np.pi, n_spikes):
            d = np.angle(np.exp(1j * (theta - ang)))
            radius += r0 * rng.uniform(0.35, 0.65) * np.exp(-(d**2) / (2 * 0.13**2))
        mask = np.hypot(dx, dy) <= radius
    return mask, (cy, cx, r0)


def make_phantom_image(rng: np.random.Generator, size: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic ultrasound-like image (uint8) and its binary lesion mask."""
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; use one of {PHANTOM_CLASSES}")
    echo = _tissue(rng, size)
    mask = np.zeros((size, size), bool)
    if label != "normal":
        mask, (cy, cx, r0) = _lesion_mask(rng, size, label)
        soft = ndi.gaussian_filter(mask.astype(np.float32), 0.8 if label == "benign" else 0.5)
        level = rng.uniform(0.22, 0.32) if label == "benign" else rng.uniform(0.03, 0.07)
        echo = echo * (1 - soft) + level * soft
        rows = np.nonzero(mask.any(axis=1))[0]
        cols = mask.any(axis=0)
        bottom = int(rows.max()) + 1 if rows.size else int(cy + r0)
        below = np.zeros_like(echo)
        below[min(size - 1, bottom):, cols] = 1.0
        below = ndi.gaussian_filter(below, max(1.0, size / 40))
        if label == "benign":
            # a thin bright capsule around the cyst, and posterior acoustic enhancement below it
            edge = ndi.binary_dilation(mask, iterations=max(1, size // 64)) & ~mask
            echo = echo + 0.45 * ndi.gaussian_filter(edge.astype(np.float32), 0.6)
            echo = echo + 0.35 * below
        else:  # posterior shadowing below malignant lesions
            echo = echo * (1 - 0.7 * below)
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
