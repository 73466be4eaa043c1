"""Interactive segmentation latency: a prompted ``Predictor.predict`` against an automatic one, on real images.

For each image (real BUSI images from ../shared/data/busi, or synthetic ones with ``--quick``), one model
(``--checkpoint``, else a random-init interactive EfficientNet-Lite0 UNet at ``--image-size``) predicts:

- ``automatic``: no prompt (with the model's own post-processing, e.g. its mirror pass);
- ``box``: the lesion's bounding box;
- ``first_click``: one click at the lesion's centre and no previous mask (two passes: the whole image,
  then the region around that result);
- ``next_click``: a second click with the previous mask (one zoomed pass).

Targets: each prompted kind costs <= 1.5x the automatic prediction (median of paired ratios, interleaved
rounds); the absolute medians are printed for the 2-core budget of a click (the napari widget's click ->
layer refresh is measured in bench_napari_responsiveness).

    python benchmarks/bench_interactive.py --checkpoint runs/busi_interactive/best.safetensors --threads 2
    python benchmarks/bench_interactive.py --quick
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np
import torch

NAME = "interactive"


def _images(quick: bool, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
    if quick or not root.is_dir():
        rng = np.random.default_rng(0)
        img = rng.integers(0, 255, (240, 300), dtype=np.uint8)
        mask = np.zeros((240, 300), bool)
        mask[80:140, 100:190] = True
        return [("synthetic", img, mask)]
    from napari_mtunet.data.io import read_image, read_mask

    out = []
    for cls in ("benign", "malignant"):
        for p in sorted((root / cls).glob(f"{cls} (*).png"), key=lambda p: int(p.stem.split("(")[1][:-1]))[: n // 2]:
            masks = sorted(p.parent.glob(p.stem + "_mask*.png"))
            mask = np.any([read_mask(m) > 0 for m in masks], axis=0)
            if mask.any():
                out.append((p.name, read_image(p), mask))
    return out


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="an interactive checkpoint (default: random-init Lite0)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--images", type=int, default=6, help="real images (half benign, half malignant)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if args.quick:
        args.image_size, args.repeats, args.images = 64, 2, 1
    C.apply_threads(args.threads)
    started = time.time()
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.inference import Predictor
    from napari_mtunet.model import build_model
    from napari_mtunet.prompts import bbox, next_click

    if args.checkpoint:
        predictor = Predictor(args.checkpoint, device="cpu")
        model_name = Path(args.checkpoint).name
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(encoder_name="timm-tf_efficientnet_lite0", encoder_weights=None, prompts=True,
                                        class_names=["benign", "malignant", "normal"]),
                            Preprocessing(image_size=args.image_size))
        predictor = Predictor(model.eval(), device="cpu")
        model_name = f"random-init Lite0 {args.image_size}px"
    if not predictor.accepts_prompts:
        raise SystemExit(f"{args.checkpoint}: not an interactive checkpoint (train with --interactive)")
    results, rows, targets = [], [], []
    all_times: dict[str, list[float]] = {}
    for name, image, truth in _images(args.quick, args.images):
        box = bbox(truth)
        c1 = next_click(truth, None)
        first = predictor.predict(image, points=[(c1.row, c1.col, True)])
        c2 = next_click(truth, first.mask > 0) or c1
        clicks2 = [(c1.row, c1.col, True), (c2.row, c2.col, c2.positive)]
        variants = {
            "automatic": lambda: predictor.predict(image),
            "box": lambda: predictor.predict(image, box=box),
            "first_click": lambda: predictor.predict(image, points=[(c1.row, c1.col, True)]),
            "next_click": lambda: predictor.predict(image, points=clicks2, previous_mask=first.mask),
        }
        cpu: dict = {}
        wall = C.interleaved(variants, args.repeats, warmup=1, log=False, cpu_out=cpu)
        t = cpu if args.clock == "cpu" else wall
        res = {"image": name, "shape": list(image.shape), "times_s": t, "wall_s": wall, "cpu_s": cpu,
               "ratios": {k: C.ratio_summary(t, k, "automatic")["median"] for k in variants if k != "automatic"}}
        results.append(res)
        for k, v in t.items():
            all_times.setdefault(k, []).extend(v)
        print(f"{name} {image.shape}: " + ", ".join(f"{k} {1000 * C.median(v):.0f} ms" for k, v in t.items()),
              flush=True)
    for k in ("box", "first_click", "next_click"):
        ratios = [r["ratios"][k] for r in results]
        med = C.median(ratios)
        rows.append([k, 1000 * C.median(all_times[k]), 1000 * C.median(all_times["automatic"]), med])
        targets.append(C.target_check(f"{k}/automatic", med, 1.5))
    print(f"\n{model_name}, {len(results)} image(s), {args.repeats} interleaved rounds, medians of {args.clock} time, "
          f"torch threads {torch.get_num_threads()}")
    C.print_table(["prompt", "prompted_ms", "automatic_ms", "prompted/automatic"], rows)
    C.print_targets(targets)
    C.write_result(NAME, args, {"model": model_name, "results": results, "targets": targets}, started)


if __name__ == "__main__":
    main()
