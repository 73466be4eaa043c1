"""Segmenting one object from clicks and a box, as the napari "Segment object" widget does it: no Qt, no torch.

The widget's layers (a Points layer of clicks, a Shapes layer with the box) are
what the user edits; this module keeps, for each 2-D image (a stack: each
slice), what those prompts have produced so far and decides what to run next:

- :class:`ObjectSession` -- the prompts of the object being segmented in one
  2-D image, a **generation** number that changes with every change of the
  prompts, and the results already known for a prefix of the clicks (with the
  current box): the mask after 0 (box only), 1, 2 ... clicks.  Undoing a click
  shows the mask it had before at once, without running the model again, and
  the next request passes the newest known mask as ``previous_mask`` (the
  RITM / DeepEdit way the model was trained).
- :meth:`ObjectSession.request` -- what to run for the prompts as they are now
  (None when the result is already known or there is nothing to run).
- :meth:`ObjectSession.accept` -- a result comes back: shown only if it is
  for the current generation (**the latest click wins; stale results are
  never shown**); a stale result whose prompts are still a prefix of the
  current ones is kept as the previous mask of the next request.
- :func:`next_label_id` / :func:`free_pixels` -- a committed object gets its
  own label id in the output Labels layer, on pixels no earlier object took.

Coordinates are pixels of the 2-D image: a click ``(row, col, positive)`` at
the pixel whose centre is nearest (napari draws pixel ``i`` from ``i - 0.5``
to ``i + 0.5``), a box ``(row0, col0, row1, col1)`` with exclusive ends, as
:meth:`napari_mtunet.inference.Predictor.predict` takes them.

:class:`ObjectResult` is what the compute process sends back
(:mod:`napari_mtunet.segment_jobs`): the mask as the region that was run and
its crop, so a click in a large image costs the region's bytes, not the
image's.  This module imports nothing heavy (napari's process unpickles
results of this type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

#: A click: (row, col, positive), pixels of the 2-D image.
Click = tuple[int, int, bool]
#: (row0, col0, row1, col1), ends exclusive.
Box = tuple[int, int, int, int]


class SegmentError(ValueError):
    """A prompt or an action that cannot be used (a click outside the image, an empty commit ...)."""


# --------------------------------------------------------------------------- geometry


def pixel_of(row: float, col: float, shape: tuple[int, int], *, where: str = "the image") -> tuple[int, int]:
    """The pixel a click at data coordinates ``(row, col)`` falls in; :class:`SegmentError` outside ``shape``."""
    if not (math.isfinite(row) and math.isfinite(col)):
        raise SegmentError(f"a click at ({row}, {col}) is not a position in {where}")
    r, c = int(math.floor(row + 0.5)), int(math.floor(col + 0.5))
    h, w = int(shape[0]), int(shape[1])
    if not (0 <= r < h and 0 <= c < w):
        raise SegmentError(f"the click at row {row:.0f}, column {col:.0f} lies outside {where} ({h} x {w} pixels); "
                           "it was removed")
    return r, c


def box_of(corners: np.ndarray, shape: tuple[int, int], *, where: str = "the image") -> Box:
    """The pixel box a rectangle's corner points ``(N, 2)`` (data coordinates, rows and columns) covers, clipped
    to the image: the pixels whose centres lie inside it.  :class:`SegmentError` when no pixel does."""
    pts = np.asarray(corners, float).reshape(-1, 2)
    if pts.size == 0 or not np.isfinite(pts).all():
        raise SegmentError(f"the box is not a rectangle in {where}")
    h, w = int(shape[0]), int(shape[1])
    r0 = max(0, int(math.ceil(pts[:, 0].min())))
    c0 = max(0, int(math.ceil(pts[:, 1].min())))
    r1 = min(h, int(math.floor(pts[:, 0].max())) + 1)
    c1 = min(w, int(math.floor(pts[:, 1].max())) + 1)
    if r1 <= r0 or c1 <= c0:
        raise SegmentError(f"the box lies outside {where} ({h} x {w} pixels) or covers no pixel; it was removed")
    return r0, c0, r1, c1


# --------------------------------------------------------------------------- masks and results


@dataclass
class ObjectMask:
    """A mask of an image of ``shape`` stored as the region that was run and the mask inside it (zero outside)."""

    shape: tuple[int, int]
    region: Box
    crop: np.ndarray  # uint8 0/1, the region's size

    @classmethod
    def from_full(cls, mask: np.ndarray, region: Box | None = None) -> ObjectMask:
        m = np.asarray(mask)
        h, w = m.shape[:2]
        if region is None:
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            region = (0, 0, 0, 0) if rows.size == 0 else (int(rows[0]), int(cols[0]), int(rows[-1]) + 1,
                                                          int(cols[-1]) + 1)
        r0, c0, r1, c1 = (int(v) for v in region)
        return cls((int(h), int(w)), (r0, c0, r1, c1), np.ascontiguousarray(m[r0:r1, c0:c1] > 0, np.uint8))

    def full(self) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8)
        r0, c0, r1, c1 = self.region
        out[r0:r1, c0:c1] = self.crop
        return out

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def bounds(self) -> Box | None:
        """The bounding box of the foreground (None when empty)."""
        rows, cols = np.flatnonzero(self.crop.any(axis=1)), np.flatnonzero(self.crop.any(axis=0))
        if rows.size == 0:
            return None
        r0, c0 = self.region[:2]
        return r0 + int(rows[0]), c0 + int(cols[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[-1]) + 1


@dataclass
class ObjectResult:
    """The model's answer for one set of prompts (made in the compute process)."""

    generation: int
    n_clicks: int
    box: Box | None
    mask: ObjectMask
    class_name: str | None
    class_names: list[str]
    class_probabilities: list[float] | None
    seconds: float = 0.0  # the Predictor's time in the compute process
    cpu_seconds: float = 0.0  # the CPU time its thread got meanwhile (less than ``seconds``: it waited for a core)
    passes: int = 1

    @property
    def probabilities(self) -> dict[str, float] | None:
        if self.class_probabilities is None:
            return None
        return {n: float(p) for n, p in zip(self.class_names, self.class_probabilities)}


@dataclass
class Request:
    """What to run: the prompts of one generation and the mask they correct (None: none yet)."""

    generation: int
    points: list[Click]
    box: Box | None
    previous: ObjectMask | None


# --------------------------------------------------------------------------- one object in one 2-D image


@dataclass
class ObjectSession:
    """The prompts of the object being segmented in one 2-D image and the results known for them."""

    shape: tuple[int, int]
    clicks: list[Click] = field(default_factory=list)
    box: Box | None = None
    generation: int = 0
    #: results for the first k clicks with the current box (k = 0: the box alone)
    _known: dict[int, ObjectResult] = field(default_factory=dict, repr=False)
    #: requests of earlier generations were made for an image that has changed since
    _valid_from: int = field(default=0, repr=False)

    @property
    def empty(self) -> bool:
        return not self.clicks and self.box is None

    def set_prompts(self, clicks: Sequence[Click], box: Box | None) -> bool:
        """The prompts as the layers show them now; returns whether they changed (a new generation).

        Results for a prefix of the clicks that is unchanged (and the same box) are kept.
        """
        clicks = [(int(r), int(c), bool(p)) for r, c, p in clicks]
        if box is not None:
            box = tuple(int(v) for v in box)  # type: ignore[assignment]
        if clicks == self.clicks and box == self.box:
            return False
        if box != self.box:
            self._known.clear()
        else:
            same = 0
            for a, b in zip(self.clicks, clicks):
                if a != b:
                    break
                same += 1
            for k in [k for k in self._known if k > same]:
                del self._known[k]
        self.clicks, self.box = clicks, box
        self.generation += 1
        return True

    def clear(self) -> bool:
        return self.set_prompts([], None)

    def invalidate(self) -> None:
        """The image changed: every result known is void (the prompts stay; a new generation)."""
        self._known.clear()
        self.generation += 1
        self._valid_from = self.generation

    def current(self) -> ObjectResult | None:
        """The result for the prompts as they are now (None while it is being computed, or without prompts)."""
        if self.empty:
            return None
        return self._known.get(len(self.clicks))

    def _previous(self) -> ObjectMask | None:
        """The newest known mask for fewer clicks (with this box): the mask the next clicks correct."""
        below = [k for k in self._known if k < len(self.clicks)]
        return self._known[max(below)].mask if below else None

    def request(self) -> Request | None:
        """What to run for the prompts as they are now; None when nothing is to run (no prompts, or known)."""
        if self.empty or self.current() is not None:
            return None
        return Request(self.generation, list(self.clicks), self.box, self._previous())

    def prompts_of(self, request: Request) -> bool:
        """Whether ``request``'s prompts are still a prefix of the current ones (same box, same image)."""
        return (request.generation >= self._valid_from and request.box == self.box
                and self.clicks[: len(request.points)] == list(request.points))

    def accept(self, request: Request, result: ObjectResult) -> bool:
        """A result for ``request`` came back: True if it is for the current prompts (show it).  A stale result
        whose prompts are still a prefix of the current ones is kept as the mask the next clicks correct."""
        if not self.prompts_of(request):
            return False
        self._known[len(request.points)] = result
        return len(request.points) == len(self.clicks)  # the same prompts as now (whatever happened between)


# --------------------------------------------------------------------------- committed objects


def next_label_id(labels: np.ndarray) -> int:
    """The label id of the next committed object: one above the largest in the layer (so ids are never reused
    while an object with a higher id exists)."""
    arr = np.asarray(labels)
    return int(arr.max()) + 1 if arr.size else 1


def free_pixels(labels: np.ndarray, mask: ObjectMask) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """The pixels of ``mask`` that no committed object holds in the 2-D ``labels`` (``(rows, cols)``, image
    coordinates), and how many of its pixels earlier objects hold: committed objects are never overwritten."""
    if tuple(labels.shape) != tuple(mask.shape):
        raise SegmentError(f"the object's mask ({mask.shape[0]} x {mask.shape[1]}) does not fit the labels layer "
                           f"({labels.shape[0]} x {labels.shape[1]})")
    r0, c0, r1, c1 = mask.region
    on = mask.crop > 0
    free = on & (np.asarray(labels[r0:r1, c0:c1]) == 0)
    rows, cols = np.nonzero(free)
    return (rows + r0, cols + c0), int(on.sum() - free.sum())


def check_label_id(label_id: int, dtype: np.dtype) -> None:
    """Refuse a label id the labels layer's values cannot hold."""
    dt = np.dtype(dtype)
    if dt.kind in "iu" and int(label_id) > np.iinfo(dt).max:
        raise SegmentError(f"label id {label_id} does not fit the labels layer's {dt} values; commit into a new layer")


@dataclass
class CommittedObject:
    """One committed object: its label id, where it is, its class and how it was made (JSON-friendly)."""

    label: int
    slice: int | None
    class_name: str | None
    probabilities: dict[str, float] | None
    pixels: int
    clicks: int
    box: bool

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "slice": self.slice, "class": self.class_name,
                "probabilities": self.probabilities, "pixels": self.pixels, "clicks": self.clicks, "box": self.box}
