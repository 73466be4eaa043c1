"""Duplicate detection: napari-mtunet's own perceptual hashes against the ``imagehash`` package.

On a folder of images (default: the BUSI subset in ../shared/data/busi), both hash every image
(pHash + dHash, 64 bits each), interleaved round by round; the images are decoded once beforehand,
so only hashing is timed.  Then both sets of hashes are clustered with the same thresholds
(:func:`napari_mtunet.data.duplicates.find_duplicates`) and the clusterings are compared:
the pairs of images put in one cluster by one and not the other.

    python benchmarks/bench_duplicates.py [--folder DIR] [--repeats 5]

Prints the median time per image of each and the cluster agreement; writes
results/duplicates.json.  ``imagehash`` is not a dependency of napari-mtunet: install it to compare
(without it only our own hashes are timed).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, interleaved, median, print_table, write_result  # noqa: E402

from napari_mtunet.data.duplicates import ImageHashes, exact_hash, find_duplicates, perceptual_hashes  # noqa: E402
from napari_mtunet.data.io import read_image  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"


def images(folder: Path, limit: int | None) -> dict[str, np.ndarray]:
    files = sorted(p for p in folder.rglob("*.png") if "_mask" not in p.name)
    if limit:
        files = files[:limit]
    return {str(p.relative_to(folder)): read_image(p) for p in files}


def ours(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    return {k: perceptual_hashes(a) for k, a in arrays.items()}


def theirs(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    import imagehash
    from PIL import Image

    from napari_mtunet.preprocess import to_float_rgb

    out = {}
    for k, a in arrays.items():
        grey = Image.fromarray((to_float_rgb(a).mean(axis=-1) * 255).round().astype(np.uint8))
        p, d = imagehash.phash(grey), imagehash.dhash(grey)
        out[k] = (int(str(p), 16), int(str(d), 16))
    return out


def same_cluster_pairs(hashes: dict[str, tuple[int, int]], arrays: dict[str, np.ndarray]) -> set[tuple[str, str]]:
    full = {k: ImageHashes(exact_hash(arrays[k]), p, d) for k, (p, d) in hashes.items()}
    pairs = set()
    for c in find_duplicates(full):
        pairs |= set(itertools.combinations(sorted(c.members), 2))
    return pairs


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(DEFAULT))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    started = time.time()
    folder = Path(args.folder)
    arrays = images(folder, 12 if args.quick else None)
    if not arrays:
        raise SystemExit(f"{folder}: no PNG images")
    variants = {"napari-mtunet": lambda: ours(arrays)}
    try:
        import imagehash  # noqa: F401

        variants["imagehash"] = lambda: theirs(arrays)
    except ImportError:
        print("imagehash is not installed: timing napari-mtunet's hashes only")
    times = interleaved(variants, 1 if args.quick else args.repeats)
    n = len(arrays)
    rows, results = [], {"n_images": n}
    for name, ts in times.items():
        per = median(ts) / n * 1000
        rows.append([name, median(ts), per])
        results[name] = {"median_s": median(ts), "ms_per_image": per}
    if "imagehash" in times:
        a, b = same_cluster_pairs(ours(arrays), arrays), same_cluster_pairs(theirs(arrays), arrays)
        results["pairs_in_one_cluster"] = {"napari-mtunet": len(a), "imagehash": len(b), "both": len(a & b),
                                           "only_napari_mtunet": sorted(a - b)[:20], "only_imagehash": sorted(b - a)[:20]}
        results["time_ratio_imagehash_over_ours"] = median(times["imagehash"]) / median(times["napari-mtunet"])
    print_table(["hashes", "median s (all images)", "ms per image"], rows)
    if "pairs_in_one_cluster" in results:
        c = results["pairs_in_one_cluster"]
        print(f"image pairs in one cluster: ours {c['napari-mtunet']}, imagehash {c['imagehash']}, both {c['both']}; "
              f"time ratio imagehash/ours {results['time_ratio_imagehash_over_ours']:.2f}")
    write_result("duplicates", args, {"targets": [], "results": results}, started)


if __name__ == "__main__":
    main()
