"""napari reader for napari-mtunet checkpoints, and dataset folders as layer data.

napari calls ``get_reader`` on its GUI thread for every path it is asked to
open, so :func:`get_checkpoint_reader` only reads the file's small JSON
header: it imports neither torch nor torchvision (torchvision pulls in
triton, see :func:`guard_triton`).  Opening a checkpoint docks the Predict
widget with it.

Dataset folders are deliberately *not* a napari reader.  npe2 offers a reader
that ``accepts_directories`` for *every* folder (its ``filename_patterns`` are
not applied to directories) and napari asks the user to choose between all
such plugins before any ``get_reader`` could decline.  A dataset reader would
therefore capture every folder, ``.zarr`` included.  Datasets are opened with
the Dataset widget (off the GUI thread), which uses :func:`dataset_layer_data`;
:func:`read_dataset` gives the same layer data from Python.
"""

from __future__ import annotations

import json
import os
import shutil
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

#: Files that exist on Linux when a GPU driver is loaded: NVIDIA's kernel driver,
#: NVIDIA device nodes (containers often expose only those), AMD ROCm's node.
LINUX_GPU_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def _accelerator_present() -> bool:
    """Whether this process may have a GPU that triton could use, decided without importing torch.

    When torch is already imported its own answer is free and exact.  Otherwise
    look for a GPU driver: the NVIDIA kernel driver (``/proc/driver/nvidia``),
    NVIDIA or AMD ROCm device nodes (containers often expose only those),
    NVIDIA's CUDA driver DLL on Windows, or ``nvidia-smi`` on the PATH.
    ``CUDA_VISIBLE_DEVICES`` set to nothing or ``-1`` hides every GPU.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - a half-imported torch: fall back to the driver check
            pass
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        if any(os.path.exists(marker) for marker in LINUX_GPU_MARKERS):
            return True
    elif sys.platform == "win32":
        system_root = os.environ.get("SystemRoot", r"C:\Windows")
        if os.path.exists(os.path.join(system_root, "System32", "nvcuda.dll")):
            return True
    return shutil.which("nvidia-smi") is not None


def guard_triton() -> None:
    """Keep ``triton`` from loading inside napari when no GPU can use it.

    torchvision (used by the data transforms and the model) imports
    ``torch._dynamo``, which imports ``triton`` if it is installed.  Loading
    triton's bundled LLVM into a process whose OpenGL context runs on Mesa's
    llvmpipe (software rendering: VMs, remote desktops, Xvfb) crashes the
    whole viewer with a segmentation fault.  Without a GPU triton is useless,
    so it is masked (``sys.modules["triton"] = None`` makes torch treat it as
    absent).  Set ``MTUNET_ALLOW_TRITON=1`` to opt out.

    This runs on napari's GUI thread (when a widget is docked or a checkpoint
    is opened), so it never imports torch: see :func:`_accelerator_present`.
    """
    if "triton" in sys.modules or os.environ.get("MTUNET_ALLOW_TRITON"):
        return
    try:
        if _accelerator_present():
            return
    except Exception:  # noqa: BLE001 - never break napari over this
        return
    sys.modules["triton"] = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- dataset folders


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


def read_dataset(path: str | os.PathLike | list[str]) -> list[tuple]:
    """A dataset folder as layer data: an image stack and a labels stack (resized previews).

    Not a napari reader (see the module docstring).  In Python:
    ``for d, kw, kind in read_dataset(folder): viewer.add_layer(napari.layers.Layer.create(d, kw, kind))``;
    in napari, the Dataset widget's "Show samples as layers" does this off the GUI thread.
    """
    if isinstance(path, list):
        path = path[0]
    report = load_dataset_report(path)
    samples = list(report.samples)
    layout = getattr(report, "layout", None)
    return dataset_layer_data(samples, name=Path(path).name, root=str(path), layout=layout)


# --------------------------------------------------------------------------- checkpoints


#: Must equal :data:`napari_mtunet.checkpoint.META_KEY` and ``FORMAT`` (a test checks);
#: repeated here because importing :mod:`napari_mtunet.checkpoint` imports torch.
CHECKPOINT_META_KEY = "mtunet"
CHECKPOINT_FORMAT = "napari-mtunet-checkpoint"
#: A safetensors header larger than this is not one of ours (our metadata is at
#: most 16 MiB, tensor entries a few hundred KiB); nothing larger is read on the GUI thread.
MAX_HEADER_BYTES = 24 * 1024 * 1024


def safetensors_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file, read without torch or safetensors; None when not one.

    A safetensors file starts with an 8-byte little-endian header length and
    that many bytes of JSON.  Only the header is read, and only when it is at
    most :data:`MAX_HEADER_BYTES` and fits in the file.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return None
            n = int.from_bytes(head, "little")
            if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
                return None
            raw = fh.read(n)
    except OSError:
        return None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


def is_mtunet_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap, torch-free recognition: a safetensors file whose metadata says it is a napari-mtunet checkpoint.

    Full validation (format version, model configuration) happens when the
    Predict widget loads it, where a problem is reported naming the file.
    """
    meta = safetensors_metadata(path)
    raw = meta.get(CHECKPOINT_META_KEY) if meta else None
    if not isinstance(raw, str):
        return False
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(info, dict) and info.get("format") == CHECKPOINT_FORMAT


def get_checkpoint_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for napari-mtunet checkpoints; None for any other ``.safetensors`` file.

    Runs on napari's GUI thread for every ``*.safetensors`` path: reads only
    the file's JSON header and imports no torch.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return None
    if not is_mtunet_checkpoint(p):
        return None  # not ours (e.g. a Hugging Face model): let other readers try
    return read_checkpoint


def read_checkpoint(path: str | list[str]) -> list[tuple]:
    """Show the Predict widget with this model loaded; adds no layers."""
    if isinstance(path, list):
        path = path[0]
    guard_triton()  # before the widgets import torchvision
    from .widgets import open_predict_widget

    open_predict_widget(str(path))
    return [(None,)]  # napari's "read, but no layers" sentinel
