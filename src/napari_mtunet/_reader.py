"""napari readers: dataset folders (images + masks + classes) and napari-mtunet checkpoints.

Qt-free except that opening a checkpoint asks :mod:`napari_mtunet.widgets`
to show the Predict widget with that model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Dataset previews are resized to this square size so that images of
#: different sizes can share one stack (napari needs equal shapes).
PREVIEW_SIZE = 256
#: At most this many samples are opened as layers (a large dataset stays usable).
MAX_PREVIEW = 300


# --------------------------------------------------------------------------- environment guard


def guard_triton() -> None:
    """Keep ``triton`` from loading inside napari when no CUDA GPU can use it.

    torchvision (used by the data transforms and the model) imports
    ``torch._dynamo``, which imports ``triton`` if it is installed.  Loading
    triton's bundled LLVM into a process whose OpenGL context runs on Mesa's
    llvmpipe (software rendering: VMs, remote desktops, Xvfb) crashes the
    whole viewer with a segmentation fault.  Without a CUDA device triton is
    useless, so it is masked (``sys.modules["triton"] = None`` makes torch
    treat it as absent).  Set ``MTUNET_ALLOW_TRITON=1`` to opt out.
    """
    if "triton" in sys.modules or os.environ.get("MTUNET_ALLOW_TRITON"):
        return
    try:
        import torch

        if torch.cuda.is_available():
            return
    except Exception:  # noqa: BLE001 - never break napari over this
        return
    sys.modules["triton"] = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- dataset folders


def get_dataset_reader(path: str | list[str]) -> Callable | None:
    """Return a reader when ``path`` is a folder in a known dataset layout, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.is_dir():
        return None
    guard_triton()
    try:
        from .data.layouts import detect_layout

        detect_layout(p)
    except Exception:  # noqa: BLE001 - not a dataset: let other readers try
        return None
    return read_dataset


def _to_preview(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import resize

    from .preprocess import to_float_rgb

    rgb = to_float_rgb(image)
    small = resize(rgb, (size, size, 3), order=1, anti_aliasing=True, preserve_range=True)
    img = np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mask is None:
        m = np.zeros((size, size), np.uint8)
    else:
        m = (resize(mask.astype(np.float32), (size, size), order=0, preserve_range=True) > 0.5).astype(np.uint8)
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
    class_names = sorted({c for c in classes if c is not None})
    meta = {
        "mtunet": {
            "kind": "dataset",
            "root": root,
            "layout": layout,
            "is_stack": True,
            "classes": classes,
            "class_names": class_names,
            "files": files,
            "preview_size": size,
            "n_total": len(samples) if n_total is None else int(n_total),
            "n_shown": len(images),
            "failed": failed,
        }
    }
    return [
        (stack, {"name": f"{name} images", "metadata": meta, "rgb": stack.ndim == 4}, "image"),
        (np.stack(masks), {"name": f"{name} masks", "metadata": meta, "opacity": 0.5}, "labels"),
    ]


def load_dataset_report(root: str | os.PathLike, layout: str = "auto", strict: bool = False) -> Any:
    """The data package's dataset report (samples, problems, summary)."""
    from .data import load_dataset

    return load_dataset(root, layout=layout, strict=strict)


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Open a dataset folder as an image stack and a labels stack (resized previews)."""
    if isinstance(path, list):
        path = path[0]
    report = load_dataset_report(path)
    samples = list(report.samples)
    layout = getattr(report, "layout", None)
    return dataset_layer_data(samples, name=Path(path).name, root=str(path), layout=layout)


# --------------------------------------------------------------------------- checkpoints


def get_checkpoint_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for napari-mtunet checkpoints; None for any other ``.safetensors`` file."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    guard_triton()
    try:
        from .checkpoint import read_metadata

        read_metadata(p)
    except Exception:  # noqa: BLE001 - not ours (e.g. a Hugging Face model)
        return None
    return read_checkpoint


def read_checkpoint(path: str | list[str]) -> list[tuple]:
    """Show the Predict widget with this model loaded; adds no layers."""
    if isinstance(path, list):
        path = path[0]
    from .widgets import open_predict_widget

    open_predict_widget(str(path))
    return [(None,)]  # napari's "read, but no layers" sentinel
