"""Choose a model's post-processing on its validation split (never on a test split).

After training, the model predicts the validation images once without and
once with left-right test-time augmentation; for each candidate minimum
lesion size the mean per-image Dice is computed, and the best setting is
kept (ties: the simpler one, i.e. smaller size, no TTA).  For a model with
both heads, when one class's validation masks are all empty (BUSI's
``normal``) and nearly all others' are not, the rule "that class exactly when
the final mask is empty" is kept if it raises the validation balanced
accuracy (the heads then agree: a model no longer reports a normal scan with
a lesion drawn on it, or a lesion-free scan as malignant).  The choice goes
into the checkpoint (``run.postprocessing``) so that the Predictor,
``mtunet evaluate`` and the widgets apply the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config import Postprocessing

#: Candidate minimum lesion sizes (fractions of the image area).
MIN_LESION_FRACTIONS: tuple[float, ...] = (0.0, 0.001, 0.0025, 0.005, 0.01)


@dataclass
class Calibration:
    chosen: Postprocessing
    table: list[tuple[float, bool, float]]  # (min fraction, tta, mean Dice)
    n_images: int
    #: (class, validation balanced accuracy without, with the no-lesion rule) when a candidate class was tried
    no_lesion_trial: tuple[str, float, float] | None = None

    def describe(self) -> str:
        best = max(self.table, key=lambda r: r[2])
        plain = next(r for r in self.table if r[0] == 0.0 and not r[1])
        from ..postprocess import describe_postprocessing

        masks = describe_postprocessing(replace(self.chosen, no_lesion_class=None)) or "no small-lesion filter"
        text = (f"post-processing chosen on {self.n_images} validation images: {masks}"
                f" (validation Dice {plain[2]:.3f} -> {best[2]:.3f})")
        if self.no_lesion_trial is not None:
            name, before, after = self.no_lesion_trial
            verb = "used" if self.chosen.no_lesion_class else "not used"
            text += (f"; class '{name}' exactly when no lesion is found: {verb} (validation balanced accuracy "
                     f"{before:.3f} -> {after:.3f})")
        return text


def no_lesion_candidate(labels: np.ndarray, has_label: np.ndarray, lesion: np.ndarray,
                        has_mask: np.ndarray, class_names: list[str]) -> str | None:
    """The class whose images all have empty masks while (nearly) every other class's have a lesion."""
    sel = has_label & has_mask
    if not sel.any():
        return None
    y, les = labels[sel], lesion[sel]
    empty_classes = [c for c in np.unique(y) if not les[y == c].any()]
    if len(empty_classes) != 1:
        return None
    c = int(empty_classes[0])
    others = y != c
    if not others.any() or les[others].mean() < 0.9 or not 0 <= c < len(class_names):
        return None
    return class_names[c]


def calibrate_postprocessing(model: Any, val_data: Any, device: Any) -> Calibration | None:
    """The post-processing that maximises validation Dice (None when there is nothing to calibrate on)."""
    from ..postprocess import consistent_class_probabilities, remove_small_lesions
    from ..training import predict_dataset
    from ..training.metrics import dice_iou_per_image
    from ..training.validation import balanced_accuracy

    if val_data is None or len(val_data) == 0 or getattr(model, "decoder", None) is None:
        return None
    table = []
    by_tta = {}
    for tta in (False, True):
        preds = by_tta[tta] = predict_dataset(model, val_data, device=device,
                                              postprocessing=Postprocessing(hflip_tta=tta))
        sel = preds.has_mask
        if not sel.any():
            return None
        pred, true = preds.pred_masks[sel], preds.true_masks[sel]
        for frac in MIN_LESION_FRACTIONS:
            d = dice_iou_per_image(remove_small_lesions(pred, frac), true)[0]
            table.append((frac, tta, float(d.mean())))
    # best Dice; among (near-)ties prefer no TTA and the smaller size
    best = max(r[2] for r in table)
    chosen = min((r for r in table if r[2] >= best - 1e-9), key=lambda r: (r[1], r[0]))
    pp = Postprocessing(min_lesion_fraction=chosen[0], hflip_tta=chosen[1])
    n_masked = int(sel.sum())
    trial = None
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.task == "both":
        # Should the heads agree ("no lesion" <=> the no-lesion class)?  Kept only if it helps on validation.
        # The predictions made above with the chosen TTA, filtered as chosen, are those of ``pp``.
        preds = by_tta[pp.hflip_tta]
        lesion = remove_small_lesions(preds.pred_masks, pp.min_lesion_fraction)
        lesion = lesion.reshape(len(lesion), -1).any(axis=1)
        truth = preds.true_masks.reshape(len(preds.true_masks), -1).any(axis=1)
        name = no_lesion_candidate(preds.labels, preds.has_label, truth, preds.has_mask, list(cfg.class_names))
        if name is not None:
            lab = preds.has_label
            y = preds.labels[lab]
            before = balanced_accuracy(y, preds.probabilities[lab].argmax(1))
            agreed = consistent_class_probabilities(preds.probabilities, lesion, list(cfg.class_names).index(name))
            after = balanced_accuracy(y, agreed[lab].argmax(1))
            trial = (name, before, after)
            if after > before + 1e-9:
                pp = Postprocessing(min_lesion_fraction=chosen[0], hflip_tta=chosen[1], no_lesion_class=name)
    return Calibration(pp, table, n_masked, trial)


def calibrate_checkpoint(path: Any, val_data: Any, device: Any) -> tuple[Calibration | None, Postprocessing]:
    """Calibrate the model in checkpoint ``path`` on ``val_data`` and store the choice in the checkpoint."""
    from ..checkpoint import load_checkpoint, save_checkpoint

    model, info = load_checkpoint(path, device="cpu")
    cal = calibrate_postprocessing(model, val_data, device)
    if cal is None:
        return None, info.postprocessing
    run = info.run.replace(postprocessing=cal.chosen)
    meta = info.metadata
    save_checkpoint(path, model, training=meta.get("training"), metrics=meta.get("metrics"), parent=meta.get("parent"),
                    extra_metadata=meta.get("extra") or None, run=run.to_dict())
    return cal, cal.chosen
