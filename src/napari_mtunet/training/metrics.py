"""Evaluation metrics with 95% bootstrap confidence intervals.

Classification: accuracy, balanced accuracy, per-class precision/recall,
macro F1, one-vs-rest ROC AUC and the confusion matrix (all scikit-learn).

Segmentation (binary masks): Dice and IoU are computed **per image** and
averaged, with this convention for empty masks:

- prediction empty and ground truth empty -> Dice = IoU = 1 (a correct "no lesion");
- exactly one of them empty -> Dice = IoU = 0.

They are reported over all images with a mask and over *lesion-positive*
images only (ground truth not empty), plus the *global* (pooled-pixel) Dice,
``2 * sum|P∩T| / (sum|P| + sum|T|)`` over the whole split, which some papers
report instead.

Every number is a :class:`MetricValue`: value, 95% percentile-bootstrap CI
(resampling images), the split name and n.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95
EMPTY_MASK_CONVENTION = (
    "Dice/IoU per image, averaged; both masks empty = 1, exactly one empty = 0; "
    "'lesion' = images whose ground-truth mask is not empty; 'global Dice' pools all pixels."
)


@dataclass
class MetricValue:
    """A metric with its 95% bootstrap CI, the split it was computed on and n."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    split: str = "test"

    def format(self, digits: int = 3) -> str:
        if not math.isfinite(self.value):
            return f"{self.name}: n/a (split {self.split}, n={self.n})"
        ci = (
            f" [95% CI {self.ci_low:.{digits}f}-{self.ci_high:.{digits}f}]"
            if math.isfinite(self.ci_low) and math.isfinite(self.ci_high)
            else ""
        )
        return f"{self.name}: {self.value:.{digits}f}{ci} (split {self.split}, n={self.n})"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _nan() -> float:
    return float("nan")


def bootstrap_indices(n: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` resampling indices (all resamples drawn at once)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentiles(vals: np.ndarray, n_boot: int, level: float) -> tuple[float, float]:
    vals = vals[np.isfinite(vals)]
    if len(vals) < max(10, n_boot // 10):
        return _nan(), _nan()
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(vals, alpha)), float(np.quantile(vals, 1.0 - alpha))


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = CI_LEVEL,
    batched: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(indices)`` over ``n`` resampled items.

    ``batched``, when given, computes the statistic for all resamples at once
    from the ``(n_boot, n)`` index matrix (vectorised; same resamples as the
    loop).  Resamples for which the statistic is undefined (NaN, e.g. an AUC
    with a single class present) are skipped.
    """
    if n < 2 or n_boot < 1:
        return _nan(), _nan()
    idx = bootstrap_indices(n, n_boot, seed)
    if batched is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            return _percentiles(np.asarray(batched(idx), dtype=np.float64), n_boot, level)
    vals = []
    for row in idx:
        try:
            v = float(statistic(row))
        except ValueError:
            continue
        vals.append(v)
    return _percentiles(np.asarray(vals, dtype=np.float64), n_boot, level)


def _metric(name, stat, n, split, n_boot, seed, batched=None) -> MetricValue:
    if n == 0:
        return MetricValue(name, _nan(), _nan(), _nan(), 0, split)
    try:
        value = float(stat(np.arange(n)))
    except ValueError:
        value = _nan()
    lo, hi = (bootstrap_ci(n, stat, n_boot=n_boot, seed=seed, batched=batched) if math.isfinite(value)
              else (_nan(), _nan()))
    return MetricValue(name, value, lo, hi, n, split)


def batched_mean(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Mean of ``values`` over each resample (rows of an index matrix)."""
    values = np.asarray(values, dtype=np.float64)
    return lambda idx: values[idx].mean(axis=1)


def _rows(n: int, idx: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """``(index matrix (B, n), single)``: all items once when ``idx`` is None."""
    if idx is None:
        return np.arange(n)[None], True
    return np.asarray(idx), False


def pooled_dice(inter: np.ndarray, p_sum: np.ndarray, t_sum: np.ndarray, idx: np.ndarray | None = None):
    """Global (pooled-pixel) Dice ``2 * sum|P&T| / (sum|P| + sum|T|)``; 1 when every mask is empty.

    From per-image sums (:func:`seg_sums`); ``idx`` (B, n): one value per
    resample (vectorised bootstrap), else one float over all images.
    """
    inter, p_sum, t_sum = (np.asarray(v, dtype=np.float64) for v in (inter, p_sum, t_sum))
    rows, single = _rows(len(inter), idx)
    d = p_sum[rows].sum(1) + t_sum[rows].sum(1)
    out = np.where(d == 0, 1.0, 2.0 * inter[rows].sum(1) / np.where(d == 0, 1.0, d))
    return float(out[0]) if single else out


def batched_pooled_dice(inter: np.ndarray, p_sum: np.ndarray, t_sum: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Global (pooled-pixel) Dice over each resample."""
    return lambda idx: pooled_dice(inter, p_sum, t_sum, idx)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray | None = None):
    """Share of correct predictions (per resample when ``idx`` (B, n) is given)."""
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    if not len(correct):
        return _nan() if idx is None else np.full(len(idx), np.nan)
    rows, single = _rows(len(correct), idx)
    out = correct[rows].mean(axis=1)
    return float(out[0]) if single else out


def _class_counts(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[int], rows: np.ndarray):
    """Per resample and class: ``(support, true positives, predicted)``, each ``(B, k)``."""
    labels = np.asarray(list(labels))
    t_onehot = (np.asarray(y_true)[:, None] == labels[None]).astype(np.float64)  # (n, k)
    p_onehot = (np.asarray(y_pred)[:, None] == labels[None]).astype(np.float64)
    return t_onehot[rows].sum(axis=1), (t_onehot * p_onehot)[rows].sum(axis=1), p_onehot[rows].sum(axis=1)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray | None = None):
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition; per resample with ``idx``).

    A class absent from the ground truth has no recall and is left out (not
    counted as 0); NaN when there are no labels.  No warnings.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return _nan() if idx is None else np.full(len(idx), np.nan)
    rows, single = _rows(len(y_true), idx)
    support, hits, _ = _class_counts(y_true, y_pred, np.unique(y_true), rows)
    present = support > 0
    recall = np.where(present, hits / np.where(present, support, 1.0), 0.0)
    out = recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return float(out[0]) if single else out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[int], idx: np.ndarray | None = None):
    """Mean F1 over ``labels`` (a class with no true and no predicted item scores 0, like zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true) or not len(labels):
        return _nan() if idx is None else np.full(len(idx), np.nan)
    rows, single = _rows(len(y_true), idx)
    support, tp, predicted = _class_counts(y_true, y_pred, labels, rows)
    denom = support + predicted  # 2 tp + fp + fn
    out = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0).mean(axis=1)
    return float(out[0]) if single else out


def _batched_auc(y_true: np.ndarray, y_prob: np.ndarray, k: int):
    """Vectorised bootstrap OvR AUC over index matrices (Mann-Whitney with resampling multiplicities)."""

    def auc(idx):
        n = len(y_true)
        b = len(idx)
        w = np.zeros((b, n))
        np.add.at(w, (np.repeat(np.arange(b), idx.shape[1]), idx.reshape(-1)), 1.0)
        per_class = []
        for c in range(k):
            pos = y_true == c
            if not pos.any() or pos.all():
                per_class.append(np.full(b, np.nan))
                continue
            s = y_prob[:, c]
            sp, sn = s[pos], s[~pos]
            cmp = (sp[:, None] > sn[None]).astype(np.float64) + 0.5 * (sp[:, None] == sn[None])
            wp, wn = w[:, pos], w[:, ~pos]
            num = np.einsum("bi,ij,bj->b", wp, cmp, wn)
            den = wp.sum(1) * wn.sum(1)
            per_class.append(np.where(den > 0, num / np.where(den > 0, den, 1), np.nan))
        vals = np.stack(per_class, axis=1)  # (B, k): NaN where a class is absent from the resample
        if k == 2:
            return vals[:, 1]
        finite = np.isfinite(vals)
        present = finite.sum(axis=1)
        mean = np.where(finite, vals, 0.0).sum(axis=1) / np.maximum(present, 1)
        return np.where(present >= 2, mean, np.nan)

    return auc if len(y_true) <= 3000 else None


# --------------------------------------------------------------------------- segmentation


def dice_iou_per_image(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks ``(N, H, W)`` with the empty-mask convention."""
    return dice_iou_from_sums(*seg_sums(pred, true))


def seg_sums(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``(|P&T|, |P|, |T|)`` of binary masks ``(N, H, W)`` (or one ``(H, W)`` pair)."""
    pred = np.asarray(pred).astype(bool)
    true = np.asarray(true).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {true.shape}")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    return _seg_sums(pred, true)


def _seg_sums(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = pred.shape[0]
    p = pred.reshape(n, -1)
    t = true.reshape(n, -1)
    return (p & t).sum(1).astype(np.float64), p.sum(1).astype(np.float64), t.sum(1).astype(np.float64)


def dice_iou_from_sums(inter, p_sum, t_sum) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU from the sums of :func:`seg_sums` (both masks empty = 1)."""
    denom = p_sum + t_sum
    union = denom - inter
    both_empty = denom == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both_empty, 1.0, 2.0 * inter / np.where(both_empty, 1.0, denom))
        iou = np.where(both_empty, 1.0, inter / np.where(union == 0, 1.0, union))
    return dice, iou


def segmentation_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    *,
    split: str = "test",
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """Dice/IoU (all images and lesion-positive only) and pooled global Dice, with CIs."""
    pred = np.asarray(pred).astype(bool)
    true = np.asarray(true).astype(bool)
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {true.shape}")
    inter, p_sum, t_sum = _seg_sums(pred, true) if len(pred) else (np.zeros(0),) * 3
    return segmentation_metrics_from_sums(inter, p_sum, t_sum, split=split, n_boot=n_boot, seed=seed)


def segmentation_metrics_from_sums(
    inter: np.ndarray,
    p_sum: np.ndarray,
    t_sum: np.ndarray,
    *,
    split: str = "test",
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """:func:`segmentation_metrics` from the per-image sums of :func:`seg_sums` (``|P&T|, |P|, |T|``), e.g. of
    predictions kept from several runs (the experiments' pooled out-of-fold metrics)."""
    inter, p_sum, t_sum = (np.asarray(v, dtype=np.float64) for v in (inter, p_sum, t_sum))
    dice, iou = dice_iou_from_sums(inter, p_sum, t_sum)
    pos = np.flatnonzero(t_sum > 0)

    def mean_of(arr, subset=None):
        base = arr if subset is None else arr[subset]
        return lambda idx: float(np.mean(base[idx])) if len(base) else _nan()

    def global_dice(idx):
        return pooled_dice(inter, p_sum, t_sum, np.asarray(idx)[None])[0]

    n, n_pos = len(dice), len(pos)
    return {
        "dice": _metric("Dice", mean_of(dice), n, split, n_boot, seed, batched_mean(dice)),
        "iou": _metric("IoU", mean_of(iou), n, split, n_boot, seed + 1, batched_mean(iou)),
        "dice_lesion": _metric("Dice (lesion images)", mean_of(dice, pos), n_pos, split, n_boot, seed + 2,
                               batched_mean(dice[pos])),
        "iou_lesion": _metric("IoU (lesion images)", mean_of(iou, pos), n_pos, split, n_boot, seed + 3,
                              batched_mean(iou[pos])),
        "dice_global": _metric("Dice (global, pooled pixels)", global_dice, n, split, n_boot, seed + 4,
                               batched_pooled_dice(inter, p_sum, t_sum)),
    }


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: Sequence[int],
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    split: str = "test",
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, OvR AUC (with CIs), per-class P/R, confusion matrix.

    Averages over classes (balanced accuracy, macro F1, AUC) run over the
    classes **present** in the ground truth of this split, all three alike:
    a class with no image here has no recall, F1 or AUC, and counting it as
    0 would punish the model for the data.  ``absent_classes`` names them
    (the report says so); predictions *into* an absent class still count as
    errors of the present classes.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    k = len(class_names)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), k):
        raise ValueError(f"probabilities must have shape ({len(y_true)}, {k}), got {y_prob.shape}")
    if not np.isfinite(y_prob).all():  # argmax of NaN rows is class 0: plausible-looking, meaningless metrics
        raise ValueError(
            f"{int((~np.isfinite(y_prob).all(axis=1)).sum())} of {len(y_true)} probability rows hold NaN/inf; "
            "classification metrics refused (the model's outputs are broken)"
        )
    y_pred = y_prob.argmax(1) if len(y_true) else np.zeros(0, dtype=np.int64)
    labels = list(range(k))
    n = len(y_true)
    present = [c for c in labels if (y_true == c).any()]
    averaged = present or labels

    def one(batched):
        return lambda idx: float(batched(np.asarray(idx)[None])[0])

    b_acc = lambda idx: accuracy(y_true, y_pred, idx)  # noqa: E731
    b_bacc = lambda idx: balanced_accuracy(y_true, y_pred, idx)  # noqa: E731
    b_f1 = lambda idx: macro_f1(y_true, y_pred, averaged, idx)  # noqa: E731
    b_auc = _batched_auc(y_true, y_prob, k)

    def auc(idx):
        t = y_true[idx]
        here = np.unique(t)
        if len(here) < 2:
            return _nan()
        if k == 2:
            return roc_auc_score(t, y_prob[idx, 1])
        if len(here) < k:
            # OvR AUC over the classes present (macro); sklearn refuses missing ones.
            return float(np.mean([roc_auc_score(t == c, y_prob[idx, c]) for c in here]))
        p = y_prob[idx] / np.clip(y_prob[idx].sum(1, keepdims=True), 1e-12, None)
        return roc_auc_score(t, p, multi_class="ovr", average="macro", labels=labels)

    out: dict[str, Any] = {
        "accuracy": _metric("accuracy", one(b_acc), n, split, n_boot, seed + 10, b_acc),
        "balanced_accuracy": _metric("balanced accuracy", one(b_bacc), n, split, n_boot, seed + 11, b_bacc),
        "macro_f1": _metric("macro F1", one(b_f1), n, split, n_boot, seed + 12, b_f1),
        "auc_ovr": _metric("ROC AUC (one-vs-rest, macro)", auc, n, split, n_boot, seed + 13, b_auc),
    }
    if n:
        prec, rec, _, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        cm = confusion_matrix(y_true, y_pred, labels=labels)
    else:
        prec = rec = np.zeros(k)
        support = np.zeros(k, dtype=int)
        cm = np.zeros((k, k), dtype=int)
    out["per_class"] = {
        name: {"precision": float(prec[i]), "recall": float(rec[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = cm.astype(int).tolist()
    out["class_names"] = list(class_names)
    out["absent_classes"] = [class_names[c] for c in labels if c not in present] if n else []
    out["averaged_over"] = [class_names[c] for c in averaged]
    return out


def absent_classes_note(classification: dict[str, Any]) -> str | None:
    """The sentence a report prints when classes have no image in the split (None when all are present)."""
    absent = list(classification.get("absent_classes") or [])
    if not absent:
        return None
    over = list(classification.get("averaged_over") or [])
    return (f"no image of class{'es' if len(absent) > 1 else ''} {', '.join(absent)} in this split: "
            f"balanced accuracy, macro F1 and AUC average the {len(over)} class{'es' if len(over) != 1 else ''} "
            f"present ({', '.join(over)})")


# --------------------------------------------------------------------------- report


@dataclass
class EvaluationReport:
    """Everything measured on one split; ``to_dict`` is JSON-safe, ``format`` is human-readable."""

    split: str
    n_images: int
    classification: dict[str, Any] | None = None
    segmentation: dict[str, MetricValue] | None = None
    threshold: float = 0.5
    notes: list[str] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Flat ``{name: value}`` of the headline metrics (for CSV tables and checkpoints)."""
        out: dict[str, float] = {}
        for group in (self.classification or {}, self.segmentation or {}):
            for key, v in group.items():
                if isinstance(v, MetricValue):
                    out[key] = v.value
                    out[key + "_ci_low"] = v.ci_low
                    out[key + "_ci_high"] = v.ci_high
                    out[key + "_n"] = v.n
        return out

    def to_dict(self) -> dict[str, Any]:
        def conv(d):
            if d is None:
                return None
            return {k: (v.to_dict() if isinstance(v, MetricValue) else v) for k, v in d.items()}

        return {
            "split": self.split,
            "n_images": self.n_images,
            "threshold": self.threshold,
            "classification": conv(self.classification),
            "segmentation": conv(self.segmentation),
            "segmentation_convention": EMPTY_MASK_CONVENTION,
            "notes": list(self.notes),
        }

    def format(self) -> str:
        lines = [f"Evaluation on split '{self.split}' ({self.n_images} images)"]
        if self.classification:
            c = self.classification
            lines.append("Classification:")
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"):
                lines.append("  " + c[key].format())
            note = absent_classes_note(c)
            if note:
                lines.append("  " + note)
            lines.append("  per class (precision / recall / support):")
            absent = set(c.get("absent_classes") or [])
            predicted = [sum(col) for col in zip(*c["confusion_matrix"])] if c["confusion_matrix"] else []
            for i, (name, pc) in enumerate(c["per_class"].items()):
                if name in absent:
                    times = predicted[i] if i < len(predicted) else 0
                    lines.append(f"    {name}: absent from this split (0 images; predicted for {times})")
                    continue
                lines.append(f"    {name}: {pc['precision']:.3f} / {pc['recall']:.3f} / {pc['support']}")
            names = c["class_names"]
            lines.append("  confusion matrix (rows = true, columns = predicted): " + ", ".join(names))
            width = max(6, *(len(s) for s in names))
            for name, row in zip(names, c["confusion_matrix"]):
                lines.append("    " + name.ljust(width) + " " + " ".join(f"{v:>5d}" for v in row))
        if self.segmentation:
            lines.append(f"Segmentation (threshold {self.threshold}):")
            for v in self.segmentation.values():
                lines.append("  " + v.format())
            lines.append("  convention: " + EMPTY_MASK_CONVENTION)
        lines.extend(self.notes)
        return "\n".join(lines)
