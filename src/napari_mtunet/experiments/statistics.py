"""An experiment's statistics: paired t-tests over folds and out-of-fold metrics pooled over every fold."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..training.metrics import classification_metrics, segmentation_metrics_from_sums

#: The multi-task model is compared with each baseline on these metrics.
COMPARISONS = (
    ("seg_only", ("dice", "iou", "dice_lesion", "dice_global")),
    ("cls_only", ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")),
    ("multi_noskip", ("dice", "dice_lesion", "accuracy", "balanced_accuracy")),
)


def load_results(out: Path) -> list[dict]:
    """The result.json of every finished run in an experiment folder."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*/*/fold*/result.json"))]


def mean_sd(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, sample SD, n) of the finite values (NaN where undefined)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v)


def paired_tests(results: list[dict]) -> list[dict]:
    """Paired t-tests (over folds) of the multi-task model against each baseline."""
    from scipy import stats

    by = {(r["spec"]["encoder"], r["spec"]["variant"], r["spec"]["fold"]): r for r in results}
    encoders = sorted({r["spec"]["encoder"] for r in results})
    rows = []
    for enc in encoders:
        for base, metrics in COMPARISONS:
            folds = sorted(f for (e, v, f) in by if e == enc and v == base and (e, "multi", f) in by)
            for m in metrics:
                a = [by[(enc, "multi", f)]["metrics"].get(m) for f in folds]
                b = [by[(enc, base, f)]["metrics"].get(m) for f in folds]
                pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                row = {"encoder": enc, "comparison": f"multi vs {base}", "metric": m, "n_folds": len(pairs)}
                if len(pairs) >= 2:
                    x, y = np.array(pairs).T
                    diff = x - y
                    row.update(mean_multi=float(x.mean()), mean_baseline=float(y.mean()), mean_diff=float(diff.mean()))
                    if np.allclose(diff, diff[0]):
                        row.update(t=math.nan, p=math.nan)
                    else:
                        t, p = stats.ttest_rel(x, y)
                        row.update(t=float(t), p=float(p))
                    sd = diff.std(ddof=1)
                    half = stats.t.ppf(0.975, len(diff) - 1) * sd / math.sqrt(len(diff))
                    row.update(diff_ci_low=float(diff.mean() - half), diff_ci_high=float(diff.mean() + half))
                rows.append(row)
    return rows


def pooled_oof(out: Path, encoder: str, variant: str, class_names: list[str], n_boot: int) -> dict | None:
    """Out-of-fold predictions of all folds pooled: the metrics of a test report (95% bootstrap CIs over
    all images), computed by the same functions."""
    files = sorted((Path(out) / "runs" / encoder / variant).glob("fold*/predictions.npz"))
    if not files:
        return None
    parts = [dict(np.load(f)) for f in files]
    res: dict[str, Any] = {"n_folds": len(parts)}

    def pooled(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    if "probabilities" in parts[0]:
        labels, probs = pooled("labels"), pooled("probabilities")
        sel = labels >= 0
        res["classification"] = classification_metrics(labels[sel], probs[sel], class_names, split="out-of-fold",
                                                       n_boot=n_boot)
    if "inter" in parts[0]:
        hm = pooled("has_mask").astype(bool)
        res["segmentation"] = segmentation_metrics_from_sums(pooled("inter")[hm], pooled("p_sum")[hm],
                                                             pooled("t_sum")[hm], split="out-of-fold", n_boot=n_boot)
    return res
