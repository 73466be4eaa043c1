"""Choose a model's post-processing on its validation split (never on a test split).

After training, the model predicts the validation images once without and
once with left-right test-time augmentation; for each candidate minimum
lesion size the mean per-image Dice is computed, and the best setting is
kept (ties: the simpler one, i.e. smaller size, no TTA).  The choice goes
into the checkpoint (``run.postprocessing``) so that the Predictor,
``mtunet evaluate`` and the widgets apply the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from ..config import Postprocessing

#: Candidate minimum lesion sizes (fractions of the image area).
MIN_LESION_FRACTIONS: tuple[float, ...] = (0.0, 0.001, 0.0025, 0.005, 0.01)


@dataclass
class Calibration:
    chosen: Postprocessing
    table: list[tuple[float, bool, float]]  # (min fraction, tta, mean Dice)
    n_images: int

    def describe(self) -> str:
        best = max(self.table, key=lambda r: r[2])
        plain = next(r for r in self.table if r[0] == 0.0 and not r[1])
        return (f"post-processing chosen on {self.n_images} validation images: remove lesions < "
                f"{self.chosen.min_lesion_fraction:.2%} of the image"
                + (", left-right test-time augmentation" if self.chosen.hflip_tta else "")
                + f" (validation Dice {plain[2]:.3f} -> {best[2]:.3f})")


def calibrate_postprocessing(model: Any, val_data: Any, device: Any) -> Calibration | None:
    """The post-processing that maximises validation Dice (None when there is nothing to calibrate on)."""
    from ..postprocess import remove_small_lesions
    from ..training import predict_dataset
    from ..training.metrics import dice_iou_per_image

    if val_data is None or len(val_data) == 0 or getattr(model, "decoder", None) is None:
        return None
    table = []
    for tta in (False, True):
        preds = predict_dataset(model, val_data, device=device, postprocessing=Postprocessing(hflip_tta=tta))
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
    return Calibration(Postprocessing(min_lesion_fraction=chosen[0], hflip_tta=chosen[1]), table,
                       int(sel.sum()))


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
