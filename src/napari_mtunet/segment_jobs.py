"""What the Segment object widget runs in the compute process (:mod:`napari_mtunet.compute`): the interactive
model and the image being segmented stay there between clicks.

- :func:`load_model` loads the model once (when the widget is given a model, before the first click) and says
  whether it takes prompts;
- :func:`segment_object` runs one :class:`~napari_mtunet.segment_session.Request` through
  :meth:`napari_mtunet.inference.Predictor.predict` (``points``, ``box``, ``previous_mask``) and returns an
  :class:`~napari_mtunet.segment_session.ObjectResult`: the mask as the zoomed region that was run and its
  crop, the class and its probabilities;
- the 2-D image crosses the pipe once per image (or slice): later clicks send only its key.  A compute process
  that does not have it (it was restarted) answers :class:`ImageNotSent` and the widget sends it again.

Qt-free and napari-free; nothing heavy is imported until a job runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .segment_session import ObjectMask, ObjectResult, Request

#: Images kept in the compute process (the slice on screen and a few the user came from).
MAX_IMAGES = 4

_LOCK = threading.Lock()
_MODEL: dict[str, Any] = {"key": None, "predictor": None}
_IMAGES: OrderedDict[str, np.ndarray] = OrderedDict()


class ImageNotSent(LookupError):
    """The compute process does not hold the image of this key (send it with the request)."""


def _predictor(params: dict[str, Any]) -> Any:
    """The interactive model of ``params`` (``checkpoint``, ``device``), loaded once and kept while the file is
    unchanged."""
    from .checkpoint import check_checkpoint_path
    from .inference import Predictor

    path = Path(params["checkpoint"])
    check_checkpoint_path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(params.get("device", "auto")))
    with _LOCK:
        if _MODEL["key"] != key or _MODEL["predictor"] is None:
            _MODEL["predictor"] = None
            _MODEL["predictor"] = Predictor(path, device=params.get("device", "auto"))
            _MODEL["key"] = key
        return _MODEL["predictor"]


def load_model(params: dict[str, Any]) -> dict[str, Any]:
    """Load the model (the first click then does not wait for it); what the widget shows about it."""
    p = _predictor(params)
    return {"name": p.info.name, "accepts_prompts": bool(p.accepts_prompts), "class_names": list(p.class_names),
            "image_size": int(p.image_size), "device": str(p.device)}


def release() -> None:
    """Forget the model and the images (the widget was closed)."""
    with _LOCK:
        _MODEL["key"] = _MODEL["predictor"] = None
        _IMAGES.clear()


def _image(key: str, image: np.ndarray | None) -> np.ndarray:
    with _LOCK:
        if image is not None:
            _IMAGES[key] = image
            while len(_IMAGES) > MAX_IMAGES:
                _IMAGES.popitem(last=False)
        elif key not in _IMAGES:
            raise ImageNotSent(key)
        _IMAGES.move_to_end(key)
        return _IMAGES[key]


def segment_object(params: dict[str, Any], key: str, image: np.ndarray | None, request: Request,
                   where: str | None = None) -> ObjectResult:
    """The mask and class of the object ``request``'s prompts point at, in the 2-D image of ``key`` (``where``
    names it in errors: the layer and slice)."""
    arr = _image(key, image)
    predictor = _predictor(params)
    previous = request.previous.full() if request.previous is not None else None
    t0, c0 = time.perf_counter(), time.thread_time()
    pred = predictor.predict_prompted(arr, points=[tuple(p) for p in request.points] or None, box=request.box,
                                      previous_mask=previous, rgb=arr.ndim == 3, where=where,
                                      return_probability=False)
    seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
    mask = np.asarray(pred.mask, np.uint8)
    obj = ObjectMask.from_full(mask, pred.region)
    if obj.area != int(np.count_nonzero(mask)):  # (never expected: the mask lies in the region that was run)
        obj = ObjectMask.from_full(mask)
    has_mask = previous is not None and bool(previous.any())
    probs = None if pred.class_probabilities is None else [float(v) for v in pred.class_probabilities]
    return ObjectResult(
        generation=request.generation, n_clicks=len(request.points), box=request.box, mask=obj,
        class_name=pred.class_name, class_names=list(pred.class_names), class_probabilities=probs,
        seconds=seconds, cpu_seconds=cpu, passes=1 if (request.box is not None or has_mask) else 2,
    )
