"""Tiled inference on huge images: bounded memory and near-bare throughput.

For each image size (default 2048^2, 4096^2, 8192^2, uint8 RGB) a *fresh
subprocess* builds a random-init model (encoder_weights=None), warms the
Predictor up on a small image, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` = 5; falls back to the running VmHWM), runs
``Predictor(mode="tiled").predict(image)`` and reads ``VmHWM``:

- ``peak_growth`` = peak RSS during predict - RSS just before it;
- ``outputs`` = bytes of the returned mask (uint8 H x W) and probability
  (float32 H x W): these necessarily scale with the image;
- ``working`` = peak_growth - outputs: what the tiling machinery itself
  needs.  Target: peak growth < 1.5 GB at 8192^2, and working memory
  independent of image size.

Throughput: the same process then times the bare network forward over the
same tiles (same number of batches of the same shapes, tensors prepared in
advance in the layout the Predictor feeds: channels_last), interleaved with further predict calls when ``--repeats`` > 1.
Target: bare_time / predict_time >= 0.85.

    python benchmarks/bench_tiled_inference.py
    python benchmarks/bench_tiled_inference.py --sizes 2048,4096 --repeats 3
    python benchmarks/bench_tiled_inference.py --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import _common as C

NAME = "tiled_inference"
MB = 2**20


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM in bytes (Linux); psutil as a fallback for RSS."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        try:
            import psutil

            out["VmRSS"] = psutil.Process().memory_info().rss
        except ImportError:
            pass
    if "VmHWM" not in out:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args) -> None:
    import numpy as np
    import torch

    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.inference import Predictor
    from napari_mtunet.model import build_model

    C.apply_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder_name=args.encoder, encoder_weights=None, class_names=["a", "b", "c"]),
        Preprocessing(image_size=args.tile, resize=False),
    ).eval()
    pred = Predictor(model, device="cpu", mode="tiled", tile_size=args.tile, batch_size=args.batch)
    rng = np.random.default_rng(0)
    # warm-up (oneDNN primitives, allocator pools): a 2x2-tile image
    pred.predict(rng.integers(0, 256, (2 * args.tile, 2 * args.tile, 3), dtype=np.uint8))
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        th, tw, ys, xs, _, _ = pred._tiles(size, size)
        gc.collect()
        before = proc_status()
        exact = reset_peak()
        hwm0 = proc_status()["VmHWM"]
        t0 = time.perf_counter()
        out = pred.predict(image)
        t_first = time.perf_counter() - t0
        peak = proc_status()["VmHWM"]
        out_bytes = sum(a.nbytes for a in (out.mask, out.probability) if a is not None)
        growth = peak - before["VmRSS"]
        del out
        gc.collect()

        # bare forward over the same tiles: same batches per row, prepared tensors
        per_row = [min(args.batch, len(xs) - s) for s in range(0, len(xs), args.batch)]
        shapes = {b: torch.rand(b, 3, th, tw).contiguous(memory_format=torch.channels_last) for b in set(per_row)}

        def bare():
            with torch.inference_mode():
                for _ in ys:
                    for b in per_row:
                        model(shapes[b])

        def predict(image=image):
            pred.predict(image)

        times = {"predict": [t_first], "bare": []}
        t0 = time.perf_counter()
        bare()
        times["bare"].append(time.perf_counter() - t0)
        if args.repeats > 1:
            more = C.interleaved({"bare": bare, "predict": predict}, args.repeats - 1, warmup=0, log=False)
            for k in times:
                times[k] += more[k]
        n_tiles = len(ys) * len(xs)
        ratios = C.paired_ratios(times, "bare", "predict")
        results.append(
            {
                "size": size,
                "image_bytes": int(image.nbytes),
                "tiles": n_tiles,
                "tile": [th, tw],
                "batch_size": args.batch,
                "tiles_per_row": len(xs),
                "largest_forward_batch": min(args.batch, len(xs)),
                "rss_before_mb": before["VmRSS"] / MB,
                "peak_exact": exact,
                "hwm_before_predict_mb": hwm0 / MB,
                "peak_rss_mb": peak / MB,
                "peak_growth_mb": growth / MB,
                "outputs_mb": out_bytes / MB,
                "working_mb": (growth - out_bytes) / MB,
                "times_s": times,
                "predict_tiles_per_s": n_tiles / C.median(times["predict"]),
                "bare_tiles_per_s": n_tiles / C.median(times["bare"]),
                "throughput_ratio_paired": ratios,
                "throughput_ratio": C.median(ratios),
            }
        )
        del image, predict  # the closure's default holds the image too
        gc.collect()
    print("RESULT " + json.dumps(results), flush=True)


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2048,4096,8192")
    p.add_argument("--encoder", default="mobilenet_v2")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="Predictor batch_size (tiles per forward)")
    p.add_argument("--repeats", type=int, default=1, help="predict/bare pairs per size (>1: interleaved)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one-process", action="store_true", help="all sizes in one subprocess (quick mode does this)")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.sizes, args.tile, args.batch, args.repeats, args.one_process = "128,192", 64, 2, 1, True
    started = time.time()
    groups = [args.sizes] if args.one_process else [s for s in args.sizes.split(",") if s]
    results = []
    for g in groups:
        cmd = [sys.executable, __file__, "--child", "--sizes", g, "--encoder", args.encoder, "--tile", str(args.tile),
               "--batch", str(args.batch), "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"[sizes {g}] fresh subprocess ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"child for sizes {g} failed (exit {proc.returncode})")
        for r in json.loads(lines[-1][len("RESULT "):]):
            results.append(r)
            print(f"  {r['size']}^2: {r['tiles']} tiles, peak growth {r['peak_growth_mb']:.0f} MB "
                  f"(outputs {r['outputs_mb']:.0f} MB), predict {C.median(r['times_s']['predict']):.1f} s, "
                  f"bare {C.median(r['times_s']['bare']):.1f} s", flush=True)

    rows = [[r["size"], r["tiles"], r["rss_before_mb"], r["peak_growth_mb"], r["outputs_mb"], r["working_mb"],
             r["predict_tiles_per_s"], r["bare_tiles_per_s"], r["throughput_ratio"]] for r in results]
    print(f"\n{args.encoder}, tile {args.tile}, batch {args.batch}, overlap 0.25, uint8 RGB input; memory in MB")
    C.print_table(["size", "tiles", "rss_before", "peak_growth", "outputs", "working", "predict_t/s", "bare_t/s",
                   "bare/predict time"], rows)
    largest = max(results, key=lambda r: r["size"])
    working = [r["working_mb"] for r in results]
    spread = max(working) - min(working)
    targets = [
        C.target_check(f"peak RSS growth at {largest['size']}^2 (MB)", largest["peak_growth_mb"], 1536.0),
        # "independent of size": working memory may vary by less than 25% of the largest size's working set
        C.target_check("working-memory spread across sizes (fraction of max)", spread / max(max(working), 1.0), 0.25),
        C.target_check(f"throughput vs bare forward at {largest['size']}^2", largest["throughput_ratio"], 0.85, ">="),
    ]
    # Working memory is dominated by the activations of one forward batch, i.e. min(batch, tiles per row):
    # compare the sizes whose rows fill a whole batch (the rest is the O(tile x width) band buffer).
    full = [r["working_mb"] for r in results if r.get("largest_forward_batch", args.batch) == args.batch]
    if len(full) >= 2:
        targets.append(C.target_check("working-memory spread across sizes with full batches (fraction of max)",
                                      (max(full) - min(full)) / max(max(full), 1.0), 0.25))
    for r in results:
        if r is not largest:
            targets.append(C.target_check(f"throughput vs bare forward at {r['size']}^2", r["throughput_ratio"], 0.85, ">="))
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {"config": {"encoder": args.encoder, "tile": args.tile, "batch": args.batch, "overlap": 0.25,
                    "repeats": args.repeats, "sizes": [r["size"] for r in results], "one_process": args.one_process},
         "results": results, "targets": targets},
        started,
    )


if __name__ == "__main__":
    main()
