"""Running an experiment: every planned run trained through the training workflow and scored on its fold's
test part; resumable, and several processes may share one output folder."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock, Timeout

from ..checkpoint import load_checkpoint
from ..data import save_splits
from ..device import resolve_device
from ..events import drive
from ..training.evaluate import ImageScores, predict_dataset, report_from_predictions
from ..workflows.data import kfold, load, split_indices
from ..workflows.train import iter_train
from .plan import METRIC_KEYS, ExperimentSettings, RunSpec, plan_runs, run_config_for
from .report import write_report


def run_experiment(settings: ExperimentSettings, out: Path, log: Callable[[str], None] = print) -> Path:
    """Train and score every planned run not finished yet, then write the report; returns ``report.md``."""
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
    loaded = load(settings.data_config())
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
    scores = ImageScores.from_predictions(preds)
    if scores.inter is not None:
        arrays.update(
            dice=scores.dice, iou=scores.iou, has_mask=scores.has_mask,
            inter=scores.inter.astype(np.int64), p_sum=scores.p_sum.astype(np.int64),
            t_sum=scores.t_sum.astype(np.int64),
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
