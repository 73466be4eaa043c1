"""ONNX Runtime vs PyTorch as the Predictor's CPU backend (same model, same images, one run).

What is timed, interleaved round by round (the order rotates every round):

- ``predict``: ``Predictor.predict`` on one image at native resolution
  (``--size`` square, batch 1: the network sees exactly ``size x size``),
  backend ``torch`` (channels_last, the Predictor's CPU path) vs
  ``onnxruntime``;
- ``tiled``: ``Predictor.predict`` in tiled mode on a ``--tiled-size``
  image (tiles of ``--tile-size``, 25% overlap, ``--batch`` tiles per
  forward), both backends;
- ``bare``: the network alone on a ``(1, 3, size, size)`` input: torch NCHW,
  torch channels_last and the ONNX Runtime session (the issue's reference
  measurement).

Reported: the paired ratio torch / onnxruntime per round (above 1 =
ONNX Runtime is faster), its median, the median times, and the agreement
of the two backends' outputs (mask pixels that differ, largest class
probability difference) on the timed images.  Targets: ratio >= 1.3 in
both predict and tiled, masks identical, class probabilities within 1e-4.

    python benchmarks/bench_onnx_backend.py --threads 2
    python benchmarks/bench_onnx_backend.py --quick
"""

from __future__ import annotations

import os
import tempfile
import time

import _common as C
import numpy as np
import torch

from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.inference import Predictor
from napari_mtunet.model import build_model

NAME = "onnx_backend"


def agreement(a, b) -> dict:
    """How far two Predictions differ: mask pixels, foreground probability, class probabilities."""
    return {
        "mask_pixels_differing": int((a.mask != b.mask).sum()),
        "mask_pixels": int(a.mask.size),
        "max_abs_probability_diff": float(np.abs(a.probability - b.probability).max()),
        "max_abs_class_probability_diff": float(np.abs(a.class_probabilities - b.class_probabilities).max()),
    }


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--encoder", default="mobilenet_v2")
    p.add_argument("--size", type=int, default=512, help="native-mode image side (the network input side)")
    p.add_argument("--tiled-size", type=int, default=1536, help="tiled-mode image side")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="tiles per forward in tiled mode")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        defaults = {"size": 128, "tiled_size": 320, "tile_size": 128, "repeats": 1}
        for k, v in defaults.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    C.apply_threads(args.threads)
    started = time.time()
    threads = torch.get_num_threads()

    torch.manual_seed(args.seed)
    model = build_model(
        ModelConfig(encoder_name=args.encoder, encoder_weights=None, class_names=["benign", "malignant", "normal"]),
        Preprocessing(image_size=args.size, resize=False),
    ).eval()
    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, size=(args.size, args.size), dtype=np.uint8)
    big = rng.integers(0, 256, size=(args.tiled_size, args.tiled_size), dtype=np.uint8)

    previous_cache = os.environ.get("MTUNET_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="mtunet-bench-onnx-") as cache:
        os.environ["MTUNET_CACHE_DIR"] = cache  # export afresh (and time it) rather than reuse a user cache
        try:
            results = run(args, model, image, big, threads)
        finally:
            if previous_cache is None:
                os.environ.pop("MTUNET_CACHE_DIR", None)
            else:
                os.environ["MTUNET_CACHE_DIR"] = previous_cache
    report(args, results, threads, started)


def run(args, model, image: np.ndarray, big: np.ndarray, threads: int) -> dict:
    kw = {"device": "cpu", "tile_size": args.tile_size, "batch_size": args.batch}
    torch_pred = Predictor(model, backend="torch", **kw)
    t0 = time.perf_counter()
    ort_pred = Predictor(model, backend="onnxruntime", **kw)
    export_s = time.perf_counter() - t0
    session = ort_pred._ort.session
    print(f"{args.encoder} UNet (class head), {threads} thread(s); ONNX export + session: {export_s:.1f}s", flush=True)

    results: dict = {"encoder": args.encoder, "threads": threads, "onnx_export_and_session_s": export_s}
    sections = {
        "predict": {
            "torch": lambda: torch_pred.predict(image, mode="native"),
            "onnxruntime": lambda: ort_pred.predict(image, mode="native"),
        },
        "tiled": {
            "torch": lambda: torch_pred.predict(big, mode="tiled"),
            "onnxruntime": lambda: ort_pred.predict(big, mode="tiled"),
        },
    }
    x = torch.from_numpy(np.ascontiguousarray(np.repeat(image[None, None], 3, axis=1), dtype=np.float32) / 255.0)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    feed = {"image": x.numpy()}

    def bare_torch(inp: torch.Tensor):
        with torch.inference_mode():
            return model(inp)

    sections["bare"] = {
        "torch": lambda: bare_torch(x),
        "torch_channels_last": lambda: bare_torch(x_cl),
        "onnxruntime": lambda: session.run(None, feed),
    }
    for name, variants in sections.items():
        label = {"predict": f"native {args.size}^2", "tiled": f"tiled {args.tiled_size}^2 (tiles {args.tile_size}, batch {args.batch})",
                 "bare": f"bare network (1, 3, {args.size}, {args.size})"}[name]
        print(f"[{name}] {label}", flush=True)
        cpu: dict = {}
        wall = C.interleaved(variants, args.repeats, warmup=1, cpu_out=cpu)
        t = cpu if args.clock == "cpu" else wall
        results[name] = {
            "clock": args.clock,
            "wall_s": wall,
            "cpu_s": cpu,
            "median_s": {k: C.median(v) for k, v in t.items()},
            "ratio_torch_vs_onnxruntime": C.ratio_summary(t, "torch", "onnxruntime"),
        }
        if name == "bare":
            results[name]["ratio_torch_channels_last_vs_onnxruntime"] = C.ratio_summary(t, "torch_channels_last", "onnxruntime")
    results["agreement"] = {
        "predict": agreement(torch_pred.predict(image, mode="native"), ort_pred.predict(image, mode="native")),
        "tiled": agreement(torch_pred.predict(big, mode="tiled"), ort_pred.predict(big, mode="tiled")),
    }
    return results


def report(args, results: dict, threads: int, started: float) -> None:
    rows = []
    for name in ("predict", "tiled", "bare"):
        d = results[name]
        rows.append([name, d["median_s"]["torch"], d["median_s"].get("torch_channels_last", float("nan")),
                     d["median_s"]["onnxruntime"], d["ratio_torch_vs_onnxruntime"]["median"]])
    print(f"\n{args.repeats} interleaved rounds, medians of {args.clock} time (s); bare 'torch' is NCHW, "
          "predict/tiled 'torch' is the Predictor's channels_last path")
    C.print_table(["section", "torch_s", "torch_cl_s", "onnxruntime_s", "torch/onnxruntime"], rows)
    for name, a in results["agreement"].items():
        print(f"agreement {name}: {a['mask_pixels_differing']} of {a['mask_pixels']} mask pixels differ, "
              f"max |class prob diff| {a['max_abs_class_probability_diff']:.2e}, "
              f"max |prob diff| {a['max_abs_probability_diff']:.2e}")
    targets = [
        C.target_check("predict: torch/onnxruntime", results["predict"]["ratio_torch_vs_onnxruntime"]["median"], 1.3, ">="),
        C.target_check("tiled: torch/onnxruntime", results["tiled"]["ratio_torch_vs_onnxruntime"]["median"], 1.3, ">="),
    ]
    for name, a in results["agreement"].items():
        targets.append(C.target_check(f"{name}: mask pixels differing", a["mask_pixels_differing"], 0, "<="))
        targets.append(C.target_check(f"{name}: max class probability diff", a["max_abs_class_probability_diff"], 1e-4, "<="))
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {"config": {"encoder": args.encoder, "size": args.size, "tiled_size": args.tiled_size, "tile_size": args.tile_size,
                    "batch": args.batch, "repeats": args.repeats, "clock": args.clock, "threads": threads},
         "results": results, "targets": targets},
        started,
    )


if __name__ == "__main__":
    main()
