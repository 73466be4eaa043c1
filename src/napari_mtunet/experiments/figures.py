"""An experiment's figures (PNG, beside report.md): learning curves, out-of-fold confusion matrices, the
task-weight sweep and example predictions with Grad-CAM."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import load_splits
from ..explain import grad_cam
from ..workflows.data import split_indices
from .plan import WEIGHT_SWEEP, ratio_variant
from .statistics import mean_sd

Figures = list[tuple[str, str]]  # (title, file name)


def write_figures(out: Path, loaded, results: list[dict], pooled: dict) -> Figures:
    """Every figure the finished runs allow; a failing example figure is a warning, not a failed report."""
    import matplotlib

    matplotlib.use("Agg")

    figs: Figures = []
    encoders = sorted({r["spec"]["encoder"] for r in results})
    for enc in encoders:
        _learning_curves(out, enc, results, figs)
    for enc in encoders:
        _confusion_matrices(out, enc, pooled, figs)
    for enc in encoders:
        _weight_sweep(out, enc, results, figs)
    for enc in encoders:
        ckpt = out / "runs" / enc / "multi" / "fold0" / "best.safetensors"
        if ckpt.is_file():
            try:
                _examples(out, enc, ckpt, loaded, figs)
            except Exception as exc:  # a figure must not sink the report
                warnings.warn(f"example/Grad-CAM figure for {enc} failed: {exc}", stacklevel=1)
    return figs


def _save(fig, out: Path, name: str, title: str, figs: Figures, **layout) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout(**layout)
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    figs.append((title, name))


def _learning_curves(out: Path, enc: str, results: list[dict], figs: Figures) -> None:
    import matplotlib.pyplot as plt

    colors = {"multi": "C0", "seg_only": "C1", "cls_only": "C2", "multi_noskip": "C3"}
    rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] in colors]
    if not rs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
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
    _save(fig, out, f"learning_curves_{enc}.png", f"Learning curves ({enc})", figs)


def _confusion_matrices(out: Path, enc: str, pooled: dict, figs: Figures) -> None:
    import matplotlib.pyplot as plt

    cms = [(v, pooled.get((enc, v), {}).get("classification")) for v in ("multi", "cls_only")]
    cms = [(v, c) for v, c in cms if c]
    if not cms:
        return
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
    _save(fig, out, f"confusion_{enc}.png", f"Confusion matrices ({enc})", figs)


def _weight_sweep(out: Path, enc: str, results: list[dict], figs: Figures) -> None:
    import matplotlib.pyplot as plt

    pts = []
    for ws, wc in WEIGHT_SWEEP:
        rs = [r for r in results if r["spec"]["encoder"] == enc and r["spec"]["variant"] == ratio_variant(ws, wc)]
        if rs:
            pts.append((f"{ws:g}:{wc:g}", mean_sd([r["metrics"]["dice"] for r in rs]),
                        mean_sd([r["metrics"]["balanced_accuracy"] for r in rs])))
    if len(pts) < 3:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(pts))
    for shift, (i, label, fmt) in ((-0.05, (1, "Dice", "o-")), (0.05, (2, "balanced accuracy", "s-"))):
        ax.errorbar(x + shift, [p[i][0] for p in pts], yerr=[p[i][1] if math.isfinite(p[i][1]) else 0 for p in pts],
                    fmt=fmt, label=label)
    ax.set_xticks(x, [p[0] for p in pts])
    ax.set_xlabel("w_seg : w_cls")
    ax.set_title(f"{enc}: task-weight sweep (mean ± SD over folds)")
    ax.legend()
    _save(fig, out, f"weights_{enc}.png", f"Task-weight sweep ({enc})", figs)


def _examples(out: Path, enc: str, ckpt: Path, loaded, figs: Figures) -> None:
    """A few fold-0 test images of each class: truth and predicted mask, and Grad-CAM of the predicted class."""
    import matplotlib.pyplot as plt

    test_idx = split_indices(loaded, load_splits(out / "folds.json")[0])["test"]
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
    _save(fig, out, f"examples_gradcam_{enc}.png", f"Example predictions and Grad-CAM ({enc})", figs, h_pad=1.5)
