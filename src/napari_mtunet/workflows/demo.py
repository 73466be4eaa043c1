"""``mtunet demo``: train a small multi-task model on the synthetic phantom, on CPU, in 1-1.5 minutes of CPU time.

Steps: write the phantom (generic layout) into ``OUT/data``; train the
multi-task UNet through the training workflow (the same path as
``mtunet train``: grouped stratified split with 25% held out, ImageNet-
pretrained EfficientNet-Lite0 encoder, loaded offline from its package,
post-processing chosen on the validation split); evaluate accuracy and Dice
on the held-out images with 95% CIs; the run folder ``OUT/model`` gets
``best.safetensors``, ``splits.json`` and ``test_report.json`` (a sibling of
the data, as the output rule wants), and ``OUT/demo.png`` every held-out image with the
prediction of napari-mtunet's :class:`~napari_mtunet.inference.Predictor`
(the post-processing saved in the checkpoint applied, as in napari and
``mtunet predict``, so the figure and the report agree) and the learning
curves.  It ends with the next steps.  Synthetic data: not a clinical result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
from ..events import Status, TrainEvent

DEMO_ENCODER = "timm-tf_efficientnet_lite0"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's defaults (the CLI's ``mtunet demo`` options show and use these)."""

    n: int = 96  # phantom images (a quarter held out)
    size: int = 64  # image size in pixels
    epochs: int = 20
    seed: int = 0


DEMO = DemoSettings()


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
    n: int = DEMO.n,
    size: int = DEMO.size,
    epochs: int = DEMO.epochs,
    device: str = "auto",
    seed: int = DEMO.seed,
) -> Iterator[TrainEvent]:
    """Run the demo (a generator of events; returns a summary dict).

    The summary holds ``accuracy`` and ``dice`` (held-out, from the
    evaluation report), ``held_out`` (one ``(file, true class, predicted
    class)`` per image in the figure, from the Predictor) and the paths.
    """
    from ..data import load_splits
    from ..sample_data import write_phantom_dataset
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
    outcome = yield from iter_train(run, out / "model", n_boot=500)
    report = outcome.test_report
    loaded = load(outcome.run.data)
    data = prepare(outcome.run, loaded=loaded, split=load_splits(outcome.split_file)[0])
    test_samples = [loaded.samples[i] for i in data.indices["test"]]
    fig = out / "demo.png"
    held_out = _figure(fig, outcome.best_checkpoint, test_samples, outcome.fit.history)
    elapsed = time.perf_counter() - t0
    acc = report.classification["accuracy"].value
    dice = report.segmentation["dice"].value
    wrong = sum(t != p for _, t, p in held_out)
    yield Status(f"demo done in {elapsed:.0f}s: held-out accuracy {acc:.3f} ({len(held_out) - wrong} of "
                 f"{len(held_out)} right), Dice {dice:.3f} (synthetic data, not a clinical result)")
    best = Path(outcome.best_checkpoint)
    yield Status(
        f"checkpoint: {best}\nfigure: {fig}\nfolder: {out.resolve()}\n"
        "next steps:\n"
        f"  napari {best}                                   # open the model in napari's Predict widget\n"
        f"  mtunet predict {best} {data_root / 'images'} --out {out / 'predictions'}   # a folder of images\n"
        f"  mtunet train YOUR_DATASET --out runs/mine          # your own data (docs/datasets.md)"
    )
    return {"out": str(out), "accuracy": acc, "dice": dice, "checkpoint": str(best),
            "figure": str(fig), "seconds": elapsed, "held_out": held_out}


def _figure(path: Path, checkpoint: Path, samples: list, history: list[dict]) -> list[tuple[str, str, str]]:
    """Every held-out image with truth (green) and the Predictor's mask (red) and class; the learning curves.

    Returns ``(file name, true class, predicted class)`` per image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.io import load_sample
    from ..inference import Predictor
    from ..preprocess import to_float_rgb

    predictor = Predictor(checkpoint, device="cpu")
    cols = 8
    rows = max(1, -(-len(samples) // cols))
    fig = plt.figure(figsize=(1.45 * cols + 3.6, 1.6 * rows + 0.7))
    grid = fig.add_gridspec(rows, cols + 3, wspace=0.06, hspace=0.42)
    held_out = []
    for j, sample in enumerate(samples):
        ax = fig.add_subplot(grid[j // cols, j % cols])
        image, truth = load_sample(sample)
        pred = predictor.predict(image)
        ax.imshow(to_float_rgb(image, where=str(sample.image)))
        if truth is not None and truth.any():
            ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=0.8)
        if pred.mask is not None and pred.mask.any():
            ax.contour(pred.mask > 0, levels=[0.5], colors="red", linewidths=0.8)
        true_name = sample.label or "?"
        pred_name = pred.class_name or "-"
        held_out.append((Path(sample.image).name, true_name, pred_name))
        ax.set_title(f"{true_name}\n→ {pred_name}" + ("" if pred_name == true_name else " ✗"), fontsize=7,
                     color="black" if pred_name == true_name else "red")
        ax.axis("off")
    ax = fig.add_subplot(grid[:, cols + 1:])
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train loss")
    if history and "val_loss" in history[0]:
        ax.plot(ep, [h.get("val_loss") for h in history], label="val loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    right = sum(t == p for _, t, p in held_out)
    fig.suptitle(f"mtunet demo (synthetic phantom): all {len(held_out)} held-out images, {right} classified right; "
                 "true → predicted class; green = true lesion, red = predicted (after post-processing)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return held_out
