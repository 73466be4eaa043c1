"""Predictor overhead: ``Predictor.predict`` on a 512^2 image vs the bare model forward.

The bare forward gets the tensor the Predictor itself feeds the network,
prepared in advance:

- ``resize`` mode (the default for models trained on resized whole images,
  e.g. BUSI at 256^2): the network sees ``(1, 3, 256, 256)``; the Predictor
  additionally converts the 512^2 uint8 image to float, resizes it
  (antialiased), applies sigmoid/softmax, resizes the probability back to
  512^2 and thresholds it;
- ``native`` mode: the network sees ``(1, 3, 512, 512)``.

Target: predict / bare <= 1.15 (median of paired ratios, interleaved rounds;
each timed unit runs ``--inner`` calls).

    python benchmarks/bench_predictor_overhead.py
    python benchmarks/bench_predictor_overhead.py --quick
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch

from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.inference import Predictor
from napari_mtunet.model import build_model

NAME = "predictor_overhead"


def bench(encoder: str, mode: str, image_side: int, train_size: int, repeats: int, inner: int,
          layout: str = "channels_last", clock: str = "wall") -> dict:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder_name=encoder, encoder_weights=None, class_names=["benign", "malignant", "normal"]),
        Preprocessing(image_size=train_size),
    ).eval()
    pred = Predictor(model, device="cpu", mode=mode)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
    side = train_size if mode == "resize" else image_side
    # prepared as the Predictor feeds it (channels_last); --bare-layout nchw shows what that layout costs
    x = torch.rand(1, 3, side, side)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)

    def run_predict():
        for _ in range(inner):
            pred.predict(image)

    def run_bare():
        with torch.inference_mode():
            for _ in range(inner):
                model(x)

    if inner <= 0:  # adaptive: about 0.3 s per timed unit
        inner = 1
        run_bare()
        t0 = time.perf_counter()
        run_bare()
        inner = max(1, min(10, round(0.3 / max(time.perf_counter() - t0, 1e-3))))
    print(f"[{encoder} {mode}] predict on {image_side}^2 vs bare forward on {tuple(x.shape)} x{inner}", flush=True)
    cpu: dict = {}
    wall = C.interleaved({"predict": run_predict, "bare": run_bare}, repeats, warmup=1, log=False, cpu_out=cpu)
    t = cpu if clock == "cpu" else wall
    r = C.ratio_summary(t, "predict", "bare")
    return {
        "encoder": encoder,
        "mode": mode,
        "image": [image_side, image_side, 3],
        "network_input": list(x.shape),
        "bare_layout": layout,
        "inner": inner,
        "clock": clock,
        "times_s": t,
        "wall_s": wall,
        "cpu_s": cpu,
        "wall_ratio": C.ratio_summary(wall, "predict", "bare")["median"],
        "cpu_ratio": C.ratio_summary(cpu, "predict", "bare")["median"],
        "median_ms_per_call": {k: 1000 * C.median(v) / inner for k, v in t.items()},
        "ratio_predict_vs_bare": r,
    }


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--encoders", default="mobilenet_v2,vgg16")
    p.add_argument("--modes", default="resize,native")
    p.add_argument("--image", type=int, default=512, help="image side")
    p.add_argument("--train-size", type=int, default=256, help="the model's training image_size (resize mode)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--bare-layout", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--inner", type=int, default=0, help="calls per timed unit (0: adaptive, ~0.3 s per unit)")
    args = p.parse_args()
    if args.quick:
        args.image, args.train_size, args.repeats, args.inner = 128, 64, 2, 1
        if args.encoders == p.get_default("encoders"):
            args.encoders = "mobilenet_v2"
    C.apply_threads(args.threads)
    started = time.time()
    results = []
    for enc in [e for e in args.encoders.split(",") if e]:
        for mode in [m for m in args.modes.split(",") if m]:
            results.append(bench(enc, mode, args.image, args.train_size, args.repeats, args.inner, args.bare_layout, args.clock))
    rows, targets = [], []
    for r in results:
        ms = r["median_ms_per_call"]
        ratio = r["ratio_predict_vs_bare"]["median"]
        rows.append([r["encoder"], r["mode"], "x".join(map(str, r["network_input"][2:])), ms["predict"], ms["bare"],
                     ms["predict"] - ms["bare"], ratio])
        targets.append(C.target_check(f"{r['encoder']} {r['mode']}: predict/bare", ratio, 1.15))
    print(f"\nimage {args.image}^2 uint8 RGB, {args.repeats} interleaved rounds, medians of {args.clock} time")
    C.print_table(["encoder", "mode", "net input", "predict_ms", "bare_ms", "overhead_ms", "predict/bare"], rows)
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {"config": {"image": args.image, "train_size": args.train_size, "repeats": args.repeats, "inner": args.inner},
         "results": results, "targets": targets},
        started,
    )


if __name__ == "__main__":
    main()
