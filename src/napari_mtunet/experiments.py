"""The paper's experiments in one call: ``mtunet experiment DATASET --preset paper``.

For each encoder (default VGG16 and MobileNetV2) and each of k folds
(stratified by class, grouped by patient / duplicate cluster):

- ``baselines``: the multi-task model (both heads, w_seg:w_cls = 5:1) vs the
  single-task segmentation UNet (``seg_only``) vs the classification-only
  encoder (``cls_only``);
- ``ablation``: the multi-task model without skip connections (``multi_noskip``);
- ``weights``: task-weight sweep 1:1, 2:1, 5:1 (= ``multi``), 10:1, 1:2, 1:5, 1:10.

Every run trains on the fold's training part (a stratified 15% of it held
out for early stopping / best-checkpoint selection) and is scored on the
fold's test part.  Paired t-tests (scipy ``ttest_rel``) compare the
multi-task model with each baseline on the same folds; out-of-fold
predictions pooled over all folds give metrics with 95% bootstrap CIs.

Outputs in ``OUT``: ``settings.json``, ``runs/<encoder>/<variant>/fold<k>/``
(``result.json``, ``predictions.npz``, ``best.safetensors``),
``results.csv`` (one row per run), ``summary.csv``, ``tests.csv``,
``report.md`` and PNG figures.  Finished runs are never redone; an
interrupted run continues from its ``last.safetensors``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock, Timeout

from .config import RunConfig

WEIGHT_SWEEP: list[tuple[float, float]] = [(1, 1), (2, 1), (5, 1), (10, 1), (1, 2), (1, 5), (1, 10)]
STUDIES = ("baselines", "ablation", "weights")
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "dice", "iou", "dice_lesion", "iou_lesion", "dice_global")


_D = RunConfig()


@dataclass
class ExperimentSettings:
    """The budget of an experiment; every other training setting is the project default (``RunConfig()``)."""

    dataset: str
    layout: str = "auto"
    preset: str = "paper"
    encoders: list[str] = field(default_factory=lambda: ["vgg16", "mobilenet_v2"])
    studies: list[str] = field(default_factory=lambda: list(STUDIES))
    folds: int = 5
    epochs: int = _D.train.epochs
    image_size: int = _D.preprocessing.image_size
    max_samples: int | None = None
    batch_size: int = _D.train.batch_size
    lr: float = _D.train.lr
    patience: int = _D.train.early_stopping_patience or 0
    encoder_weights: str | None = "imagenet"
    device: str = "auto"
    seed: int = 0
    n_boot: int = 1000
    augment: bool = True
    val_fraction: float = _D.data.val_fraction
    #: Run only these folds now (None: all); the report covers every finished run.
    only_folds: list[int] | None = None
    #: The ``weights`` study's w_seg:w_cls ratios (None: all of ``WEIGHT_SWEEP``).
    weight_ratios: list[tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.studies if s not in STUDIES]
        if bad:
            raise ValueError(f"unknown studies {bad}; choose from {list(STUDIES)}")
        if not self.encoders:
            raise ValueError("no encoders given")
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        for ws, wc in self.weight_ratios or []:
            if ws < 0 or wc < 0 or ws + wc == 0:
                raise ValueError(f"bad task-weight ratio {ws:g}:{wc:g}; both must be >= 0 and not both 0")

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change results (a resumed experiment must match them)."""
        d = asdict(self)
        for k in ("encoders", "studies", "device", "n_boot", "only_folds", "weight_ratios"):
            d.pop(k)
        d["dataset"] = str(Path(self.dataset).resolve())
        return d


@dataclass
class RunSpec:
    encoder: str
    variant: str
    fold: int
    task: str
    w_seg: float
    w_cls: float
    skip: bool = True

    @property
    def key(self) -> str:
        return f"{self.encoder}/{self.variant}/fold{self.fold}"


def parse_ratios(text: str) -> list[tuple[float, float]]:
    """``"1:1,2:1"`` -> ``[(1.0, 1.0), (2.0, 1.0)]``; a clear ValueError otherwise."""
    out = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        try:
            ws, wc = (float(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"bad task-weight ratio {part!r}; write w_seg:w_cls, e.g. 1:1,2:1") from None
        out.append((ws, wc))
    if not out:
        raise ValueError("no task-weight ratios given; write w_seg:w_cls, e.g. 1:1,2:1")
    return out


def _ratio_name(ws: float, wc: float) -> str:
    return f"w{ws:g}-{wc:g}"


def plan_runs(settings: ExperimentSettings) -> list[RunSpec]:
    """All runs, most important first (baselines, then ablation, then the sweep)."""
    runs: list[RunSpec] = []
    for enc in settings.encoders:
        for fold in range(settings.folds):
            runs.append(RunSpec(enc, "multi", fold, "both", 5, 1))
            if "baselines" in settings.studies:
                runs.append(RunSpec(enc, "seg_only", fold, "seg", 1, 0))
                runs.append(RunSpec(enc, "cls_only", fold, "cls", 0, 1))
        if "ablation" in settings.studies:
            runs += [RunSpec(enc, "multi_noskip", f, "both", 5, 1, skip=False) for f in range(settings.folds)]
        if "weights" in settings.studies:
            for ws, wc in settings.weight_ratios or WEIGHT_SWEEP:
                if (ws, wc) == (5, 1):
                    continue
                runs += [RunSpec(enc, _ratio_name(ws, wc), f, "both", ws, wc) for f in range(settings.folds)]
    return runs


# --------------------------------------------------------------------------- running


def run_experiment(settings: ExperimentSettings, out: Path, log: Callable[[str], None] = print) -> Path:
    from .config import DataConfig
    from .data import save_splits
    from .workflows.data import kfold, load

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        if old.get("fingerprint") != settings.fingerprint():
            raise ValueError(
                f"{out} holds an experiment with different settings ({settings_file}); use another --out"
            )
    settings_file.write_text(json.dumps({"settings": asdict(settings), "fingerprint": settings.fingerprint()}, indent=1))
    loaded = load(DataConfig(root=settings.dataset, layout=settings.layout, max_samples=settings.max_samples,
                             seed=settings.seed))
    log(loaded.headline())
    folds = kfold(loaded, settings.folds, settings.seed, val_fraction=settings.val_fraction)
    save_splits(out / "folds.json", folds, root=loaded.root)
    store: dict = {}
    runs = plan_runs(settings)
    t0 = time.perf_counter()
    for i, spec in enumerate(runs, 1):
        if settings.only_folds is not None and spec.fold not in settings.only_folds:
            continue
        run_dir = out / "runs" / spec.encoder / spec.variant / f"fold{spec.fold}"
        if (run_dir / "result.json").is_file():
            log(f"[{i}/{len(runs)}] {spec.key}: done already")
            continue
        # several processes may share one --out: a run another process is training is skipped, not redone
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        claim = FileLock(str(run_dir.parent / f".fold{spec.fold}.lock"))
        try:
            claim.acquire(timeout=0)
        except Timeout:
            log(f"[{i}/{len(runs)}] {spec.key}: being trained by another process, skipped")
            continue
        try:
            if (run_dir / "result.json").is_file():  # finished while we waited for the claim
                log(f"[{i}/{len(runs)}] {spec.key}: done already")
                continue
            log(f"[{i}/{len(runs)}] {spec.key}: training ({time.perf_counter() - t0:.0f}s elapsed)")
            res = _run_one(spec, settings, loaded, folds[spec.fold], run_dir, store, log)
        finally:
            claim.release()
        log(
            f"[{i}/{len(runs)}] {spec.key}: "
            + ", ".join(f"{k}={res['metrics'][k]:.3f}" for k in ("accuracy", "dice") if res["metrics"].get(k) is not None)
            + f" ({res['seconds']:.0f}s, {res['epochs_run']} epochs)"
        )
    return write_report(out, settings, loaded, log=log)


def run_config_for(spec: RunSpec, settings: ExperimentSettings, class_names: list[str]):
    """The run configuration of one experiment run (defaults from RunConfig, budget from the settings)."""
    from .config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig

    base = RunConfig()
    return RunConfig(
        model=ModelConfig(encoder_name=spec.encoder, encoder_weights=settings.encoder_weights, task=spec.task,
                          skip_connections=spec.skip).with_classes(class_names),
        preprocessing=Preprocessing(image_size=settings.image_size),
        data=DataConfig(root=settings.dataset, layout=settings.layout, val_fraction=settings.val_fraction,
                        test_fraction=0.0, n_folds=settings.folds, fold=spec.fold, seed=settings.seed,
                        max_samples=settings.max_samples,
                        augment=AugmentConfig.from_dict({**base.data.augment.to_dict(), "enabled": settings.augment})),
        train=TrainConfig.from_dict({
            **base.train.to_dict(), "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
            "w_seg": spec.w_seg if spec.task != "cls" else 1.0, "w_cls": spec.w_cls if spec.task != "seg" else 1.0,
            "early_stopping_patience": settings.patience if settings.patience > 0 else None,
            "device": settings.device, "seed": settings.seed + spec.fold,
        }),
    )


class _EpochLogger:
    def __init__(self, key: str, log: Callable[[str], None]):
        self.key, self.log = key, log

    def on_epoch_end(self, ev) -> None:
        vals = {**ev.train, **ev.val}
        shown = " ".join(f"{k}={vals[k]:.3f}" for k in ("train_loss", "val_loss", "val_dice", "val_balanced_accuracy") if k in vals)
        self.log(f"    {self.key} epoch {ev.epoch}/{ev.epochs} {shown} ({ev.elapsed_s:.0f}s)")


def _run_one(
    spec: RunSpec, settings: ExperimentSettings, loaded, fold, run_dir: Path, store: dict,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one run through the training workflow (:func:`~napari_mtunet.workflows.train.iter_train`: folder
    lock, split file, resume checks, post-processing calibrated on the validation part), then score the fold's
    test part and keep its predictions for the pooled out-of-fold metrics."""
    from .checkpoint import load_checkpoint
    from .device import resolve_device
    from .events import drive
    from .training.evaluate import predict_dataset, report_from_predictions
    from .training.metrics import dice_iou_per_image
    from .workflows.data import split_indices
    from .workflows.train import iter_train

    t0 = time.perf_counter()
    run = run_config_for(spec, settings, loaded.class_names)
    last = run_dir / "last.safetensors"
    if not last.is_file():  # nothing to resume: an earlier attempt's leftovers (no result.json) are redone
        for stale in run_dir.glob("*.safetensors"):
            stale.unlink()
    outcome = drive(
        iter_train(run, run_dir, resume=last if last.is_file() else None, loaded=loaded, split=fold, store=store,
                   evaluate_test=False, extra_training_metadata={"experiment": {"run": spec.key, **asdict(spec)}}),
        [_EpochLogger(spec.key, log)],
    )
    fit, postprocessing = outcome.fit, outcome.run.postprocessing
    idx = split_indices(loaded, fold)
    test_idx = idx["test"]
    test_ds = loaded.dataset(test_idx, outcome.run.preprocessing, store=store)
    model, _ = load_checkpoint(fit.best_checkpoint)
    preds = predict_dataset(model, test_ds, device=resolve_device(run.train.device), postprocessing=postprocessing)
    report = report_from_predictions(preds, loaded.class_names, split=f"fold {spec.fold} test", n_boot=200)
    arrays: dict[str, np.ndarray] = {"sample_index": np.asarray(test_idx), "labels": preds.labels}
    if preds.probabilities is not None:
        arrays["probabilities"] = preds.probabilities.astype(np.float32)
    if preds.pred_masks is not None:
        d, iou = dice_iou_per_image(preds.pred_masks, preds.true_masks)
        p = preds.pred_masks.reshape(len(d), -1)
        t = preds.true_masks.reshape(len(d), -1)
        arrays.update(
            dice=d, iou=iou, has_mask=preds.has_mask,
            inter=(p & t).sum(1), p_sum=p.sum(1), t_sum=t.sum(1),
        )
    np.savez_compressed(run_dir / "predictions.npz", **arrays)
    scalars = {k: report.scalars().get(k) for k in METRIC_KEYS}
    result = {
        "spec": asdict(spec),
        "key": spec.key,
        "metrics": {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in scalars.items()},
        "n_train": len(idx["train"]),
        "n_val": len(idx["val"]),
        "n_test": len(test_ds),
        "postprocessing": postprocessing.to_dict(),
        "epochs_run": fit.epochs_run,
        "best_epoch": fit.best_epoch,
        "stop_reason": fit.reason,
        "history": fit.history,
        "confusion_matrix": (report.classification or {}).get("confusion_matrix"),
        "seconds": time.perf_counter() - t0,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=float))
    if last.is_file():
        last.unlink()  # optimizer state is no longer needed once the run is finished and recorded
    return result


# --------------------------------------------------------------------------- report


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*/*/fold*/result.json"))]


def _mean_sd(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v)


def paired_tests(results: list[dict]) -> list[dict]:
    """Paired t-tests (over folds) of the multi-task model against each baseline."""
    from scipy import stats

    by = {(r["spec"]["encoder"], r["spec"]["variant"], r["spec"]["fold"]): r for r in results}
    encoders = sorted({r["spec"]["encoder"] for r in results})
    comparisons = [
        ("seg_only", ["dice", "iou", "dice_lesion", "dice_global"]),
        ("cls_only", ["accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"]),
        ("multi_noskip", ["dice", "dice_lesion", "accuracy", "balanced_accuracy"]),
    ]
    rows = []
    for enc in encoders:
        for base, metrics in comparisons:
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
    """Out-of-fold predictions of all folds pooled: metrics with bootstrap CIs over all images."""
    from .training.metrics import bootstrap_ci, classification_metrics

    files = sorted((Path(out) / "runs" / encoder / variant).glob("fold*/predictions.npz"))
    if not files:
        return None
    parts = [dict(np.load(f)) for f in files]
    res: dict[str, Any] = {"n_folds": len(parts)}
    if "probabilities" in parts[0]:
        labels = np.concatenate([p["labels"] for p in parts])
        probs = np.concatenate([p["probabilities"] for p in parts])
        sel = labels >= 0
        res["classification"] = classification_metrics(labels[sel], probs[sel], class_names, split="out-of-fold", n_boot=n_boot)
    if "dice" in parts[0]:
        hm = np.concatenate([p["has_mask"] for p in parts]).astype(bool)
        dice = np.concatenate([p["dice"] for p in parts])[hm]
        iou = np.concatenate([p["iou"] for p in parts])[hm]
        inter = np.concatenate([p["inter"] for p in parts])[hm].astype(float)
        ps = np.concatenate([p["p_sum"] for p in parts])[hm].astype(float)
        ts = np.concatenate([p["t_sum"] for p in parts])[hm].astype(float)
        pos = ts > 0
        from .training.metrics import MetricValue

        from .training.metrics import batched_mean, batched_pooled_dice

        def mv(name, arr):
            lo, hi = bootstrap_ci(len(arr), lambda i: float(arr[i].mean()), n_boot=n_boot, batched=batched_mean(arr))
            return MetricValue(name, float(arr.mean()) if len(arr) else math.nan, lo, hi, len(arr), "out-of-fold")

        def gd(i):
            d = ps[i].sum() + ts[i].sum()
            return 1.0 if d == 0 else float(2 * inter[i].sum() / d)

        glo, ghi = bootstrap_ci(len(inter), gd, n_boot=n_boot, batched=batched_pooled_dice(inter, ps, ts))
        res["segmentation"] = {
            "dice": mv("Dice", dice),
            "iou": mv("IoU", iou),
            "dice_lesion": mv("Dice (lesion images)", dice[pos]),
            "dice_global": MetricValue("Dice (global)", gd(np.arange(len(inter))), glo, ghi, len(inter), "out-of-fold"),
        }
    return res


def write_report(out: Path, settings: ExperimentSettings, loaded, log: Callable[[str], None] = print) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    results = load_results(out)
    class_names = loaded.class_names
    # results.csv
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
    # summary (mean/sd over folds + pooled out-of-fold with CIs)
    summary = []
    variants = sorted({(r["spec"]["encoder"], r["spec"]["variant"]) for r in results})
    pooled: dict[tuple[str, str], dict] = {}
    for enc, var in variants:
        rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] == var]
        row: dict[str, Any] = {"encoder": enc, "variant": var, "folds": len(rs)}
        for k in METRIC_KEYS:
            m, sd, n = _mean_sd([r["metrics"].get(k) for r in rs])
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
    figs = _figures(out, settings, loaded, results, pooled)
    md = _markdown(out, settings, loaded, results, summary, tests, pooled, figs)
    path = out / "report.md"
    path.write_text(md)
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


def _markdown(out, settings, loaded, results, summary, tests, pooled, figs) -> str:
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


def _figures(out: Path, settings, loaded, results, pooled) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    figs: list[tuple[str, str]] = []
    encoders = sorted({r["spec"]["encoder"] for r in results})
    # learning curves
    for enc in encoders:
        rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] in ("multi", "seg_only", "cls_only", "multi_noskip")]
        if not rs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        colors = {"multi": "C0", "seg_only": "C1", "cls_only": "C2", "multi_noskip": "C3"}
        for r in rs:
            h = r["history"]
            v = r["spec"]["variant"]
            ep = [x["epoch"] for x in h]
            lab = v if r["spec"]["fold"] == 0 else None
            if any("val_dice" in x for x in h):
                axes[0].plot(ep, [x.get("val_dice") for x in h], color=colors[v], alpha=0.7, label=lab)
            if any("val_accuracy" in x for x in h):
                axes[1].plot(ep, [x.get("val_balanced_accuracy") for x in h], color=colors[v], alpha=0.7, label=lab)
        axes[0].set_title("validation Dice per epoch", fontsize=10)
        axes[1].set_title("validation balanced accuracy per epoch", fontsize=10)
        fig.suptitle(f"{enc} (each line is one fold)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"learning_curves_{enc}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figs.append((f"Learning curves ({enc})", name))
    # confusion matrices (pooled OOF)
    for enc in encoders:
        cms = [(v, pooled.get((enc, v), {}).get("classification")) for v in ("multi", "cls_only")]
        cms = [(v, c) for v, c in cms if c]
        if not cms:
            continue
        fig, axes = plt.subplots(1, len(cms), figsize=(4.2 * len(cms), 3.8), squeeze=False)
        for ax, (v, c) in zip(axes[0], cms):
            cm = np.array(c["confusion_matrix"])
            ax.imshow(cm, cmap="Blues")
            for (i, j), val in np.ndenumerate(cm):  # dark cells get white numbers
                ax.text(j, i, str(val), ha="center", va="center", color="white" if val > 0.6 * cm.max() else "black")
            ax.set_xticks(range(len(c["class_names"])), c["class_names"], rotation=30)
            ax.set_yticks(range(len(c["class_names"])), c["class_names"])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{v} (out-of-fold)")
        fig.suptitle(enc)
        fig.tight_layout()
        name = f"confusion_{enc}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figs.append((f"Confusion matrices ({enc})", name))
    # weight sweep
    for enc in encoders:
        pts = []
        for ws, wc in WEIGHT_SWEEP:
            var = "multi" if (ws, wc) == (5, 1) else _ratio_name(ws, wc)
            rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] == var]
            if rs:
                pts.append((f"{ws:g}:{wc:g}", _mean_sd([r["metrics"]["dice"] for r in rs]), _mean_sd([r["metrics"]["balanced_accuracy"] for r in rs])))
        if len(pts) < 3:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(len(pts))
        ax.errorbar(x - 0.05, [p[1][0] for p in pts], yerr=[p[1][1] if math.isfinite(p[1][1]) else 0 for p in pts], fmt="o-", label="Dice")
        ax.errorbar(x + 0.05, [p[2][0] for p in pts], yerr=[p[2][1] if math.isfinite(p[2][1]) else 0 for p in pts], fmt="s-", label="balanced accuracy")
        ax.set_xticks(x, [p[0] for p in pts])
        ax.set_xlabel("w_seg : w_cls")
        ax.set_title(f"{enc}: task-weight sweep (mean ± SD over folds)")
        ax.legend()
        fig.tight_layout()
        name = f"weights_{enc}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figs.append((f"Task-weight sweep ({enc})", name))
    # example predictions + Grad-CAM from the multi-task model of fold 0
    for enc in encoders:
        ckpt = out / "runs" / enc / "multi" / "fold0" / "best.safetensors"
        if ckpt.is_file():
            try:
                figs += _examples(out, enc, ckpt, loaded)
            except Exception as exc:  # a figure must not sink the report
                import warnings

                warnings.warn(f"example/Grad-CAM figure for {enc} failed: {exc}", stacklevel=1)
    return figs


def _examples(out: Path, enc: str, ckpt: Path, loaded) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt
    import torch

    from .checkpoint import load_checkpoint
    from .explain import grad_cam
    from .data import load_splits
    from .workflows.data import split_indices

    test_idx = split_indices(loaded, load_splits(out / "folds.json")[0])["test"]
    # a few of each class
    per_class: dict[int, list[int]] = {}
    for i in test_idx:
        per_class.setdefault(loaded.label_index(loaded.samples[i]), []).append(int(i))
    chosen = [i for c in sorted(per_class) for i in per_class[c][:2]][:6]
    model, info = load_checkpoint(ckpt)
    ds = loaded.dataset(chosen, info.preprocessing)
    x = torch.stack([ds[j]["image"] for j in range(len(ds))])
    with torch.no_grad():
        o = model(x)
    probs = o.class_probabilities().numpy()
    masks = o.masks(0.5).numpy()
    cams = grad_cam(model, x)
    names = loaded.class_names
    k = len(ds)
    fig, axes = plt.subplots(2, k, figsize=(2.5 * k, 5.8), squeeze=False)
    for j in range(k):
        img = x[j].permute(1, 2, 0).numpy()
        truth = ds[j]["mask"][0].numpy()
        t = names[int(ds[j]["label"])]
        p = names[int(probs[j].argmax())]
        a = axes[0, j]
        a.imshow(img)
        a.contour(truth, levels=[0.5], colors="lime", linewidths=1)
        a.contour(masks[j].astype(float), levels=[0.5], colors="red", linewidths=1)
        a.set_title(f"true {t}\npred {p} ({probs[j].max():.2f})", fontsize=8)
        a.axis("off")
        b = axes[1, j]
        b.imshow(img)
        b.imshow(cams[j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        b.set_title("Grad-CAM, predicted class", fontsize=8, pad=3)
        b.axis("off")
    fig.suptitle(f"{enc} multi-task, fold 0 test images: green = truth, red = predicted mask", fontsize=9)
    fig.tight_layout(h_pad=1.5)
    name = f"examples_gradcam_{enc}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return [(f"Example predictions and Grad-CAM ({enc})", name)]
