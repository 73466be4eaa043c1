"""Corrections -> training samples: pairing an image with its labels, adding and undoing samples (no Qt).

The Annotate widget calls these.  The pairing rule is the guard against
writing one patient's pixels with another's mask: a Labels layer made by
napari-mtunet names the image it belongs to (``source_layer`` in
:mod:`napari_mtunet.layer_meta`), and any other image is refused; a Labels
layer without that record must first be linked to its image.

A class that is only the model's prediction is not a label: every sample
added records where its class comes from (``class_source`` in
``labels.csv``: ``confirmed`` by the user, or the dataset's
``ground_truth``), and a class nobody confirmed is refused unless the caller
asks for it explicitly (``allow_predicted``; then it is recorded as
``predicted``).  Corrections reach the dataset folder through the one writer
of that format, :mod:`napari_mtunet.data.writer` (all the items of a call or none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class PairingError(ValueError):
    """The image and the labels do not belong together; the message says which to choose."""


@dataclass
class SampleItem:
    """One 2-D image with its corrected mask and class, ready to be written."""

    image: np.ndarray
    mask: np.ndarray
    label: str | None
    slice_index: int | None = None
    #: where ``label`` comes from: "confirmed", "ground_truth" or "predicted" (see layer_meta.SliceInfo.label_source)
    label_source: str | None = "confirmed"


@dataclass
class AddedSample:
    """A sample written to a training-set folder (kept for undo and the before/after metrics)."""

    root: str
    path: str
    image: np.ndarray
    mask: np.ndarray
    label: str | None


def check_pairing(image_name: str, image_shape: tuple[int, ...], labels_name: str, labels_shape: tuple[int, ...],
                  record: Any, *, rgb: bool) -> None:
    """Refuse an image that is not the one the labels were made from (or that differs in shape)."""
    source = getattr(record, "source_layer", None)
    if source is None:
        raise PairingError(
            f"the Labels layer {labels_name!r} does not say which image it belongs to; select its image and press "
            "'Link labels to image' (or make the labels with 'New annotation layer')"
        )
    if source != image_name:
        raise PairingError(
            f"the Labels layer {labels_name!r} was made from the image {source!r}, not {image_name!r}; "
            f"select {source!r} as the image (or make a new annotation layer for {image_name!r})"
        )
    spatial = tuple(image_shape[:-1]) if rgb else tuple(image_shape)
    if spatial != tuple(labels_shape):
        raise PairingError(
            f"image {image_name!r} {spatial} and labels {labels_name!r} {tuple(labels_shape)} differ in shape"
        )


def sample_items(image: Any, labels: Any, classes: Sequence[str | None], *, rgb: bool,
                 slices: Sequence[int] | None = None,
                 sources: Sequence[str | None] | None = None) -> list[SampleItem]:
    """The (image, mask, class) items of a 2-D pair or of chosen slices of a stack; ``sources``: where each
    slice's class comes from (default: confirmed)."""
    img = np.asarray(image)
    lab = np.asarray(labels)

    def source(i: int) -> str | None:
        return sources[i] if sources is not None and i < len(sources) else "confirmed"

    if lab.ndim == 2:
        return [SampleItem(img, (lab > 0).astype(np.uint8), classes[0] if classes else None, None, source(0))]
    idx = list(range(lab.shape[0])) if slices is None else [int(i) for i in slices]
    return [SampleItem(img[i], (lab[i] > 0).astype(np.uint8), classes[i] if i < len(classes) else None, i,
                       source(i)) for i in idx]


def unconfirmed(items: Sequence[SampleItem]) -> list[SampleItem]:
    """The items whose class is only the model's prediction."""
    return [it for it in items if it.label and it.label_source == "predicted"]


def add_samples(root: str | os.PathLike, items: Sequence[SampleItem], *, group: str | None = None,
                source: str | None = None, model: str | None = None,
                allow_predicted: bool = False) -> list[AddedSample]:
    """Write ``items`` as new samples of the generic-layout dataset ``root``; ``labels.csv`` records the
    source image (and slice), the model whose prediction was corrected and where each class comes from
    (``class_source``).  Items whose class nobody confirmed are refused unless ``allow_predicted``.  All the
    items are written, or none (a failure leaves the folder as it was)."""
    from ..data.writer import NewSample, append_generic_samples  # the Annotate widget imports this module: light

    missing = [i for i, it in enumerate(items) if not it.label]
    if missing:
        raise ValueError(f"set a class for every image to add (missing for {len(missing)} of {len(items)})")
    guessed = unconfirmed(items)
    if guessed and not allow_predicted:
        where = ", ".join(f"slice {it.slice_index}" if it.slice_index is not None else "the image"
                          for it in guessed[:5])
        raise ValueError(
            f"the class of {where} is only the model's prediction ({guessed[0].label}); confirm it or pick "
            "your class first (nothing was written)")
    new = []
    for it in items:
        src = None if source is None else (source if it.slice_index is None else f"{source} [{it.slice_index}]")
        new.append(NewSample(it.image, it.mask, it.label, group,
                             extra={"source": src, "model": model, "class_source": it.label_source}))
    written = append_generic_samples(root, new)
    return [AddedSample(str(root), str(res.image), it.image, it.mask, it.label) for it, res in zip(items, written)]


def undo_sample(sample: AddedSample) -> list[Path]:
    """Remove a sample added by :func:`add_samples` (its row, image and mask)."""
    from ..data.writer import remove_generic_sample

    return remove_generic_sample(sample.root, Path(sample.path).name)
