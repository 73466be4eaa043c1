"""Windows of a tiled pyramidal TIFF: napari-mtunet's reader against tifffile's ``aszarr`` + zarr.

``napari_mtunet.data.pyramid.read_region`` reads only the tiles under a
window with tifffile's own per-tile decoder and pastes them.  tifffile can
also expose a level as a zarr store (``TiffFile.aszarr``); zarr then reads
the tiles a slice touches.  This script writes a large JPEG-compressed,
tiled, pyramidal RGB slide (like PANDA's) and times both on the same random
windows, interleaved round by round (the ratio of each round is reported),
then measures each reader's peak allocation (tracemalloc) in a fresh process.

    python benchmarks/bench_tiff_windows.py                 # 16384 x 16384 slide
    PYTHONPATH=/path/to/zarr python benchmarks/bench_tiff_windows.py --quick

zarr is not a dependency of napari-mtunet; install it (``pip install zarr``)
where you run this.  Results: ``benchmarks/results/tiff_windows.json``;
the reading of them is docs/dev/tiff-windows.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import tifffile

TILE = 256


def _tiles(side: int, seed: int, scale: int):
    """Tissue-like RGB tiles (smooth gradients + texture), row by row; JPEG has real work to do."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 40, (TILE, TILE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    for ty in range(0, side, TILE):
        for tx in range(0, side, TILE):
            base = ((np.sin((yy + ty) / (37.0 * scale)) + np.cos((xx + tx) / (53.0 * scale))) * 50 + 160).astype(np.uint8)
            tile = np.stack([base, (base * 0.7).astype(np.uint8), (255 - base // 2).astype(np.uint8)], -1)
            yield tile + texture


def write_slide(path: Path, side: int) -> None:
    factors = (4, 16)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(_tiles(side, 0, 1), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                 compression="jpeg", compressionargs={"level": 90}, subifds=len(factors))
        for f in factors:
            s = side // f
            tw.write(_tiles(s, f, f), shape=(s, s, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 90}, subfiletype=1)


def windows(side: int, size: int, level: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    extent = side // (4 ** level if level else 1)
    top = max(1, extent - size)
    return [(int(x), int(y), size, size) for x, y in zip(rng.integers(0, top, n), rng.integers(0, top, n))]


def read_ours(path: Path, wins, level: int) -> int:
    from napari_mtunet.data.pyramid import read_region

    return sum(int(read_region(path, w, level)[0, 0, 0]) for w in wins)


def read_aszarr(path: Path, wins, level: int) -> int:
    import zarr

    total = 0
    for x, y, w, h in wins:
        with tifffile.TiffFile(path) as tf, tf.aszarr(level=level) as store:
            total += int(zarr.open(store, mode="r")[y:y + h, x:x + w][0, 0, 0])
    return total


def read_ours_open(tf, pages, path: Path, wins, level: int) -> int:
    from napari_mtunet.data.pyramid import read_window

    return sum(int(read_window(tf, pages[level], w, path)[0, 0, 0]) for w in wins)


def read_aszarr_open(arrays, wins, level: int) -> int:
    return sum(int(arrays[level][y:y + h, x:x + w][0, 0, 0]) for x, y, w, h in wins)


def peak_traced_mib(method: str, path: Path, size: int, level: int, n: int) -> float:
    """Peak memory allocated (tracemalloc: Python and numpy buffers) while a fresh process reads ``n`` windows
    with ``method``, after one untimed window has loaded the codecs."""
    code = (
        "import sys, json, tracemalloc\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import pathlib, numpy, tifffile, zarr\n"
        "import bench_tiff_windows as B\n"
        f"path = pathlib.Path({str(path)!r})\n"
        f"wins = B.windows({SIDE}, {size}, {level}, {n}, 7)\n"
        f"B.read_{method}(path, wins[:1], {level})\n"
        "tracemalloc.start()\n"
        f"B.read_{method}(path, wins, {level})\n"
        "print(json.dumps(tracemalloc.get_traced_memory()[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout.strip().splitlines()[-1]) / 2**20


SIDE = 16384


def main() -> None:
    global SIDE
    parser = C.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--windows", type=int, default=20, help="windows per round and case")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    SIDE = 2048 if args.quick else args.side
    rounds = 2 if args.quick else args.rounds
    n = 4 if args.quick else args.windows
    import zarr  # noqa: F401 - fail early with a clear ImportError when zarr is not installed

    results: dict = {"machine": C.machine_info(), "command": C.command_line(), "side": SIDE, "tile": TILE,
                     "compression": "jpeg 90, RGB, pyramid 1/4/16 (SubIFDs)", "cases": {},
                     "tifffile": tifffile.__version__, "zarr": zarr.__version__}
    with tempfile.TemporaryDirectory(prefix="mtunet-bench-tiff-") as work:
        path = Path(work) / "slide.tif"
        t0 = time.perf_counter()
        write_slide(path, SIDE)
        results["write_s"] = round(time.perf_counter() - t0, 1)
        results["file_mib"] = round(path.stat().st_size / 2**20, 1)
        print(f"slide {SIDE} x {SIDE}: {results['file_mib']} MiB written in {results['write_s']} s")
        rows = []
        cases = [("256 px, level 0 (a PANDA patch)", 256, 0), ("1024 px, level 0", 1024, 0),
                 ("256 px, level 1", 256, 1)]
        import zarr

        with tifffile.TiffFile(path) as tf:
            from napari_mtunet.data.pyramid import levels

            pages = levels(tf)
            stores = [tf.aszarr(level=i) for i in range(len(pages))]
            arrays = [zarr.open(s, mode="r") for s in stores]
            for label, size, level in cases:
                wins = windows(SIDE, size, level, n, 7)
                from napari_mtunet.data.pyramid import read_region

                for w in wins[:3]:  # the same pixels
                    x, y, ww, hh = w
                    assert np.array_equal(read_region(path, w, level), arrays[level][y:y + hh, x:x + ww])
                times = C.interleaved({
                    "ours": lambda: read_ours(path, wins, level),
                    "aszarr": lambda: read_aszarr(path, wins, level),
                    "ours_open": lambda: read_ours_open(tf, pages, path, wins, level),
                    "aszarr_open": lambda: read_aszarr_open(arrays, wins, level),
                }, rounds, log=False)
                per = {k: C.median(v) / n * 1000 for k, v in times.items()}
                case = {
                    "ms_per_window": {k: round(v, 2) for k, v in per.items()},
                    "ratio_aszarr_vs_ours": C.ratio_summary(times, "aszarr", "ours"),
                    "ratio_aszarr_open_vs_ours_open": C.ratio_summary(times, "aszarr_open", "ours_open"),
                }
                results["cases"][label] = case
                rows.append([label, per["ours"], per["aszarr"], case["ratio_aszarr_vs_ours"]["median"],
                             per["ours_open"], per["aszarr_open"], case["ratio_aszarr_open_vs_ours_open"]["median"]])
            for s in stores:
                s.close()
        print()
        C.print_table(["window", "ours ms", "aszarr ms", "aszarr/ours", "ours (open) ms", "aszarr (open) ms",
                       "ratio (open)"], rows)
        mem = {}
        for label, size, level in cases[:2]:
            mem[label] = {m: round(peak_traced_mib(m, path, size, level, n), 2) for m in ("ours", "aszarr")}
        results["peak_traced_mib"] = mem
        print()
        C.print_table(["window", "ours: peak MiB allocated", "aszarr: peak MiB allocated"],
                      [[k, v["ours"], v["aszarr"]] for k, v in mem.items()])
    out = Path(args.results_dir) / "tiff_windows.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
