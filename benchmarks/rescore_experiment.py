"""Re-calibrate an experiment's trained models with the current post-processing and re-score their test folds.

For every ``runs/<encoder>/<variant>/fold<k>/best.safetensors`` of an ``mtunet
experiment`` folder: the post-processing is chosen again on that fold's
*validation* images (``workflows.calibrate.calibrate_postprocessing``: the
smallest-lesion filter, flip TTA, and whether the heads must agree), then the
fold's test images are scored with the stored choice ("before") and the new
one ("after").  Nothing is retrained and no test image takes part in a choice.

    python benchmarks/rescore_experiment.py /tmp/exp/lite0 --variants multi

Prints per-fold and mean balanced accuracy and per-image Dice, the paired
difference with a 95% t-interval, and writes ``rescore.json`` in the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_to_plain import paired  # noqa: E402


def score(model, dataset, pp) -> dict[str, float]:
    from napari_mtunet.training import predict_dataset
    from napari_mtunet.training.metrics import dice_iou_per_image
    from napari_mtunet.training.validation import balanced_accuracy

    p = predict_dataset(model, dataset, device="cpu", postprocessing=pp)
    out = {}
    if p.probabilities is not None:
        sel = p.has_label
        out["balanced_accuracy"] = balanced_accuracy(p.labels[sel], p.probabilities[sel].argmax(1))
    if p.pred_masks is not None and p.has_mask.any():
        out["dice"] = float(dice_iou_per_image(p.pred_masks[p.has_mask], p.true_masks[p.has_mask])[0].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment")
    p.add_argument("--variants", default="multi")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from napari_mtunet.checkpoint import load_checkpoint
    from napari_mtunet.data import SampleDataset, load_dataset, sample_key
    from napari_mtunet.workflows.calibrate import calibrate_postprocessing

    exp = Path(a.experiment)
    settings = json.loads((exp / "settings.json").read_text())["settings"]
    rep = load_dataset(Path(settings["dataset"]))
    names = list(rep.class_names)
    by_key = {sample_key(s, rep.root): s for s in rep.samples}
    folds = json.loads((exp / "folds.json").read_text())["splits"]
    rows = []
    for variant in [v.strip() for v in a.variants.split(",") if v.strip()]:
        # finished runs only (a run still training, or killed, has a best.safetensors but no result.json)
        for ck in sorted(r.parent / "best.safetensors" for r in exp.glob(f"runs/*/{variant}/fold*/result.json")):
            k = int(ck.parent.name.removeprefix("fold"))
            model, info = load_checkpoint(ck, device="cpu")
            part = {name: SampleDataset([by_key[key] for key in folds[k][name]], names, info.run.preprocessing,
                                        None, False, True) for name in ("val", "test")}
            cal = calibrate_postprocessing(model, part["val"], "cpu")
            new = cal.chosen if cal is not None else info.postprocessing
            before, after = score(model, part["test"], info.postprocessing), score(model, part["test"], new)
            rows.append({"run": str(ck.parent.relative_to(exp)), "fold": k, "stored": info.postprocessing.to_dict(),
                         "chosen": new.to_dict(), "calibration": cal.describe() if cal else None,
                         "before": before, "after": after})
            print(f"{rows[-1]['run']}: " + ", ".join(f"{m} {before[m]:.3f} -> {after[m]:.3f}" for m in before)
                  + f"  [{cal.describe() if cal else 'no calibration'}]", flush=True)
    for metric in ("balanced_accuracy", "dice"):
        pairs = [(r["after"][metric], r["before"][metric]) for r in rows if metric in r["before"]]
        if pairs:
            x, y = (np.array(v) for v in zip(*pairs))
            m, lo, hi, pv = paired(x, y)
            print(f"{metric}: {y.mean():.3f} -> {x.mean():.3f}, difference {m:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                  f"paired t-test p = {pv:.3g} ({len(x)} runs)")
    (exp / "rescore.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
