"""The project's k-fold results against the plain smp loop, fold by fold (paired t-tests).

Both are scored on the same grouped, stratified test folds (``kfold_splits``
with the same seed; the plain loop trains on the fold's train + validation
images, the project holds its validation part out for calibration and the
best-epoch choice).  Reads an ``mtunet experiment`` folder and the JSON that
``plain_smp_loop.py`` writes:

    python benchmarks/compare_to_plain.py /tmp/exp/lite0 /tmp/exp/plain/plain_loop_timm-tf_efficientnet_lite0_imagenet.json \
        --encoder timm-tf_efficientnet_lite0 --variants multi,seg_only,cls_only

Prints a markdown table: per-variant mean over the folds both have, the
plain loop's mean, the paired difference with its 95% t-interval, and p.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """Mean difference a - b, its 95% t-interval and the two-sided paired t-test p."""
    d = a - b
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), float("nan")
    se = float(d.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1) * se)
    p = float(stats.ttest_rel(a, b).pvalue) if se > 0 else float("nan")
    return mean, mean - half, mean + half, p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="an `mtunet experiment` --out folder")
    p.add_argument("plain", nargs="+", help="the JSON(s) written by plain_smp_loop.py (folds are merged)")
    p.add_argument("--encoder", default="timm-tf_efficientnet_lite0")
    p.add_argument("--variants", default="multi,seg_only,cls_only")
    p.add_argument("--rescored", action="store_true",
                   help="use the 'after' scores of rescore_experiment.py (rescore.json) where it has them")
    a = p.parse_args(argv)

    plain = {r["fold"]: r for f in a.plain for r in json.loads(Path(f).read_text())["folds"]}
    rescored = {}
    if a.rescored and (Path(a.experiment) / "rescore.json").is_file():
        rescored = {r["run"]: r["after"] for r in json.loads((Path(a.experiment) / "rescore.json").read_text())}
    print("| project run | metric | folds | project | plain loop | difference [95% CI] | p |")
    print("|---|---|---|---|---|---|---|")
    for variant in [v.strip() for v in a.variants.split(",") if v.strip()]:
        runs = {}
        for f in sorted((Path(a.experiment) / "runs" / a.encoder / variant).glob("fold*/result.json")):
            r = json.loads(f.read_text())
            run = str(f.parent.relative_to(Path(a.experiment)))
            runs[r["spec"]["fold"]] = {**r["metrics"], **rescored.get(run, {})}
        folds = sorted(set(runs) & set(plain))
        if not folds:
            print(f"| {variant} | (no fold in common) | | | | | |")
            continue
        for metric in ("dice", "balanced_accuracy"):
            pairs = [(runs[k].get(metric), plain[k].get(metric)) for k in folds]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if not pairs:
                continue
            x, y = (np.array(v, dtype=float) for v in zip(*pairs))
            m, lo, hi, pv = paired(x, y)
            print(f"| {variant} | {metric} | {len(x)} | {x.mean():.3f} | {y.mean():.3f} | "
                  f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {pv:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
