"""Exact and near-duplicate image detection.

- exact: SHA-1 of the decoded pixels (shape + dtype + bytes), so the same
  image saved twice (even under another name or format) is found;
- near: 64-bit perceptual hashes of the greyscale image — pHash (sign of the
  low-frequency 8x8 DCT coefficients of a 32x32 thumbnail vs their median)
  and dHash (sign of horizontal gradients of a 9x8 thumbnail) — two images
  are near-duplicates when both Hamming distances are small (defaults below).
  Catches re-encodes, small crops/rescales and annotation overlays.

Clusters are connected components of the "is a duplicate of" graph
(``scipy.sparse.csgraph.connected_components``).  The splitter keeps every
cluster inside one split (see :mod:`.splits`).

The hashes are computed here rather than with the ``imagehash`` package:
on the 300 BUSI images both take about the same time, and they find the same
clusters, but ``imagehash`` first converts to 8-bit greyscale (this works on
16-bit and float images as read, with the same scaling the model sees) and
would be one more dependency (see docs/dev/duplicates.md and
benchmarks/bench_duplicates.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from napari_mtunet.preprocess import to_float_rgb

#: Default Hamming-distance thresholds (out of 64 bits) for near-duplicates.
PHASH_MAX_DISTANCE = 14
DHASH_MAX_DISTANCE = 14


@dataclass(frozen=True)
class ImageHashes:
    exact: str
    phash: int
    dhash: int


@dataclass
class DuplicateCluster:
    """Samples (by id) that show the same image; ``kind`` is ``"exact"`` or ``"near"``."""

    cluster_id: str
    kind: str
    members: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)

    @property
    def conflicting_labels(self) -> bool:
        return len({lab for lab in self.labels if lab is not None}) > 1


def _thumbnail(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average downscale to (h, w) with Pillow's BOX filter on float data."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.BOX), dtype=np.float64)


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def exact_hash(image: np.ndarray) -> str:
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def perceptual_hashes(image: np.ndarray) -> tuple[int, int]:
    """``(phash, dhash)`` 64-bit integers of an image (any dtype/channels)."""
    from scipy.fft import dctn

    grey = to_float_rgb(image).mean(axis=-1)
    t32 = _thumbnail(grey, (32, 32))
    coeffs = dctn(t32, type=2, norm="ortho")[:8, :8].ravel()
    med = np.median(coeffs[1:])
    phash = _bits_to_int(coeffs > med)
    t98 = _thumbnail(grey, (8, 9))
    dhash = _bits_to_int(t98[:, 1:] > t98[:, :-1])
    return phash, dhash


def image_hashes(image: np.ndarray) -> ImageHashes:
    p, d = perceptual_hashes(image)
    return ImageHashes(exact_hash(image), p, d)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x.astype(np.uint64)
    out = np.zeros(x.shape, dtype=np.uint8)
    for _ in range(64):
        out += (x & np.uint64(1)).astype(np.uint8)
        x >>= np.uint64(1)
    return out


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two arrays of uint64 hashes."""
    return _popcount(np.bitwise_xor(a[:, None], b[None, :])).astype(np.int16)


def find_duplicates(
    hashes: dict[str, ImageHashes],
    labels: dict[str, str | None] | None = None,
    *,
    phash_max: int = PHASH_MAX_DISTANCE,
    dhash_max: int = DHASH_MAX_DISTANCE,
    near: bool = True,
    chunk: int = 1024,
) -> list[DuplicateCluster]:
    """Cluster sample ids whose images are exact or near duplicates.

    A cluster is ``"exact"`` when all its members have identical pixels,
    otherwise ``"near"``.  Singletons are not returned.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = list(hashes)
    n = len(ids)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    by_exact: dict[str, int] = {}
    for i, k in enumerate(ids):  # identical pixels: an edge to the first image with them
        first = by_exact.setdefault(hashes[k].exact, i)
        if first != i:
            rows.append(np.array([first]))
            cols.append(np.array([i]))
    if near and n > 1:
        ph = np.array([hashes[k].phash for k in ids], dtype=np.uint64)
        dh = np.array([hashes[k].dhash for k in ids], dtype=np.uint64)
        for s in range(0, n, chunk):
            dp = hamming_matrix(ph[s : s + chunk], ph)
            dd = hamming_matrix(dh[s : s + chunk], dh)
            r, c = np.nonzero((dp <= phash_max) & (dd <= dhash_max))
            keep = c > r + s
            rows.append(r[keep] + s)
            cols.append(c[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(int(component[i]), []).append(i)
    clusters = []
    for members in comps.values():
        if len(members) < 2:
            continue
        kind = "exact" if len({hashes[ids[i]].exact for i in members}) == 1 else "near"
        mids = [ids[i] for i in members]
        clusters.append(
            DuplicateCluster(
                cluster_id="",
                kind=kind,
                members=mids,
                labels=[(labels or {}).get(m) for m in mids],
            )
        )
    clusters.sort(key=lambda c: c.members[0])
    for k, c in enumerate(clusters):
        c.cluster_id = f"dup{k:04d}"
    return clusters
