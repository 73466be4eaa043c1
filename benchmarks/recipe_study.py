"""Recipe study: which training settings make the project's loop learn, measured by k-fold on dev images.

Each *variant* is a set of overrides over the current defaults (``RunConfig``
sections ``train``, ``data``, ``augment``, ``model``).  For every chosen fold
of a grouped, stratified k-fold split it trains with the project's
``Trainer`` on the fold's training part (a stratified ``val_fraction`` of it
held out when the variant validates), then scores the *best* checkpoint (by
the monitor) and the *last* weights on the fold's test part.  Test parts are
never used to choose anything.

    python benchmarks/recipe_study.py ../shared/data/busi --variants defaults,bs8 --folds 5 --only-folds 0,1,2

Results are appended to ``--out/recipe_study.jsonl`` (one line per run, so an
interrupted study resumes: finished (variant, fold) pairs are skipped) and a
table of means is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_data import load_arrays, score  # noqa: E402

#: Variants: overrides of the training defaults.  "base" is the first landing's recipe.
VARIANTS: dict[str, dict] = {
    "base": {},
    "bs8": {"train": {"batch_size": 8}},
    "bs8_last": {"train": {"batch_size": 8}},  # same run; scored with the last weights (see score_last)
    "bs8_noval": {"train": {"batch_size": 8}, "data": {"val_fraction": 0.0}},
    "bs8_cos": {"train": {"batch_size": 8, "lr_schedule": "cosine"}},
    "bs8_cos_enc01": {"train": {"batch_size": 8, "lr_schedule": "cosine", "encoder_lr_scale": 0.1}},
    "bs8_cos_warm": {"train": {"batch_size": 8, "lr_schedule": "cosine", "warmup_epochs": 1}},
    "bs8_cos_dicebce": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce"}},
    "bs8_cos_nobnre": {"train": {"batch_size": 8, "lr_schedule": "cosine", "bn_recalibration_batches": 0}},
    "bs8_cos_novflip": {"train": {"batch_size": 8, "lr_schedule": "cosine"}, "augment": {"vflip": False}},
    "bs8_cos_w11": {"train": {"batch_size": 8, "lr_schedule": "cosine", "w_seg": 1.0, "w_cls": 1.0}},
    "bs8_cos_lr3e4": {"train": {"batch_size": 8, "lr_schedule": "cosine", "lr": 3e-4}},
    "bs8_cos_nocw": {"train": {"batch_size": 8, "lr_schedule": "cosine", "class_weights": None}},
    "bs16_cos": {"train": {"batch_size": 16, "lr_schedule": "cosine"}},
    "bs8_cos_dicebce_warm": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce",
                                       "warmup_epochs": 1}},
    "bs8_cos_dicebce_enc03": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce",
                                        "encoder_lr_scale": 0.3, "warmup_epochs": 1}},
    "bs8_cos_dicebce_noval": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce",
                                        "warmup_epochs": 1}, "data": {"val_fraction": 0.0}},
    # lighter augmentation: no vertical flip (ultrasound depth runs down the image), no shear
    "r2": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce", "warmup_epochs": 1},
           "augment": {"vflip": False, "shear_degrees": 0.0}},
    "r2_noval": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce", "warmup_epochs": 1},
                 "augment": {"vflip": False, "shear_degrees": 0.0}, "data": {"val_fraction": 0.0}},
    "r2_lr3e4": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce", "warmup_epochs": 1,
                           "lr": 3e-4}, "augment": {"vflip": False, "shear_degrees": 0.0}},
    "r2_bs4": {"train": {"batch_size": 4, "lr_schedule": "cosine", "seg_loss": "dice_bce", "warmup_epochs": 1},
               "augment": {"vflip": False, "shear_degrees": 0.0}},
    "r2_nobnre": {"train": {"batch_size": 8, "lr_schedule": "cosine", "seg_loss": "dice_bce", "warmup_epochs": 1,
                            "bn_recalibration_batches": 0}, "augment": {"vflip": False, "shear_degrees": 0.0}},
}


def run_variant(data, fold: dict, *, encoder: str, weights: str | None, task: str, epochs: int, size: int,
                overrides: dict, seed: int, workdir: Path, store: dict) -> dict:
    from napari_mtunet.checkpoint import load_checkpoint
    from napari_mtunet.config import AugmentConfig, ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.training import Trainer
    from napari_mtunet.workflows.data import LoadedData

    t0 = time.perf_counter()
    loaded = LoadedData(root=data.root, layout="study", samples=data.samples, class_names=data.class_names)
    aug = AugmentConfig(**{**AugmentConfig().to_dict(), **overrides.get("augment", {})})
    use_val = overrides.get("data", {}).get("val_fraction", 0.15) > 0
    tr_idx = fold["train"] if use_val else np.concatenate([fold["train"], fold["val"]])
    pre = Preprocessing(image_size=size)
    train_ds = loaded.dataset(tr_idx, pre, augment=aug, store=store)
    val_ds = loaded.dataset(fold["val"], pre, store=store) if use_val else None
    tcfg = TrainConfig(**{**TrainConfig().to_dict(), "epochs": epochs, "seed": seed, "device": "cpu",
                          **overrides.get("train", {})})
    mcfg = ModelConfig(**{**ModelConfig(encoder_name=encoder, encoder_weights=weights, task=task,
                                        num_classes=len(data.class_names), class_names=data.class_names).to_dict(),
                          **overrides.get("model", {})})
    fit = Trainer(mcfg, tcfg, train_ds, val_ds, preprocessing=Preprocessing(image_size=size), out_dir=workdir).fit()
    out = {"epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "train_seconds": time.perf_counter() - t0}
    te = fold["test"]
    x, m, y = data.x[te], data.m[te], data.y[te]
    for which, path in (("best", fit.best_checkpoint), ("last", fit.last_checkpoint)):
        model, _ = load_checkpoint(path)
        model.eval()
        res = score(lambda xb: tuple(model(xb.float() / 255)), x, m, y)
        out.update({f"{which}_{k}": v for k, v in res.items()})
    if val_ds is not None:  # the recipe's post-processing, chosen on the fold's validation part only
        from napari_mtunet.training import predict_dataset
        from napari_mtunet.training.metrics import dice_iou_per_image
        from napari_mtunet.training.validation import balanced_accuracy
        from napari_mtunet.workflows.calibrate import calibrate_checkpoint

        cal, pp = calibrate_checkpoint(fit.best_checkpoint, val_ds, "cpu")
        model, _ = load_checkpoint(fit.best_checkpoint)
        preds = predict_dataset(model, loaded.dataset(te, pre), postprocessing=pp)
        out["pp"] = pp.to_dict()
        out["pp_dice"] = float(dice_iou_per_image(preds.pred_masks, preds.true_masks)[0].mean())
        out["pp_balanced_accuracy"] = balanced_accuracy(preds.labels, preds.probabilities.argmax(1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--variants", default="base", help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--encoder", default="timm-tf_efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--task", default="both")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-folds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--out", default="/tmp/recipe_study")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    weights = None if a.weights in ("none", "None", "") else a.weights
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "recipe_study.jsonl"
    done = set()
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done.add((r["variant"], r["encoder"], r["weights"], r["task"], r["epochs"], r["size"], r["fold"]))
    data = load_arrays(a.dataset, a.image_size)
    folds = data.folds(a.folds, a.seed, val_fraction=a.val_fraction)
    store: dict = {}
    for name in [v.strip() for v in a.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        for k in [int(v) for v in a.only_folds.split(",")]:
            key = (name, a.encoder, a.weights, a.task, a.epochs, a.image_size, k)
            if key in done:
                continue
            work = out / "runs" / f"{name}_{a.encoder}_{a.weights}_{a.task}_e{a.epochs}_s{a.image_size}_f{k}"
            if work.exists():
                import shutil

                shutil.rmtree(work)
            res = run_variant(data, folds[k], encoder=a.encoder, weights=weights, task=a.task, epochs=a.epochs,
                              size=a.image_size, overrides=VARIANTS[name], seed=a.seed + k, workdir=work, store=store)
            row = dict(zip(("variant", "encoder", "weights", "task", "epochs", "size", "fold"), key), **res)
            with open(log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summarize(log)
    return 0


def summarize(log: Path) -> None:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["encoder"], r["weights"], r["task"], r["epochs"], r["size"]), []).append(r)
    print(f"{'variant':<22} {'encoder':<28} {'w':<8} {'task':<5} {'n':>2}  best Dice/bacc   last Dice/bacc   "
          "post-processed   s/run")
    for key, rs in groups.items():
        def m(k):
            v = [r[k] for r in rs if r.get(k) is not None]
            return f"{np.mean(v):.3f}" if v else "  -  "
        print(f"{key[0]:<22} {key[1]:<28} {str(key[2]):<8} {key[3]:<5} {len(rs):>2}  {m('best_dice')}/{m('best_balanced_accuracy')}"
              f"      {m('last_dice')}/{m('last_balanced_accuracy')}     {m('pp_dice')}/{m('pp_balanced_accuracy')}"
              f"    {np.mean([r['train_seconds'] for r in rs]):.0f}")


if __name__ == "__main__":
    sys.exit(main())
