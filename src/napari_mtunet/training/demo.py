"""``mtunet demo``: train a small multi-task model on the synthetic phantom, on CPU, in about a minute.

Steps: write the phantom (generic layout) into ``OUT/data``, split it
(stratified, 25% held out), train a MobileNetV2 multi-task UNet from scratch
(no download), evaluate accuracy and Dice on the held-out images with 95%
CIs, and write ``OUT/best.safetensors``, ``OUT/demo.png`` (examples +
learning curves) and ``OUT/report.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np


def _new_dir(path: Path) -> Path:
    if not path.exists():
        return path
    for i in range(1, 10000):
        cand = path.with_name(f"{path.name}-{i}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"{path}: cannot find a free folder name")


def run_demo(
    out: str | Path | None = None,
    *,
    n: int = 96,
    size: int = 64,
    epochs: int = 8,
    device: str = "auto",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    from ..checkpoint import load_checkpoint
    from ..config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, TrainConfig
    from ..sample_data import write_phantom_dataset
    from .data_bridge import load_data, make_dataset, train_val_test
    from .engine import Trainer
    from .evaluate import predict_dataset, report_from_predictions

    t0 = time.perf_counter()
    out = Path(out) if out is not None else _new_dir(Path("mtunet-demo"))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    log(f"demo output folder: {out.resolve()}")
    data_root = write_phantom_dataset(out / "data", n=n, size=max(size, 64), seed=seed)
    loaded = load_data(data_root, "generic")
    dcfg = DataConfig(root=str(data_root.resolve()), layout="generic", val_fraction=0.15, test_fraction=0.25, seed=seed,
                      augment=AugmentConfig(enabled=True, rotation_degrees=10, shear_degrees=0))
    splits = train_val_test(loaded, dcfg)
    pre = Preprocessing(image_size=size)
    train_ds = make_dataset(loaded, splits["train"], size, augment=dcfg.augment)
    val_ds = make_dataset(loaded, splits["val"], size)
    test_ds = make_dataset(loaded, splits["test"], size)
    log(f"synthetic phantom: {len(loaded.samples)} images {loaded.class_names}; "
        f"train {len(train_ds)}, val {len(val_ds)}, held-out test {len(test_ds)}")
    mcfg = ModelConfig(encoder_name="mobilenet_v2", encoder_weights=None, num_classes=len(loaded.class_names),
                       task="both", class_names=loaded.class_names)
    tcfg = TrainConfig(epochs=epochs, batch_size=16, lr=2e-3, w_seg=5, w_cls=1, early_stopping_patience=None,
                       monitor="val_loss", device=device, seed=seed)
    from ..cli import ProgressPrinter

    res = Trainer(mcfg, tcfg, train_ds, val_ds, preprocessing=pre, out_dir=out, data_config=dcfg,
                  callbacks=[ProgressPrinter()]).fit()
    model, info = load_checkpoint(res.best_checkpoint)
    preds = predict_dataset(model, test_ds)
    report = report_from_predictions(preds, loaded.class_names, split="held-out test", n_boot=500)
    log(report.format())
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    fig = out / "demo.png"
    _figure(fig, test_ds, preds, loaded.class_names, res.history)
    elapsed = time.perf_counter() - t0
    acc = report.classification["accuracy"]
    dice = report.segmentation["dice"]
    log(f"demo done in {elapsed:.0f}s: held-out accuracy {acc.value:.3f}, Dice {dice.value:.3f} "
        "(synthetic data, not a clinical result)")
    log(f"checkpoint: {res.best_checkpoint}\nfigure: {fig}\nfolder: {out.resolve()}")
    return {"out": str(out), "accuracy": acc.value, "dice": dice.value, "checkpoint": str(res.best_checkpoint),
            "figure": str(fig), "seconds": elapsed}


def _figure(path: Path, ds, preds, class_names, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(6, len(ds))
    fig, axes = plt.subplots(1, k + 1, figsize=(2.4 * (k + 1), 2.8))
    for j in range(k):
        ax = axes[j]
        item = ds[j]
        ax.imshow(item["image"].permute(1, 2, 0).numpy())
        if preds.true_masks is not None:
            ax.contour(preds.true_masks[j], levels=[0.5], colors="lime", linewidths=1)
            ax.contour(preds.pred_masks[j].astype(float), levels=[0.5], colors="red", linewidths=1)
        t = class_names[int(preds.labels[j])] if preds.labels[j] >= 0 else "?"
        p = class_names[int(np.argmax(preds.probabilities[j]))] if preds.probabilities is not None else "-"
        ax.set_title(f"true {t}\npred {p}", fontsize=8)
        ax.axis("off")
    ax = axes[-1]
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train loss")
    if history and "val_loss" in history[0]:
        ax.plot(ep, [h.get("val_loss") for h in history], label="val loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    fig.suptitle("mtunet demo (synthetic phantom): green = truth, red = prediction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
