"""Interactive segmentation study: which training schedule and which prediction settings, by k-fold on dev images.

For every chosen fold of the grouped, stratified k-fold split that ``mtunet experiment`` uses (the fold's
test part never chooses anything):

1. each *schedule* is trained with the training workflow (``iter_train``: the fold's validation part picks
   the best epoch and the post-processing): ``auto`` is the model without prompts (the baseline), the others
   are interactive models whose simulated user differs (``InteractiveConfig`` overrides);
2. the automatic mode of every model is scored on the fold's test part (per-image Dice, balanced accuracy);
3. for interactive models, the simulated user (RITM protocol: box prompt, then up to ``--max-clicks``
   clicks; :mod:`napari_mtunet.training.interactive`) runs through the Predictor for every prediction
   *policy* (first click refined or not, clicks enforced or not, TTA in prompted passes or not) on the
   fold's validation part (used to choose) and its test part (used to report).

    python benchmarks/interactive_study.py ../shared/data/busi --out benchmarks/results/interactive_study \\
        --schedules auto,default --folds 5 --only-folds 0,1

Several processes may share ``--out`` (each run is claimed with a lock; finished runs are skipped), so two
workers with ``--threads 1`` use two cores.  ``--report`` writes ``report.json`` and prints the tables: the
schedule + policy with the best mean *validation* score, and its test figures with CIs pooled over folds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Training schedules: ``None`` = no prompts (the baseline); a dict = InteractiveConfig overrides.
SCHEDULES: dict[str, dict | None] = {
    "auto": None,
    "default": {},
    "light": {"prompted_per_image": 0.5, "max_iterations": 2},
    "boxheavy": {"box_share": 0.6},
}

#: Prediction policies (InteractiveConfig fields that act at prediction only).
POLICIES: dict[str, dict] = {
    "refine_enforce_tta": {"refine_first_click": True, "enforce_clicks": True, "tta": True, "box_prior": True},
    "refine_enforce": {"refine_first_click": True, "enforce_clicks": True, "tta": False, "box_prior": True},
    "norefine_enforce": {"refine_first_click": False, "enforce_clicks": True, "tta": False, "box_prior": True},
    "refine_enforce_noprior": {"refine_first_click": True, "enforce_clicks": True, "tta": False, "box_prior": False},
}


def run_config(args, schedule: str, fold: int, class_names: list[str]):
    from napari_mtunet.config import DataConfig, InteractiveConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig

    d = RunConfig()
    overrides = SCHEDULES[schedule]
    return RunConfig(
        model=ModelConfig(encoder_name=args.encoder, encoder_weights=args.weights,
                          prompts=overrides is not None).with_classes(class_names),
        preprocessing=Preprocessing(image_size=args.image_size),
        data=DataConfig(root=str(Path(args.dataset).resolve()), n_folds=args.folds, fold=fold, seed=args.seed,
                        val_fraction=d.data.val_fraction),
        train=TrainConfig.from_dict({**d.train.to_dict(), "epochs": args.epochs, "seed": args.seed + fold}),
        interactive=InteractiveConfig.from_dict({**InteractiveConfig().to_dict(), **(overrides or {})}),
    )


def automatic_scores(ckpt: Path, loaded, indices, store) -> dict:
    from napari_mtunet.checkpoint import load_checkpoint
    from napari_mtunet.training.evaluate import predict_dataset
    from napari_mtunet.training.metrics import dice_iou_per_image
    from napari_mtunet.training.validation import balanced_accuracy

    model, info = load_checkpoint(ckpt)
    ds = loaded.dataset(indices, info.preprocessing, store=store)
    preds = predict_dataset(model, ds, postprocessing=info.postprocessing)
    dice = dice_iou_per_image(preds.pred_masks, preds.true_masks)[0]
    y, p = preds.labels, preds.probabilities.argmax(1)
    return {"dice": dice.tolist(), "labels": y.tolist(), "pred": p.tolist(),
            "mean_dice": float(dice.mean()), "balanced_accuracy": float(balanced_accuracy(y, p)),
            "postprocessing": info.postprocessing.to_dict()}


def interactive_scores(ckpt: Path, loaded, indices, policy: dict, max_clicks: int, split: str) -> dict:
    from napari_mtunet.data.io import load_sample
    from napari_mtunet.inference import Predictor
    from napari_mtunet.training.interactive import evaluate_interactive

    predictor = Predictor(ckpt, device="cpu")
    predictor.interactive = replace(predictor.interactive, **policy)

    def items():
        for i in indices:
            s = loaded.samples[int(i)]
            image, mask = load_sample(s)
            if mask is not None:
                yield s.id, image, mask > 0, loaded.label_index(s)

    report = evaluate_interactive(predictor, items(), split=split, max_clicks=max_clicks, n_boot=200)
    out = report.to_dict()
    out["per_image"] = [{"name": r.name, "box_dice": r.box_dice, "ellipse_dice": r.ellipse_dice, "ious": r.ious,
                         "side_ok": r.side_ok, "side_ok_raw": r.side_ok_raw, "box_correct_class": r.box_correct_class,
                         "seconds": r.seconds} for r in report.images]
    return out


def run_fold(args, schedule: str, fold: int, loaded, folds, store: dict, log) -> None:
    from filelock import FileLock, Timeout

    from napari_mtunet.events import drive
    from napari_mtunet.workflows.data import split_indices
    from napari_mtunet.workflows.train import iter_train

    out = Path(args.out) / schedule / f"fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    claim = FileLock(str(out.parent / f".fold{fold}.claim"))
    try:
        claim.acquire(timeout=0)
    except Timeout:
        log(f"{schedule}/fold{fold}: claimed by another process, skipped")
        return
    try:
        idx = split_indices(loaded, folds[fold])
        best = out / "best.safetensors"
        if not (out / "train_done.json").is_file():
            for stale in out.glob("*.safetensors"):
                stale.unlink()
            run = run_config(args, schedule, fold, loaded.class_names)
            t0 = time.perf_counter()
            outcome = drive(iter_train(run, out, loaded=loaded, split=folds[fold], store=store, evaluate_test=False),
                            [lambda ev: log(f"  {schedule}/fold{fold} {ev.text}") if ev.kind == "status" else None])
            (out / "train_done.json").write_text(json.dumps({
                "seconds": time.perf_counter() - t0, "best_epoch": outcome.fit.best_epoch,
                "epochs_run": outcome.fit.epochs_run, "history": outcome.fit.history}, default=float))
            log(f"{schedule}/fold{fold}: trained in {time.perf_counter() - t0:.0f}s")
        auto_file = out / "automatic_test.json"
        if not auto_file.is_file():
            auto_file.write_text(json.dumps(automatic_scores(best, loaded, idx["test"], store)))
            log(f"{schedule}/fold{fold}: automatic test Dice {json.loads(auto_file.read_text())['mean_dice']:.3f}")
        if SCHEDULES[schedule] is None:
            return
        for split in ("val", "test"):
            for name in args.policies:
                f = out / f"interactive_{split}_{name}.json"
                if f.is_file():
                    continue
                t0 = time.perf_counter()
                res = interactive_scores(best, loaded, idx[split], POLICIES[name], args.max_clicks, f"fold {fold} {split}")
                f.write_text(json.dumps(res, default=float))
                m = {k: v["value"] for k, v in res["metrics"].items()}
                shown = ", ".join(f"{k} {m[k]:.3f}" for k in ("box_dice", "iou_at_1", "iou_at_3", "iou_at_5", "noc_85")
                                  if k in m)
                log(f"{schedule}/fold{fold} {split} {name}: {shown} ({time.perf_counter() - t0:.0f}s)")
    finally:
        claim.release()


# --------------------------------------------------------------------------- report


def _mean_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))
    means = v[idx].mean(1)
    return float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _noc(ious: list[float], t: float) -> int:
    return next((k for k, v in enumerate(ious, 1) if v >= t), len(ious))


def pooled(per_image: list[dict]) -> dict:
    """Headline numbers pooled over images (of several folds) with bootstrap CIs."""
    box = [r["box_dice"] for r in per_image]
    ell = [r["ellipse_dice"] for r in per_image]
    out = {"n": len(per_image), "box_dice": _mean_ci(box), "ellipse_dice": _mean_ci(ell),
           "box_minus_ellipse": _mean_ci(np.subtract(box, ell))}
    for k in (1, 3, 5):
        out[f"iou_at_{k}"] = _mean_ci([r["ious"][min(k, len(r["ious"])) - 1] for r in per_image])
    for t in (0.85, 0.90):
        out[f"noc_{round(t * 100)}"] = _mean_ci([_noc(r["ious"], t) for r in per_image])
    side = [s for r in per_image for s in r["side_ok"]]
    raw = [s for r in per_image for s in r["side_ok_raw"]]
    out["clicks_on_their_side"] = float(np.mean(side)) if side else math.nan
    out["clicks_on_their_side_raw"] = float(np.mean(raw)) if raw else math.nan
    cls = [r["box_correct_class"] for r in per_image if r["box_correct_class"] is not None]
    out["box_class_accuracy"] = float(np.mean(cls)) if cls else math.nan
    secs = [s for r in per_image for s in r["seconds"]]
    out["median_seconds"] = float(np.median(secs)) if secs else math.nan
    out["curve"] = np.mean([r["ious"] for r in per_image], axis=0).tolist() if per_image else []
    return out


def selection_score(p: dict) -> float:
    """What the choice maximises on validation: box Dice and IoU after 3 and 5 clicks, equally."""
    return (p["box_dice"][0] + p["iou_at_3"][0] + p["iou_at_5"][0]) / 3.0


def report(args, log) -> dict:
    from napari_mtunet.training.validation import balanced_accuracy

    root = Path(args.out)
    table: dict = {"automatic": {}, "interactive": {}}
    for schedule in args.schedules:
        folds = sorted(int(p.name[4:]) for p in (root / schedule).glob("fold*") if (p / "automatic_test.json").is_file())
        if not folds:
            continue
        dice, y, pr, per_fold = [], [], [], []
        for k in folds:
            a = json.loads((root / schedule / f"fold{k}" / "automatic_test.json").read_text())
            dice += a["dice"]
            y += a["labels"]
            pr += a["pred"]
            per_fold.append((k, a["mean_dice"], a["balanced_accuracy"]))
        table["automatic"][schedule] = {"folds": folds, "dice": _mean_ci(dice),
                                        "balanced_accuracy_oof": balanced_accuracy(np.array(y), np.array(pr)),
                                        "per_fold": per_fold}
        if SCHEDULES[schedule] is None:
            continue
        for name in args.policies:
            res = {}
            for split in ("val", "test"):
                per_image, ok = [], []
                for k in folds:
                    f = root / schedule / f"fold{k}" / f"interactive_{split}_{name}.json"
                    if f.is_file():
                        per_image += json.loads(f.read_text())["per_image"]
                        ok.append(k)
                res[split] = {"folds": ok, **pooled(per_image)}
            table["interactive"][f"{schedule}/{name}"] = res
    candidates = {k: v for k, v in table["interactive"].items() if v["val"]["n"]}
    if candidates:
        chosen = max(candidates, key=lambda k: selection_score(candidates[k]["val"]))
        table["chosen_on_validation"] = chosen
    (root / "report.json").write_text(json.dumps(table, indent=1, default=float))
    _print(table, log)
    return table


def _fmt(m) -> str:
    return f"{m[0]:.3f} [{m[1]:.3f}-{m[2]:.3f}]" if isinstance(m, (list, tuple)) else f"{m:.3f}"


def _print(table: dict, log) -> None:
    log("\nAutomatic mode on the test folds (per-image Dice, mean [95% CI] pooled over folds; OOF balanced accuracy)")
    for s, a in table["automatic"].items():
        log(f"  {s:<12} folds {a['folds']}: Dice {_fmt(a['dice'])}, balanced accuracy "
            f"{a['balanced_accuracy_oof']:.3f}")
    log("\nInteractive (validation -> test): box Dice | ellipse | IoU@1 | IoU@3 | IoU@5 | NoC@85 | NoC@90 | side")
    for key, r in table["interactive"].items():
        for split in ("val", "test"):
            p = r[split]
            if not p["n"]:
                continue
            log(f"  {key:<32} {split:<4} n={p['n']:<3} {_fmt(p['box_dice'])} | {p['ellipse_dice'][0]:.3f} | "
                f"{p['iou_at_1'][0]:.3f} | {_fmt(p['iou_at_3'])} | {_fmt(p['iou_at_5'])} | {p['noc_85'][0]:.2f} | "
                f"{p['noc_90'][0]:.2f} | {p['clicks_on_their_side']:.3f} (raw {p['clicks_on_their_side_raw']:.3f}) "
                f"| {1000 * p['median_seconds']:.0f} ms")
    if "chosen_on_validation" in table:
        log(f"\nchosen on validation: {table['chosen_on_validation']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--schedules", default="auto,default")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-folds", default=None)
    p.add_argument("--encoder", default="timm-tf_efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", action="store_true", help="only write and print the report of what is finished")
    args = p.parse_args(argv)
    args.schedules = [s for s in args.schedules.split(",") if s]
    args.policies = [s for s in args.policies.split(",") if s]
    bad = [s for s in args.schedules if s not in SCHEDULES] + [s for s in args.policies if s not in POLICIES]
    if bad:
        p.error(f"unknown schedule(s)/policy(ies) {bad}")

    def log(text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    if args.report:
        report(args, log)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_mtunet.config import DataConfig
    from napari_mtunet.workflows.data import kfold, load

    loaded = load(DataConfig(root=args.dataset, seed=args.seed))
    folds = kfold(loaded, args.folds, args.seed, val_fraction=DataConfig().val_fraction)
    only = [int(f) for f in args.only_folds.split(",")] if args.only_folds else list(range(args.folds))
    store: dict = {}
    for fold in only:
        for schedule in args.schedules:
            run_fold(args, schedule, fold, loaded, folds, store, log)
    report(args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
