"""Evaluation of interactive segmentation with the standard simulated user (the RITM protocol).

For each image with an object (a non-empty ground-truth mask; the object is the whole mask):

- **box**: the object's bounding box is the prompt; Dice and IoU of the result, beside two trivial answers
  to the same box (the filled box and the ellipse inscribed in it);
- **clicks**: the first click goes at the point of the object farthest from its boundary; each next click
  at the farthest point of the larger error region (missed pixels -> a positive click, false ones ->
  negative), with the previous mask fed back (:func:`napari_mtunet.prompts.next_click`), up to
  ``max_clicks``.  A user stops once the IoU reaches ``stop_iou`` (after at least ``min_clicks``); later
  clicks keep that IoU.  NoC@t is the number of clicks to reach IoU t (``max_clicks`` when never reached).
- after each click, whether the clicked pixel is on the clicked side (positive inside the mask, negative
  outside), for the returned mask and for the network's raw output.

Everything goes through :meth:`napari_mtunet.inference.Predictor.predict`, the code path of the API and the
napari widget, at each image's own resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..prompts import bbox, ellipse_in_box, next_click
from .metrics import MetricValue, _metric, batched_mean

IOU_THRESHOLDS = (0.85, 0.90)
REPORTED_CLICKS = (1, 3, 5)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else float((p & t).sum()) / union


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    d = int(p.sum()) + int(t.sum())
    return 1.0 if d == 0 else 2.0 * float((p & t).sum()) / d


@dataclass
class ImageResult:
    name: str
    box_dice: float
    box_iou: float
    ellipse_dice: float
    rectangle_dice: float
    ious: list[float]  # IoU after click 1..max_clicks (carried forward after the user stops)
    clicks_done: int
    side_ok: list[bool]  # returned mask, per click
    side_ok_raw: list[bool]  # network output before the prompts are applied, per click
    box_correct_class: bool | None = None
    seconds: list[float] = field(default_factory=list)  # per prompted prediction

    def noc(self, threshold: float, max_clicks: int) -> int:
        for k, v in enumerate(self.ious, start=1):
            if v >= threshold:
                return k
        return max_clicks


@dataclass
class InteractiveReport:
    split: str
    max_clicks: int
    stop_iou: float
    images: list[ImageResult]
    n_boot: int = 1000
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.images)

    def curve(self) -> np.ndarray:
        """``(n_images, max_clicks)`` IoU after each click."""
        return np.array([r.ious for r in self.images], np.float64).reshape(self.n, self.max_clicks)

    def metrics(self) -> dict[str, MetricValue]:
        """Every headline number with its 95% bootstrap CI (resampling images)."""
        out: dict[str, MetricValue] = {}

        def add(name: str, values: Iterable[float]) -> None:
            v = np.asarray(list(values), np.float64)
            out[name] = _metric(name, lambda i, v=v: float(v[i].mean()), len(v), self.split, self.n_boot, 0,
                                batched_mean(v))

        add("box_dice", (r.box_dice for r in self.images))
        add("box_iou", (r.box_iou for r in self.images))
        add("ellipse_in_box_dice", (r.ellipse_dice for r in self.images))
        add("box_itself_dice", (r.rectangle_dice for r in self.images))
        add("box_dice_minus_ellipse", (r.box_dice - r.ellipse_dice for r in self.images))
        curve = self.curve()
        for k in REPORTED_CLICKS:
            if k <= self.max_clicks:
                add(f"iou_at_{k}", curve[:, k - 1])
        for t in IOU_THRESHOLDS:
            add(f"noc_{round(t * 100)}", (r.noc(t, self.max_clicks) for r in self.images))
        for t in IOU_THRESHOLDS:
            add(f"reached_{round(t * 100)}_within_{self.max_clicks}",
                (float(r.noc(t, self.max_clicks) < self.max_clicks or r.ious[-1] >= t) for r in self.images))
        side = [s for r in self.images for s in r.side_ok]
        raw = [s for r in self.images for s in r.side_ok_raw]
        if side:
            out["clicks_on_their_side"] = MetricValue("clicks_on_their_side", float(np.mean(side)), float("nan"),
                                                      float("nan"), len(side), self.split)
            out["clicks_on_their_side_raw"] = MetricValue("clicks_on_their_side_raw", float(np.mean(raw)),
                                                          float("nan"), float("nan"), len(raw), self.split)
        classes = [r.box_correct_class for r in self.images if r.box_correct_class is not None]
        if classes:
            add("box_class_accuracy", (float(c) for c in classes))
        secs = [s for r in self.images for s in r.seconds]
        if secs:
            out["seconds_per_prediction_median"] = MetricValue(
                "seconds_per_prediction_median", float(np.median(secs)), float("nan"), float("nan"), len(secs),
                self.split)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "n_images": self.n,
            "max_clicks": self.max_clicks,
            "stop_iou": self.stop_iou,
            "protocol": __doc__.split("\n\n")[1].strip() if __doc__ else "",
            "metrics": {k: v.to_dict() for k, v in self.metrics().items()},
            "mean_iou_curve": self.curve().mean(axis=0).tolist() if self.n else [],
            "images": [
                {"name": r.name, "box_dice": r.box_dice, "ellipse_dice": r.ellipse_dice, "ious": r.ious,
                 "clicks_done": r.clicks_done, "noc_85": r.noc(0.85, self.max_clicks),
                 "noc_90": r.noc(0.90, self.max_clicks)}
                for r in self.images
            ],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        m = self.metrics()
        lines = [f"Interactive segmentation on split '{self.split}' ({self.n} images with an object; "
                 f"simulated user: RITM protocol, up to {self.max_clicks} clicks, stops at IoU {self.stop_iou:.2f})"]
        if not self.n:
            return lines[0] + "\n  no image with an object to prompt"
        lines.append("Box prompt (the object's bounding box):")
        for key in ("box_dice", "box_iou", "ellipse_in_box_dice", "box_itself_dice", "box_dice_minus_ellipse",
                    "box_class_accuracy"):
            if key in m:
                lines.append("  " + m[key].format())
        lines.append("Clicks:")
        for key in [f"iou_at_{k}" for k in REPORTED_CLICKS] + [f"noc_{round(t * 100)}" for t in IOU_THRESHOLDS]:
            if key in m:
                lines.append("  " + m[key].format(2 if key.startswith("noc") else 3))
        for t in IOU_THRESHOLDS:
            key = f"reached_{round(t * 100)}_within_{self.max_clicks}"
            lines.append("  " + m[key].format())
        if "clicks_on_their_side" in m:
            lines.append(f"  clicked pixel on the clicked side: {m['clicks_on_their_side'].value:.1%} of "
                         f"{m['clicks_on_their_side'].n} clicks (network output before the prompts are applied: "
                         f"{m['clicks_on_their_side_raw'].value:.1%})")
        if "seconds_per_prediction_median" in m:
            lines.append(f"  median time per prompted prediction: "
                         f"{1000 * m['seconds_per_prediction_median'].value:.0f} ms")
        lines.extend(self.notes)
        return "\n".join(lines)


def evaluate_image(predictor: Any, image: np.ndarray, truth: np.ndarray, *, name: str = "", label: int | None = None,
                   max_clicks: int = 20, stop_iou: float = 0.90, min_clicks: int = 5) -> ImageResult:
    """Run the simulated user on one image whose object is ``truth`` (a non-empty mask, the image's size)."""
    t = np.asarray(truth, bool)
    box = bbox(t)
    if box is None:
        raise ValueError(f"{name}: the mask is empty: no object to prompt")
    seconds: list[float] = []

    def run(**prompts: Any):
        t0 = time.perf_counter()
        pred = predictor.predict(image, **prompts)
        seconds.append(time.perf_counter() - t0)
        return pred

    pred = run(box=box)
    box_mask = pred.mask > 0
    rect = np.zeros_like(t)
    rect[box[0]:box[2], box[1]:box[3]] = True
    correct = None if label is None or label < 0 or pred.class_index is None else bool(pred.class_index == label)
    ious: list[float] = []
    side, side_raw = [], []
    clicks: list[tuple[float, float, bool]] = []
    previous = None
    for k in range(max_clicks):
        click = next_click(t, previous)
        if click is None:  # perfect already
            break
        clicks.append((click.row, click.col, click.positive))
        pred = run(points=clicks, previous_mask=previous)
        mask = pred.mask > 0
        r, c = int(click.row), int(click.col)
        side.append(bool(mask[r, c]) == click.positive)
        raw = pred.probability[r, c] >= predictor.threshold if pred.probability is not None else mask[r, c]
        side_raw.append(bool(raw) == click.positive)
        ious.append(iou(mask, t))
        previous = mask
        if ious[-1] >= stop_iou and k + 1 >= min_clicks:
            break
    done = len(ious)
    last = ious[-1] if ious else 1.0
    ious = ious + [last] * (max_clicks - done)
    return ImageResult(name=name, box_dice=dice(box_mask, t), box_iou=iou(box_mask, t),
                       ellipse_dice=dice(ellipse_in_box(t.shape, box), t), rectangle_dice=dice(rect, t), ious=ious,
                       clicks_done=done, side_ok=side, side_ok_raw=side_raw, box_correct_class=correct,
                       seconds=seconds)


def evaluate_interactive(predictor: Any, items: Iterable[tuple[str, np.ndarray, np.ndarray, int | None]], *,
                         split: str = "test", max_clicks: int = 20, stop_iou: float = 0.90, min_clicks: int = 5,
                         n_boot: int = 1000, progress: Callable[[int, str], None] | None = None) -> InteractiveReport:
    """The simulated user on every ``(name, image, truth mask, class index or None)`` whose mask is not empty."""
    if not 1 <= int(max_clicks) <= 100:
        raise ValueError(f"max_clicks must be in [1, 100], got {max_clicks}")
    results, skipped = [], 0
    for i, (name, image, truth, label) in enumerate(items):
        if not np.asarray(truth).any():
            skipped += 1
            continue
        results.append(evaluate_image(predictor, image, truth, name=name, label=label, max_clicks=max_clicks,
                                      stop_iou=stop_iou, min_clicks=min_clicks))
        if progress is not None:
            progress(i + 1, name)
    report = InteractiveReport(split=split, max_clicks=int(max_clicks), stop_iou=float(stop_iou), images=results,
                               n_boot=n_boot)
    if skipped:
        report.notes.append(f"{skipped} image(s) with an empty mask (no object) were not prompted")
    return report
