"""Predicting arrays as napari holds them (a 2-D image or a stack): the Predict widget's work, without Qt.

:func:`iter_predict_array` yields :class:`~napari_mtunet.events.Progress`
while a big image is predicted in tiles, stops between tile rows when its
cancel token is set, and returns a :class:`~napari_mtunet.layer_meta.LayerPrediction`: the mask
(stack), the layer record of :mod:`napari_mtunet.layer_meta`, and an
optional Grad-CAM map.  :class:`PredictorCache` keeps the loaded model
between predictions.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..events import CancelToken, Progress, Status, TrainEvent
from ..layer_meta import LayerPrediction

__all__ = ["CAM_MAX_SIDE", "LayerPrediction", "PredictionCancelled", "PredictorCache", "cam_size", "gradcam_maps",
           "iter_predict_array"]


class PredictionCancelled(Exception):
    """Raised inside the Predictor's tile loop when the user asked to stop."""


#: Grad-CAM maps are shown at most this many pixels on their long side (laid over the image with a scale):
#: the map has the model's resolution, so a full-size copy of a 6000 x 6000 image adds nothing but a
#: 144 MB layer that napari would upload on its GUI thread.
CAM_MAX_SIDE = 1024


class PredictorCache:
    """Keeps the last loaded model so repeated predictions do not reload it (reloads when the file changes)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._predictor: Any = None

    def get(self, checkpoint: str, device: str, threshold: float, mode: str, tile_size: int) -> Any:
        from ..checkpoint import check_checkpoint_path
        from ..inference import Predictor

        path = Path(checkpoint)
        check_checkpoint_path(path)
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, device)
        if key != self._key or self._predictor is None:
            self._predictor = None
            self._predictor = Predictor(path, device=device, threshold=threshold, mode=mode, tile_size=tile_size)
            self._key = key
        p = self._predictor
        # the same loaded network, with this run's settings (validated like the constructor does)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if tile_size < 64 or tile_size % 32:
            raise ValueError(f"tile_size must be a multiple of 32 and >= 64, got {tile_size}")
        p.threshold, p.mode, p.tile_size = float(threshold), mode, int(tile_size)
        return p

    def clear(self) -> None:
        dev = getattr(self._predictor, "device", None)
        self._predictor = None
        self._key = None
        if dev is not None:
            from ..device import empty_cache

            empty_cache(dev)


def iter_predict_array(
    cache: PredictorCache,
    params: dict[str, Any],
    data: Any,
    rgb: bool,
    name: str,
    gradcam: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[TrainEvent]:
    """Predict one layer's data (a generator of events; returns a :class:`LayerPrediction`, None if cancelled).

    ``params``: ``checkpoint``, ``device``, ``threshold``, ``mode`` (auto/resize/native/tiled), ``tile_size``.
    """
    from .. import layer_meta
    from ..preprocess import split_stack

    t0 = time.perf_counter()
    predictor = cache.get(params["checkpoint"], params["device"], params["threshold"], params["mode"],
                          params["tile_size"])
    mode = None if params["mode"] == "auto" else params["mode"]
    arr = data if getattr(data, "ndim", 0) == 2 else np.asarray(data)
    slices, is_stack = split_stack(arr, rgb=rgb)
    preds = []
    events: queue.Queue = queue.Queue()

    def on_rows(done: int, total: int) -> None:
        if cancel is not None and cancel.cancelled:
            raise PredictionCancelled()
        events.put(Progress(done=done, total=total, what="tile rows", item=name))

    predictor.tile_progress = on_rows
    try:
        for i, image in enumerate(slices):
            if cancel is not None and cancel.cancelled:
                return None
            chosen = mode or predictor.choose_mode(*image.shape[:2])
            if chosen == "tiled":
                yield Status(f"Predicting {name!r}" + (f" slice {i + 1}/{len(slices)}" if is_stack else "")
                             + " in tiles at native resolution …")
            pred = yield from _while_running(
                lambda image=image, chosen=chosen: predictor.predict_image(image, mode=chosen, return_probability=False),
                events)
            preds.append(pred)
            if is_stack:
                yield Progress(done=i + 1, total=len(slices), what="slices", item=name)
    except PredictionCancelled:
        return None
    finally:
        predictor.tile_progress = None
    cam = None
    cam_scale = (1.0, 1.0)
    if gradcam:
        yield Status(f"Grad-CAM for {name!r} …")
        cam, cam_scale = gradcam_maps(predictor, slices, preds, is_stack)
    if any(p.mask is None for p in preds):
        mask = None
    else:  # uint8 here, in the worker: the widget adds it to napari without another copy
        mask = np.stack([np.asarray(p.mask, np.uint8) for p in preds]) if is_stack else np.asarray(preds[0].mask, np.uint8)
    record = layer_meta.prediction(preds, source=name, is_stack=is_stack, info=predictor.info,
                                   mode=params["mode"])
    return LayerPrediction(name=name, mask=mask, record=record, cam=cam, seconds=time.perf_counter() - t0,
                           cam_scale=cam_scale)


def _while_running(fn: Any, events: queue.Queue) -> Iterator[TrainEvent]:
    """Run ``fn`` in a helper thread and yield the events it queues meanwhile; returns its result or raises its error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="napari-mtunet predict", daemon=True)
    thread.start()
    while thread.is_alive() or not events.empty():
        try:
            yield events.get(timeout=0.05)
        except queue.Empty:
            continue
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def cam_size(h: int, w: int, max_side: int = CAM_MAX_SIDE) -> tuple[tuple[int, int], tuple[float, float]]:
    """The size a Grad-CAM map of an ``h`` x ``w`` image is shown at, and image pixels per map pixel."""
    f = max(1, int(np.ceil(max(h, w) / max_side)))
    if f == 1:
        return (h, w), (1.0, 1.0)
    ch, cw = int(np.ceil(h / f)), int(np.ceil(w / f))
    return (ch, cw), (h / ch, w / cw)


def gradcam_maps(predictor: Any, slices: list[np.ndarray], preds: list[Any],
                 is_stack: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """Grad-CAM heat map(s) for the predicted class (float32 in [0, 1]) and image pixels per map pixel.

    The maps cover the whole image; up to :data:`CAM_MAX_SIDE` pixels on the long side they have the image's
    size, above it a reduced size (a whole number of image pixels per map pixel).
    """
    h, w = slices[0].shape[:2]
    size, scale = cam_size(h, w)
    maps = [_one_gradcam(predictor, sl, pred, size) for sl, pred in zip(slices, preds)]
    return (np.stack(maps) if is_stack else maps[0]), scale


def _one_gradcam(predictor: Any, image: np.ndarray, pred: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM at the model's input size (the image resized as in training), resized to ``size`` (the image's)."""
    import torch
    import torch.nn.functional as F

    from .. import explain
    from ..preprocess import to_float_rgb

    h, w = size or image.shape[:2]
    s = predictor.image_size
    x = torch.from_numpy(to_float_rgb(image)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    cam = explain.grad_cam(predictor.model, x.to(predictor.device), target_class=pred.class_index)
    up = F.interpolate(torch.from_numpy(cam)[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return up.numpy().astype(np.float32, copy=False)
