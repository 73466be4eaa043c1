"""Dataset samples as napari layer data (image and mask stacks with their classes): Qt-free, torch-free.

Used by the Dataset widget's preview and by :func:`napari_mtunet._reader.read_dataset`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Dataset previews are letterboxed into this square size so that images of
#: different sizes can share one stack (napari needs equal shapes).
PREVIEW_SIZE = 256
#: At most this many samples are opened as layers (a large dataset stays usable).
MAX_PREVIEW = 300


def _to_preview(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize into a ``size`` x ``size`` square keeping the aspect ratio (black margins), as one stack needs."""
    from skimage.transform import resize

    from .preprocess import to_float_rgb

    rgb = to_float_rgb(image)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    small = resize(rgb, (nh, nw, 3), order=1, anti_aliasing=True, preserve_range=True)
    img = np.zeros((size, size, 3), np.uint8)
    img[y0:y0 + nh, x0:x0 + nw] = np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)
    m = np.zeros((size, size), np.uint8)
    if mask is not None:
        m[y0:y0 + nh, x0:x0 + nw] = (resize(mask.astype(np.float32), (nh, nw), order=0, preserve_range=True) > 0.5)
    return img, m


def dataset_layer_data(
    samples: list[Any],
    *,
    name: str = "dataset",
    size: int = PREVIEW_SIZE,
    max_samples: int = MAX_PREVIEW,
    root: str | None = None,
    layout: str | None = None,
    n_total: int | None = None,
) -> list[tuple]:
    """Samples -> [(image stack, kwargs, "image"), (mask stack, kwargs, "labels")] with per-slice classes."""
    from .data.io import load_sample

    chosen = list(samples)[:max_samples]
    images, masks, classes, files, failed = [], [], [], [], []
    for s in chosen:
        try:
            image, mask = load_sample(s)
        except Exception as exc:  # noqa: BLE001 - a bad file does not stop the preview
            failed.append(f"{s.image}: {exc}")
            continue
        img, m = _to_preview(image, mask, size)
        images.append(img)
        masks.append(m)
        classes.append(s.label)
        files.append(str(s.image))
    if not images:
        detail = ("; ".join(failed[:3])) if failed else "the dataset has no samples"
        raise ValueError(f"{root or name}: nothing to show ({detail})")
    stack = np.stack(images)
    if np.all(stack[..., 0] == stack[..., 1]) and np.all(stack[..., 1] == stack[..., 2]):
        stack = stack[..., 0]  # greyscale: keep one channel
    from . import layer_meta

    class_names = sorted({c for c in classes if c is not None})
    meta = layer_meta.as_metadata(layer_meta.ground_truth(classes, class_names, kind="dataset", extra={
        "root": root, "layout": layout, "files": files, "preview_size": size,
        "n_total": len(samples) if n_total is None else int(n_total), "n_shown": len(images), "failed": failed,
    }))
    return [
        (stack, {"name": f"{name} images", "metadata": meta, "rgb": stack.ndim == 4}, "image"),
        (np.stack(masks), {"name": f"{name} masks", "metadata": meta, "opacity": 0.5}, "labels"),
    ]


def load_dataset_report(root: str | os.PathLike, layout: str = "auto", strict: bool = False) -> Any:
    """The data package's dataset report (samples, problems, summary)."""
    from .data import load_dataset

    return load_dataset(root, layout=layout, strict=strict)
