"""An experiment's report: ``results.csv`` (one row per run), ``summary.csv`` (per variant: mean ± SD over
folds and pooled out-of-fold metrics with CIs), ``tests.csv`` (paired t-tests) and ``report.md``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable

from .figures import write_figures
from .plan import METRIC_KEYS, ExperimentSettings, plan_runs
from .statistics import load_results, mean_sd, paired_tests, pooled_oof


def write_report(out: Path, settings: ExperimentSettings, loaded, log: Callable[[str], None] = print) -> Path:
    """Write the tables, the figures and ``report.md`` from every finished run in ``out``; returns ``report.md``."""
    out = Path(out)
    results = load_results(out)
    class_names = loaded.class_names
    rows = []
    for r in results:
        s = r["spec"]
        rows.append({
            "encoder": s["encoder"], "variant": s["variant"], "fold": s["fold"], "task": s["task"],
            "w_seg": s["w_seg"], "w_cls": s["w_cls"], "skip_connections": s["skip"],
            "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"],
            **{k: r["metrics"].get(k) for k in METRIC_KEYS},
            "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"], "seconds": round(r["seconds"], 1),
        })
    _write_csv(out / "results.csv", rows)
    summary = []
    variants = sorted({(r["spec"]["encoder"], r["spec"]["variant"]) for r in results})
    pooled: dict[tuple[str, str], dict] = {}
    for enc, var in variants:
        rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] == var]
        row: dict[str, Any] = {"encoder": enc, "variant": var, "folds": len(rs)}
        for k in METRIC_KEYS:
            m, sd, _ = mean_sd([r["metrics"].get(k) for r in rs])
            row[f"{k}_mean"], row[f"{k}_sd"] = m, sd
        p = pooled_oof(out, enc, var, class_names, settings.n_boot)
        pooled[(enc, var)] = p or {}
        for group in ("classification", "segmentation"):
            for k, v in ((p or {}).get(group) or {}).items():
                if hasattr(v, "value"):
                    row[f"oof_{k}"], row[f"oof_{k}_ci_low"], row[f"oof_{k}_ci_high"] = v.value, v.ci_low, v.ci_high
        summary.append(row)
    _write_csv(out / "summary.csv", summary)
    tests = paired_tests(results)
    _write_csv(out / "tests.csv", tests)
    figs = write_figures(out, loaded, results, pooled)
    path = out / "report.md"
    path.write_text(_markdown(settings, loaded, results, summary, tests, pooled, figs))
    log(f"wrote {path}, results.csv, summary.csv, tests.csv and {len(figs)} figure(s)")
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else ("" if isinstance(v, float) else v)) for k, v in r.items()})


def _fmt(v: Any, d: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{d}f}"


def _ci(mv) -> str:
    if mv is None:
        return "–"
    return f"{_fmt(mv.value)} [{_fmt(mv.ci_low)}–{_fmt(mv.ci_high)}]"


def _markdown(settings, loaded, results, summary, tests, pooled, figs) -> str:
    L: list[str] = []
    L.append("# mtunet experiment report\n")
    L.append(f"Dataset: `{settings.dataset}` — {loaded.headline()}  ")
    L.append(f"Classes: {', '.join(loaded.class_names)}; {settings.folds}-fold cross-validation "
             "(stratified by class, grouped by patient and near-duplicate cluster), ~15% of the data (grouped, "
             "stratified) carved from each fold's training part and held out "
             "for early stopping / best-checkpoint selection (monitor: validation loss).  ")
    L.append(f"Budget: image size {settings.image_size}, {settings.epochs} epochs max (patience {settings.patience}), "
             f"batch {settings.batch_size}, Adam lr {settings.lr}, encoder weights `{settings.encoder_weights}`, "
             f"augmentation {'on' if settings.augment else 'off'}, max samples {settings.max_samples}, seed {settings.seed}.  ")
    L.append(f"Runs finished: {len(results)} of {len(plan_runs(settings))} planned.\n")
    L.append("Segmentation metrics are per-image Dice/IoU averaged (both masks empty = 1, exactly one empty = 0); "
             "'lesion' = images with a non-empty ground truth; 'global' pools all pixels. "
             "CIs: out-of-fold (OOF) numbers pool each image's prediction from the fold where it was in the test part, "
             "with 95% percentile-bootstrap CIs over images; per-fold numbers are mean ± SD over folds.\n")
    L.append("## Out-of-fold results (95% bootstrap CI)\n")
    L.append("| encoder | variant | n | accuracy | balanced acc. | macro F1 | AUC (OvR) | Dice | Dice (lesion) | IoU | global Dice |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for (enc, var), p in sorted(pooled.items()):
        c = p.get("classification") or {}
        s = p.get("segmentation") or {}
        n = (c.get("accuracy") or s.get("dice"))
        L.append(f"| {enc} | {var} | {n.n if n else '–'} | {_ci(c.get('accuracy'))} | {_ci(c.get('balanced_accuracy'))} | "
                 f"{_ci(c.get('macro_f1'))} | {_ci(c.get('auc_ovr'))} | {_ci(s.get('dice'))} | {_ci(s.get('dice_lesion'))} | "
                 f"{_ci(s.get('iou'))} | {_ci(s.get('dice_global'))} |")
    L.append("\n## Per-fold mean ± SD\n")
    L.append("| encoder | variant | folds | accuracy | balanced acc. | Dice | Dice (lesion) |")
    L.append("|---|---|---|---|---|---|---|")
    for r in summary:
        L.append(f"| {r['encoder']} | {r['variant']} | {r['folds']} | " + " | ".join(
            f"{_fmt(r[k + '_mean'])} ± {_fmt(r[k + '_sd'])}" for k in ("accuracy", "balanced_accuracy", "dice", "dice_lesion")) + " |")
    L.append("\n## Paired t-tests over folds (multi-task 5:1 vs baseline)\n")
    L.append("| encoder | comparison | metric | folds | multi | baseline | diff [95% CI] | t | p |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for t in tests:
        if t["n_folds"] < 2:
            continue
        L.append(f"| {t['encoder']} | {t['comparison']} | {t['metric']} | {t['n_folds']} | {_fmt(t['mean_multi'])} | "
                 f"{_fmt(t['mean_baseline'])} | {_fmt(t['mean_diff'])} [{_fmt(t['diff_ci_low'])}, {_fmt(t['diff_ci_high'])}] | "
                 f"{_fmt(t.get('t'), 2)} | {_fmt(t.get('p'), 3)} |")
    L.append("\nWith few folds a paired t-test has very little power; a non-significant p is not evidence of equality.\n")
    if figs:
        L.append("## Figures\n")
        for title, name in figs:
            L.append(f"### {title}\n\n![{title}]({name})\n")
    L.append("## Files\n\n`results.csv` (one row per run), `summary.csv`, `tests.csv`, `settings.json`, `folds.json`, "
             "`runs/<encoder>/<variant>/fold<k>/` (best checkpoint, result.json, predictions.npz).\n")
    return "\n".join(L)
