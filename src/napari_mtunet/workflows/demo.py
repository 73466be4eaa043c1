"""``mtunet demo``: train a small multi-task model on the synthetic phantom, on CPU, in under a minute.

Steps: write the phantom (generic layout) into ``OUT/data``; train the
multi-task UNet through the training workflow (the same path as
``mtunet train``: grouped stratified split with 25% held out, ImageNet-
pretrained EfficientNet-Lite0 encoder, loaded offline from its package);
evaluate accuracy and Dice on the held-out images with 95% CIs; write
``OUT/best.safetensors``, ``OUT/test_report.json`` and ``OUT/demo.png``
(held-out examples + learning curves).  Synthetic data: not a clinical result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from ..config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
from ..events import Status, TrainEvent

DEMO_ENCODER = "timm-tf_efficientnet_lite0"


def new_folder(path: Path) -> Path:
    """``path`` if free, else ``path-1``, ``path-2`` ..."""
    if not path.exists():
        return path
    for i in range(1, 10000):
        cand = path.with_name(f"{path.name}-{i}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"{path}: cannot find a free folder name")


def demo_run(root: Path, *, size: int, epochs: int, device: str, seed: int) -> RunConfig:
    """The demo's run configuration (pretrained offline encoder when its package is installed)."""
    from ..encoders import packaged_weights_file

    pretrained = packaged_weights_file(DEMO_ENCODER) is not None
    return RunConfig(
        model=ModelConfig(encoder_name=DEMO_ENCODER if pretrained else "mobilenet_v2",
                          encoder_weights="imagenet" if pretrained else None),
        preprocessing=Preprocessing(image_size=size),
        data=DataConfig(root=str(root), layout="generic", val_fraction=0.15, test_fraction=0.25, seed=seed,
                        augment=AugmentConfig(rotation_degrees=10, shear_degrees=0, vflip=False)),
        # 1:1 loss weights: on 58 small phantom images the class head needs the larger share (demo_try, docs/results.md)
        train=TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, lr_schedule="cosine", early_stopping_patience=None,
                          w_seg=1.0, w_cls=1.0, device=device, seed=seed),
    )


def iter_demo(
    out: str | Path | None = None,
    *,
    n: int = 96,
    size: int = 64,
    epochs: int = 12,
    device: str = "auto",
    seed: int = 0,
) -> Iterator[TrainEvent]:
    """Run the demo (a generator of events; returns a summary dict)."""
    from ..checkpoint import load_checkpoint
    from ..data import load_splits
    from ..sample_data import write_phantom_dataset
    from ..training import predict_dataset
    from .data import load, prepare
    from .train import iter_train

    t0 = time.perf_counter()
    out = Path(out) if out is not None else new_folder(Path("mtunet-demo"))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new output folder")
    out.mkdir(parents=True, exist_ok=True)
    yield Status(f"demo output folder: {out.resolve()}")
    data_root = write_phantom_dataset(out / "data", n=n, size=max(size, 64), seed=seed)
    run = demo_run(data_root.resolve(), size=size, epochs=epochs, device=device, seed=seed)
    yield Status(f"synthetic phantom: {n} images; encoder {run.model.encoder_name} "
                 f"({'ImageNet-pretrained, offline' if run.model.encoder_weights else 'from scratch'})")
    outcome = yield from iter_train(run, out, n_boot=500)
    report = outcome.test_report
    model, _ = load_checkpoint(outcome.best_checkpoint)
    data = prepare(outcome.run, loaded=load(outcome.run.data), split=load_splits(outcome.split_file)[0])
    preds = predict_dataset(model, data.test)
    fig = out / "demo.png"
    _figure(fig, data.test, preds, outcome.run.model.class_names, outcome.fit.history)
    elapsed = time.perf_counter() - t0
    acc = report.classification["accuracy"].value
    dice = report.segmentation["dice"].value
    yield Status(f"demo done in {elapsed:.0f}s: held-out accuracy {acc:.3f}, Dice {dice:.3f} "
                 "(synthetic data, not a clinical result)")
    yield Status(f"checkpoint: {outcome.best_checkpoint}\nfigure: {fig}\nfolder: {out.resolve()}")
    return {"out": str(out), "accuracy": acc, "dice": dice, "checkpoint": str(outcome.best_checkpoint),
            "figure": str(fig), "seconds": elapsed}


def _figure(path: Path, ds: Any, preds: Any, class_names: list[str], history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = min(6, len(ds))
    fig, axes = plt.subplots(1, k + 1, figsize=(2.4 * (k + 1), 3.1))
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
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the title above the panels' own titles
    fig.savefig(path, dpi=110)
    plt.close(fig)
