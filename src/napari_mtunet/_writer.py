"""Labels layers (+ their images) with class metadata -> the generic dataset layout.

Every slice becomes one new, uniquely named sample (``images/``, ``masks/``
and a row appended atomically to ``labels.csv``) through the data
package's :func:`~napari_mtunet.data.write_generic_sample`; nothing existing
is overwritten.

This is a Python API, not a napari writer contribution: npe2 gives a
multi-layer save to a name without extension to the first extension-less
writer that accepts the layers, and lists writers *with* an extension first
(making one the default file type of napari's Save dialog), so either form
would take image+labels saves away from napari's own writers.  In napari,
the Annotate widget's "Add to training set" adds samples.  Imports neither
torch nor torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import split_stack


def find_source_image(labels_kwargs: dict[str, Any]) -> tuple[Any, bool] | None:
    """The image a predicted/annotation Labels layer was made from, looked up by name in the current viewer.

    ``labels_kwargs`` are the Labels layer's layer-data kwargs; its
    ``metadata["mtunet"]["source_layer"]`` names the image layer.  Returns
    ``(data, rgb)`` or None when there is no viewer or no such layer.
    """
    import napari

    meta = (labels_kwargs.get("metadata") or {}).get("mtunet") or {}
    name = meta.get("source_layer")
    viewer = napari.current_viewer()
    if not name or viewer is None or name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return data, bool(getattr(layer, "rgb", False))


def classes_from_metadata(meta: dict[str, Any], n: int) -> list[str | None]:
    """Per-slice classes to train on, from a layer's ``metadata`` (:mod:`napari_mtunet.layer_meta`):
    the user's correction, else the ground truth, else the prediction (None where unknown)."""
    from . import layer_meta

    record = layer_meta.read(meta)
    if record is None:
        return [None] * n
    return [(record.slice(i).label if record.slice(i) is not None else None) for i in range(n)]


def write_layers_to_dataset(
    root: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    classes: list[str | None],
    *,
    rgb: bool | None = None,
    group: str | None = None,
) -> list[str]:
    """Write ``image`` / ``labels`` (2-D or stacks of equal length) as new generic-layout samples."""
    from .data.writer import write_generic_sample  # not ``from .data``: no torch on napari's GUI thread

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder; an MTUNet dataset is a folder")

    images, img_stack = split_stack(np.asarray(image), rgb=rgb)
    masks = [labels] if labels.ndim == 2 else [labels[i] for i in range(labels.shape[0])]
    if len(images) != len(masks):
        raise ValueError(
            f"the image has {len(images)} slice(s) but the labels layer has {len(masks)}; select matching layers"
        )
    for i, (im, m) in enumerate(zip(images, masks)):
        if im.shape[:2] != m.shape[:2]:
            raise ValueError(f"slice {i}: image {im.shape[:2]} and labels {m.shape[:2]} differ in size")
    written = []
    for im, m, c in zip(images, masks, classes):
        res = write_generic_sample(root, im, (np.asarray(m) > 0).astype(np.uint8), c, group=group)
        written.append(str(getattr(res, "image", res)))
    return written


def write_dataset(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Layer-data tuples ``[labels]`` or ``[image, labels]`` -> samples appended to the dataset folder ``path``.

    E.g. ``write_dataset(folder, [layer.as_layer_data_tuple() for layer in (image, labels)])``.
    An existing generic-layout dataset is appended to; a new folder is created.
    With only a Labels layer, its image is found in the current viewer through
    ``metadata["mtunet"]["source_layer"]`` (see :func:`find_source_image`).
    """
    labels = [(d, m) for d, m, k in layer_data if k == "labels"]
    images = [(d, m) for d, m, k in layer_data if k == "image"]
    if len(labels) != 1:
        raise ValueError("select exactly one Labels layer (and optionally its image layer) to write a dataset")
    lab, lab_meta = labels[0]
    if images:
        img, img_meta = images[0]
        rgb = img_meta.get("rgb")
    else:
        src = find_source_image(lab_meta)
        if src is None:
            raise ValueError(
                "a dataset needs the image too: select the image layer together with the Labels layer"
            )
        img, rgb = src
    lab = np.asarray(lab)
    n = 1 if lab.ndim == 2 else lab.shape[0]
    classes = classes_from_metadata(lab_meta.get("metadata", {}), n)
    return write_layers_to_dataset(path, img, lab, classes, rgb=rgb)
