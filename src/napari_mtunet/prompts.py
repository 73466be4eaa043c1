"""Prompts for interactive segmentation: clicks, a box and the previous mask -> the network's guidance channels.

One Qt-free module serves the three places that must agree exactly:

- the Predictor (:meth:`napari_mtunet.inference.Predictor.predict` with ``points=``, ``box=``,
  ``previous_mask=``): validates the prompts, chooses the region to run (:func:`zoom_region`: the prompts'
  extent grown by a margin, so a small lesion in a large image is seen at the model's full resolution),
  encodes the prompts in that region (:func:`encode`) and keeps the parts of the mask they point at
  (:func:`apply_prompts`);
- training (:func:`training_view`: the simulated user's first prompts for one image; the corrective
  clicks that follow are placed by :func:`next_click` on the model's own predictions, see
  :mod:`napari_mtunet.training.prompting`);
- evaluation (the RITM protocol, :mod:`napari_mtunet.training.interactive`): the first click at the point of
  the object farthest from its boundary, each next click at the farthest point of the larger error region.

Coordinates are pixels of the image as given: ``(row, col)`` for clicks and ``(row0, col0, row1, col1)`` for
a box, ``row1``/``col1`` exclusive.  The guidance channels follow
:data:`napari_mtunet.config.GUIDANCE_CHANNELS`: positive clicks and negative clicks (disks of
``InteractiveConfig.click_radius`` pixels of the network input), the previous mask and the box (filled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .config import GUIDANCE_CHANNELS, InteractiveConfig

#: (row0, col0, row1, col1), ends exclusive, in pixels of some image.
Region = tuple[int, int, int, int]


class PromptError(ValueError):
    """The prompts cannot be used (out of the image, malformed, or the model takes none); the message says why."""


@dataclass(frozen=True)
class Click:
    row: float
    col: float
    positive: bool = True


@dataclass
class Prompts:
    """A user's prompts for one object in one 2-D image (validated by :meth:`from_user`)."""

    shape: tuple[int, int]
    points: tuple[Click, ...] = ()
    box: Region | None = None
    previous_mask: np.ndarray | None = None  # bool (H, W)
    _extent: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_user(
        cls,
        shape: tuple[int, int],
        points: Iterable[Sequence[Any]] | None = None,
        box: Sequence[Any] | None = None,
        previous_mask: Any = None,
        *,
        where: str | None = None,
    ) -> Prompts:
        """Check prompts given for an image of ``shape`` (H, W); raises :class:`PromptError` naming the problem."""
        at = f"{where}: " if where else ""
        h, w = int(shape[0]), int(shape[1])
        clicks: list[Click] = []
        for i, p in enumerate(points or ()):
            try:
                items = list(p)
            except TypeError:
                raise PromptError(f"{at}point {i} must be (row, col, positive), got {p!r}") from None
            if len(items) not in (2, 3):
                raise PromptError(f"{at}point {i} must be (row, col, positive), got {p!r}")
            r, c = _number(items[0], f"{at}point {i} row"), _number(items[1], f"{at}point {i} column")
            positive = True if len(items) == 2 else items[2]
            if isinstance(positive, (np.bool_, np.integer)):
                positive = bool(positive)
            if not isinstance(positive, (bool, int)) or positive not in (0, 1, True, False):
                raise PromptError(f"{at}point {i}: 'positive' must be true or false, got {positive!r}")
            if not (0 <= r < h and 0 <= c < w):
                raise PromptError(f"{at}point {i} ({r:g}, {c:g}) lies outside the image (rows 0..{h - 1}, "
                                  f"columns 0..{w - 1})")
            clicks.append(Click(float(r), float(c), bool(positive)))
        region = None
        if box is not None:
            try:
                vals = [_number(v, f"{at}box") for v in box]
            except TypeError:
                raise PromptError(f"{at}box must be (row0, col0, row1, col1), got {box!r}") from None
            if len(vals) != 4:
                raise PromptError(f"{at}box must be (row0, col0, row1, col1), got {box!r}")
            r0, c0, r1, c1 = vals
            r0, c0 = max(0.0, r0), max(0.0, c0)
            r1, c1 = min(float(h), r1), min(float(w), c1)
            if not (r1 - r0 >= 1 and c1 - c0 >= 1):
                raise PromptError(f"{at}box {tuple(box)} is empty inside the image of {h}x{w} pixels "
                                  "(need row0 < row1 and col0 < col1; row1 and col1 are exclusive)")
            region = (int(np.floor(r0)), int(np.floor(c0)), int(np.ceil(r1)), int(np.ceil(c1)))
        prev = None
        if previous_mask is not None:
            arr = np.asarray(previous_mask)
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.shape != (h, w):
                raise PromptError(f"{at}previous_mask has shape {arr.shape}, the image {h}x{w}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise PromptError(f"{at}previous_mask holds NaN or infinite values")
            prev = arr > (0.5 if arr.dtype.kind == "f" else 0)
        return cls((h, w), tuple(clicks), region, prev)

    @property
    def empty(self) -> bool:
        """No click and no box (a previous mask alone is not a prompt)."""
        return not self.points and self.box is None

    @property
    def positive(self) -> list[Click]:
        return [p for p in self.points if p.positive]

    @property
    def negative(self) -> list[Click]:
        return [p for p in self.points if not p.positive]

    def extent(self, *, with_mask: bool = True) -> Region | None:
        """The bounding box of the box, the positive clicks and the previous mask (None when there is none)."""
        boxes = []
        if self.box is not None:
            boxes.append(self.box)
        for p in self.positive:
            boxes.append((int(p.row), int(p.col), int(p.row) + 1, int(p.col) + 1))
        if with_mask and self.previous_mask is not None:
            b = bbox(self.previous_mask)
            if b is not None:
                boxes.append(b)
        if not boxes:
            return None
        a = np.array(boxes)
        return int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())

    def needs_first_pass(self) -> bool:
        """Clicks only, and no previous mask that shows the object's extent: nothing says where to zoom yet."""
        has_mask = self.previous_mask is not None and bool(self.previous_mask.any())
        return self.box is None and not has_mask

    def with_mask(self, mask: np.ndarray | None) -> Prompts:
        return Prompts(self.shape, self.points, self.box, None if mask is None else np.asarray(mask, bool))


def _number(v: Any, what: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise PromptError(f"{what} must be a number, got {v!r}")
    f = float(v)
    if not np.isfinite(f):
        raise PromptError(f"{what} must be finite, got {v!r}")
    return f


# --------------------------------------------------------------------------- geometry


def bbox(mask: np.ndarray) -> Region | None:
    """The bounding box ``(row0, col0, row1, col1)`` (ends exclusive) of a mask's foreground, None if empty."""
    m = np.asarray(mask, bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def zoom_region(shape: tuple[int, int], extent: Region | None, *, margin: float, min_zoom: float) -> Region:
    """The square region run for a prompt: ``extent`` grown by ``margin`` (a fraction of its larger side), at
    least ``min_zoom`` of the image's longer side, moved inside the image (narrower only where the image is).
    The whole image when there is no extent."""
    h, w = int(shape[0]), int(shape[1])
    if extent is None:
        return 0, 0, h, w
    r0, c0, r1, c1 = extent
    side = max(r1 - r0, c1 - c0) * (1.0 + float(margin))
    side = max(side, float(min_zoom) * max(h, w), 8.0)
    sh, sw = min(h, int(round(side))), min(w, int(round(side)))
    cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    top = int(round(cr - sh / 2.0))
    left = int(round(cc - sw / 2.0))
    top = min(max(top, 0), h - sh)
    left = min(max(left, 0), w - sw)
    return top, left, top + sh, left + sw


def to_region(row: float, col: float, region: Region, size: tuple[int, int]) -> tuple[float, float]:
    """Pixel ``(row, col)`` of the image -> pixel coordinates in ``region`` resized to ``size`` (pixel centres
    map to pixel centres)."""
    r0, c0, r1, c1 = region
    return ((row - r0 + 0.5) * size[0] / (r1 - r0) - 0.5, (col - c0 + 0.5) * size[1] / (c1 - c0) - 0.5)


def disks(centres: Sequence[tuple[float, float]], size: tuple[int, int], radius: float) -> np.ndarray:
    """float32 (H, W): 1 within ``radius`` of any centre, else 0."""
    out = np.zeros(size, np.float32)
    if not centres:
        return out
    rr = np.arange(size[0], dtype=np.float32)[:, None]
    cc = np.arange(size[1], dtype=np.float32)[None, :]
    r2 = float(radius) ** 2
    for r, c in centres:
        lo_r, hi_r = max(0, int(np.floor(r - radius))), min(size[0], int(np.ceil(r + radius)) + 1)
        lo_c, hi_c = max(0, int(np.floor(c - radius))), min(size[1], int(np.ceil(c + radius)) + 1)
        if lo_r >= hi_r or lo_c >= hi_c:
            continue
        d = (rr[lo_r:hi_r] - r) ** 2 + (cc[:, lo_c:hi_c] - c) ** 2
        out[lo_r:hi_r, lo_c:hi_c] = np.maximum(out[lo_r:hi_r, lo_c:hi_c], (d <= r2).astype(np.float32))
    return out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask resized to ``size``: a target pixel is set when at least half of its area is."""
    m = np.asarray(mask, np.float32)
    if m.shape == tuple(size):
        return m > 0.5
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
    if m.shape[0] >= size[0] and m.shape[1] >= size[1]:
        out = F.adaptive_avg_pool2d(t, size) if (m.shape[0] % size[0] or m.shape[1] % size[1]) else \
            F.avg_pool2d(t, (m.shape[0] // size[0], m.shape[1] // size[1]))
    else:
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy() >= 0.5


def encode(prompts: Prompts, region: Region, size: tuple[int, int], radius: float) -> np.ndarray:
    """The guidance channels ``float32 (len(GUIDANCE_CHANNELS), *size)`` of ``prompts`` in ``region``
    resized to ``size``: positive clicks, negative clicks, previous mask, box."""
    out = np.zeros((len(GUIDANCE_CHANNELS), *size), np.float32)
    pos = [to_region(p.row, p.col, region, size) for p in prompts.positive]
    neg = [to_region(p.row, p.col, region, size) for p in prompts.negative]
    out[0] = disks(pos, size, radius)
    out[1] = disks(neg, size, radius)
    r0, c0, r1, c1 = region
    if prompts.previous_mask is not None:
        out[2] = resize_mask(prompts.previous_mask[r0:r1, c0:c1], size)
    if prompts.box is not None:
        b0, b1, b2, b3 = prompts.box
        sy, sx = size[0] / (r1 - r0), size[1] / (c1 - c0)
        top, bottom = int(round((b0 - r0) * sy)), int(round((b2 - r0) * sy))
        left, right = int(round((b1 - c0) * sx)), int(round((b3 - c0) * sx))
        top, left = max(0, top), max(0, left)
        bottom, right = min(size[0], max(bottom, top + 1)), min(size[1], max(right, left + 1))
        out[3, top:bottom, left:right] = 1.0
    return out


# --------------------------------------------------------------------------- the prompted mask


def apply_prompts(mask: np.ndarray, prompts: Prompts, radius: float) -> np.ndarray:
    """The final mask of a prompted prediction: each clicked pixel ends on its side (a disk of ``radius``
    image pixels is set around positive and cleared around negative clicks: the user said so), then only the
    connected parts the prompts point at are kept (those holding a positive click; without one, those
    overlapping the box)."""
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool).copy()
    size = m.shape
    if prompts.positive:
        m |= disks([(p.row, p.col) for p in prompts.positive], size, radius) > 0
    if prompts.negative:
        m &= ~(disks([(p.row, p.col) for p in prompts.negative], size, radius) > 0)
    if not m.any():
        return m
    lab, n = ndi.label(m)
    if n <= 1 and not prompts.box:
        return m
    keep = np.zeros(n + 1, bool)
    if prompts.positive:
        for p in prompts.positive:
            keep[lab[int(p.row), int(p.col)]] = True
    elif prompts.box is not None:
        r0, c0, r1, c1 = prompts.box
        keep[np.unique(lab[r0:r1, c0:c1])] = True
    else:
        return m
    keep[0] = False
    return keep[lab]


def click_radius_in_image(region: Region, size: tuple[int, int], radius: float) -> float:
    """The click disks' radius in image pixels when ``region`` is run at ``size``."""
    r0, c0, r1, c1 = region
    return max(0.5, float(radius) * max((r1 - r0) / size[0], (c1 - c0) / size[1]))


# --------------------------------------------------------------------------- the simulated user


def _padded_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest pixel outside it (the image border counts
    as outside, as in RITM's clicker)."""
    from scipy import ndimage as ndi

    padded = np.pad(np.asarray(region, bool), 1)
    return ndi.distance_transform_edt(padded)[1:-1, 1:-1]


def next_click(truth: np.ndarray, prediction: np.ndarray | None, rng: np.random.Generator | None = None,
               power: float = 2.0) -> Click | None:
    """The simulated user's next click (RITM protocol): in the larger error region (missed object pixels ->
    a positive click, false ones -> negative), at its point farthest from the region's boundary.  With
    ``rng`` the point is drawn with probability proportional to that distance ** ``power`` (training).
    None when the prediction equals the truth."""
    t = np.asarray(truth, bool)
    p = np.zeros_like(t) if prediction is None else np.asarray(prediction, bool)
    fn_dt = _padded_distance(t & ~p)
    fp_dt = _padded_distance(~t & p)
    fn_max, fp_max = float(fn_dt.max(initial=0.0)), float(fp_dt.max(initial=0.0))
    if fn_max == 0.0 and fp_max == 0.0:
        return None
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    if rng is None:
        r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    else:
        w = dt.ravel().astype(np.float64) ** power
        idx = int(rng.choice(w.size, p=w / w.sum()))
        r, c = np.unravel_index(idx, dt.shape)
    return Click(float(r), float(c), positive)


def ellipse_in_box(shape: tuple[int, int], box: Region) -> np.ndarray:
    """The ellipse inscribed in ``box``: the trivial answer to a box prompt (a baseline for evaluation)."""
    r0, c0, r1, c1 = box
    rr = np.arange(shape[0], dtype=np.float64)[:, None] + 0.5
    cc = np.arange(shape[1], dtype=np.float64)[None, :] + 0.5
    cy, cx = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    ry, rx = max((r1 - r0) / 2.0, 0.5), max((c1 - c0) / 2.0, 0.5)
    return ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1.0


@dataclass
class TrainingView:
    """One prompted training view of an image: the region to crop, the first prompts (in image pixels) and
    how many corrective clicks the trainer adds on the model's own predictions."""

    kind: str  # "box", "first_click", "zoomed_clicks", "corrections" or "negative"
    region: Region
    prompts: Prompts
    iterations: int


def _jittered_box(box: Region, shape: tuple[int, int], jitter: float, rng: np.random.Generator) -> Region:
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    d = rng.uniform(-jitter, jitter, 4) * np.array([h, w, h, w])
    nr0, nc0 = int(round(r0 + d[0])), int(round(c0 + d[1]))
    nr1, nc1 = int(round(r1 + d[2])), int(round(c1 + d[3]))
    nr0, nc0 = min(max(nr0, 0), shape[0] - 1), min(max(nc0, 0), shape[1] - 1)
    nr1, nc1 = max(min(nr1, shape[0]), nr0 + 1), max(min(nc1, shape[1]), nc0 + 1)
    return nr0, nc0, nr1, nc1


def _random_clicks(truth: np.ndarray, rng: np.random.Generator, n_pos: int, n_neg: int,
                   region: Region) -> list[Click]:
    """First clicks of a simulated user: positives inside the object (interior points likelier), negatives
    in the background of ``region``, mostly near the object."""
    from scipy import ndimage as ndi

    clicks: list[Click] = []
    r0, c0, r1, c1 = region
    inside = np.zeros(truth.shape, np.float64)
    inside[r0:r1, c0:c1] = _padded_distance(truth)[r0:r1, c0:c1]
    for _ in range(n_pos):
        w = inside.ravel() ** 2
        if w.sum() <= 0:
            break
        idx = int(rng.choice(w.size, p=w / w.sum()))
        r, c = np.unravel_index(idx, truth.shape)
        clicks.append(Click(float(r), float(c), True))
        inside[max(0, r - 2):r + 3, max(0, c - 2):c + 3] = 0  # not twice at the same spot
    if n_neg:
        bg = np.zeros_like(truth)
        bg[r0:r1, c0:c1] = True
        bg &= ~ndi.binary_dilation(truth, iterations=2)
        near = bg & ndi.binary_dilation(truth, iterations=max(3, int(0.15 * max(r1 - r0, c1 - c0))))
        pool = near if near.any() and rng.random() < 0.7 else bg
        cand = np.flatnonzero(pool.ravel())
        for idx in rng.choice(cand, size=min(n_neg, cand.size), replace=False) if cand.size else ():
            r, c = np.unravel_index(int(idx), truth.shape)
            clicks.append(Click(float(r), float(c), False))
    return clicks


def training_view(truth: np.ndarray, rng: np.random.Generator, cfg: InteractiveConfig) -> TrainingView:
    """Draw one prompted view of an image whose object mask is ``truth`` (bool H x W, pixels of the image the
    dataset cached): the prompt kind, the region the Predictor would run for it, the first prompts and the
    number of corrective clicks.  An image without an object gets negative clicks only (a user told "nothing
    here")."""
    t = np.asarray(truth, bool)
    shape = t.shape
    obj = bbox(t)
    whole: Region = (0, 0, shape[0], shape[1])
    if obj is None:
        clicks = _random_clicks(t, rng, 0, int(rng.integers(1, 3)), whole)
        return TrainingView("negative", whole, Prompts(shape, tuple(clicks)), 0)
    u = rng.random()
    if u < cfg.box_share:
        box = _jittered_box(obj, shape, cfg.box_jitter, rng)
        # half the box views start from the ellipse inscribed in the box (InteractiveConfig.box_prior)
        prior = ellipse_in_box(shape, box) if rng.random() < 0.5 else None
        prompts = Prompts(shape, (), box, prior)
        region = zoom_region(shape, prompts.extent(), margin=cfg.zoom_margin, min_zoom=cfg.min_zoom)
        return TrainingView("box", region, prompts, int(rng.integers(0, cfg.max_iterations + 1)))
    n_pos = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    n_neg = int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1]))
    if rng.random() < cfg.first_click_share:
        clicks = _random_clicks(t, rng, n_pos, n_neg, whole)
        return TrainingView("first_click", whole, Prompts(shape, tuple(clicks)),
                            int(rng.integers(0, min(1, cfg.max_iterations) + 1)))
    if rng.random() < cfg.synthetic_share:
        # A user correcting a wrong mask: a previous mask with the errors models make (too large, too small,
        # shifted, cut, a false blob, or far too large), the clicks a user puts on those errors, and the
        # region the Predictor runs for them.
        prev = corrupt_mask(t, rng)
        first = _random_clicks(t, rng, 1, 0, whole)
        clicks = list(first) + corrective_clicks(t, prev, rng, int(rng.integers(1, 4)))
        prompts = Prompts(shape, tuple(clicks), None, prev)
        region = zoom_region(shape, prompts.extent(), margin=cfg.zoom_margin, min_zoom=cfg.min_zoom)
        return TrainingView("corrections", region, prompts, int(rng.integers(0, min(1, cfg.max_iterations) + 1)))
    # Later clicks: the Predictor zooms on the previous mask and the clicks; a previous mask is never exact,
    # so the region is the object's box moved and scaled a little.
    rough = _jittered_box(obj, shape, max(cfg.box_jitter, 0.15), rng)
    margin = cfg.zoom_margin * float(rng.uniform(0.6, 1.5))
    region = zoom_region(shape, rough, margin=margin, min_zoom=cfg.min_zoom)
    clicks = _random_clicks(t, rng, n_pos, n_neg, region)
    return TrainingView("zoomed_clicks", region, Prompts(shape, tuple(clicks)),
                        int(rng.integers(0, cfg.max_iterations + 1)))


def corrupt_mask(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong previous mask for ``truth``, as a model might give: grown, shrunk, shifted, cut by a line,
    with a false blob beside it, far too large, or clipped by the edge of a region too small for the object
    (one or two of these at random)."""
    from scipy import ndimage as ndi

    m = np.asarray(truth, bool).copy()
    r0, c0, r1, c1 = bbox(m)
    size = max(r1 - r0, c1 - c0)
    h, w = m.shape
    kinds = rng.choice(["grow", "shrink", "shift", "cut", "blob", "huge", "clipped"], size=int(rng.integers(1, 3)),
                       replace=False, p=[0.15, 0.15, 0.15, 0.2, 0.1, 0.1, 0.15])
    for kind in kinds:
        if not m.any():
            break
        if kind == "grow":
            m = ndi.distance_transform_edt(~m) <= max(1.0, rng.uniform(0.03, 0.25) * size)
        elif kind == "shrink":
            shrunk = ndi.distance_transform_edt(m) > max(1.0, rng.uniform(0.03, 0.2) * size)
            m = shrunk if shrunk.any() else m
        elif kind == "shift":
            dy, dx = (rng.uniform(-0.3, 0.3, 2) * size).astype(int)
            m = np.roll(m, (dy, dx), axis=(0, 1))
        elif kind == "cut":
            rr, cc = np.nonzero(m)
            cy, cx = rr.mean(), cc.mean()
            angle = rng.uniform(0, 2 * np.pi)
            offset = rng.uniform(-0.3, 0.3) * size
            yy, xx = np.mgrid[:h, :w]
            m &= (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle) < offset
        elif kind == "blob":
            ry, rx = (rng.uniform(0.15, 0.5, 2) * size).clip(2)
            cy = np.clip((r0 + r1) / 2 + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2) * size, 0, h - 1)
            cx = np.clip((c0 + c1) / 2 + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2) * size, 0, w - 1)
            yy, xx = np.mgrid[:h, :w]
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind == "huge":
            m = ndi.distance_transform_edt(~m) <= max(2.0, rng.uniform(0.3, 1.0) * size)
        elif kind == "clipped":  # cut off by the edge of a region too small for the object
            side = max(4, int(rng.uniform(0.4, 0.8) * size))
            rr, cc = np.nonzero(m)
            k = int(rng.integers(len(rr)))
            top, left = int(rr[k]) - side // 2, int(cc[k]) - side // 2
            window = np.zeros_like(m)
            window[max(0, top):top + side, max(0, left):left + side] = True
            clipped = m & window
            m = clipped if clipped.any() else m
    return m


def corrective_clicks(truth: np.ndarray, previous: np.ndarray, rng: np.random.Generator, n: int) -> list[Click]:
    """``n`` clicks a user puts on the errors of ``previous`` (drawn in the larger error region, each click
    counted as fixing the pixels near it before the next is placed)."""
    t = np.asarray(truth, bool)
    p = np.asarray(previous, bool).copy()
    clicks: list[Click] = []
    for _ in range(n):
        c = next_click(t, p, rng)
        if c is None:
            break
        clicks.append(c)
        near = disks([(c.row, c.col)], t.shape, max(3.0, 0.05 * max(t.shape))) > 0
        p[near] = t[near]
    return clicks
