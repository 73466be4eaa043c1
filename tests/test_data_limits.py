"""Data limits: one pixel limit for every format, float scaling, paths and masks that are not what they seem.

- one pixel limit for every format, checked from the header: a 100000 x
  100000 TIFF header (a few hundred bytes) and 20000 x 20000 TIFF/PNG
  headers are refused the same way (``too_large``) without allocating (child
  with a 1 GiB address-space allowance); inside a dataset the file is
  reported and the others kept;
- float64 images whose min-max range overflows float32 (or float64) are
  scaled to finite [0, 1] values by the converter and by the Predictor;
- a PANDA ``train.csv`` id with ``../`` or an absolute path, and a generic
  ``labels.csv`` row ``../other/img_000.png``: nothing outside the dataset
  root is read and the row is reported (``outside_dataset``, file and line);
- a palette PNG mask whose index 0 is white is read by palette index
  (index 0 = background); a JPEG's EXIF orientation is applied to images
  and masks, so the mask drawn on what viewers show aligns.
"""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import make_generic, make_panda  # noqa: E402

from napari_mtunet.data import load_dataset, load_sample  # noqa: E402
from napari_mtunet.data.io import MAX_IMAGE_PIXELS, read_image, read_mask  # noqa: E402

# --------------------------------------------------------------------------- item 2: one pixel limit


def tiff_header_only(path: Path, width: int, height: int) -> None:
    """A valid TIFF header declaring width x height 8-bit pixels, with one tiny deflate strip."""
    data = zlib.compress(b"\0" * 4096)
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    data_off = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        val = data_off if tag == 273 else val
        out += struct.pack("<HHIHH", tag, typ, 1, val, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, val)
    path.write_bytes(out + struct.pack("<I", 0) + data)


def png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_one_pixel_limit_for_every_format_checked_before_decoding(tmp_path):
    files = {
        "bomb.tif": (tiff_header_only, 100_000, 100_000),
        "big.tif": (tiff_header_only, 20_000, 20_000),  # used to decode (400 MB) while the PNG was refused
        "big.png": (png_header_only, 20_000, 20_000),
    }
    for name, (make, w, h) in files.items():
        make(tmp_path / name, w, h)
        assert (tmp_path / name).stat().st_size < 20_000
    code = textwrap.dedent(
        f"""
        import resource, sys
        from napari_mtunet.data.io import read_image, read_mask, MAX_IMAGE_PIXELS
        from napari_mtunet.data.errors import DataError
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
        for name in {sorted(files)!r}:
            for fn in (read_image, read_mask):
                try:
                    fn({str(tmp_path)!r} + "/" + name)
                except DataError as exc:
                    assert exc.kind == "too_large", (name, exc.kind, str(exc))
                    assert name in str(exc) and f"{{MAX_IMAGE_PIXELS:,}}" in str(exc), str(exc)
                    assert "decompression bomb" in str(exc), str(exc)
                else:
                    sys.exit("decoded " + name)
        print("ALL-REFUSED")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ALL-REFUSED" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_a_bomb_inside_a_dataset_is_reported_and_the_rest_kept(tmp_path):
    root = make_generic(tmp_path / "ds", n=6)
    tiff_header_only(root / "images" / "bomb.tif", 100_000, 100_000)
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["bomb.tif", "a", "p9"])
    rep = load_dataset(root, duplicates=False)
    bad = [p for p in rep.problems if p.kind == "too_large"]
    assert len(bad) == 1 and bad[0].file.endswith("bomb.tif") and bad[0].action == "skipped", rep.problems
    assert len(rep.samples) == 6


def test_limit_is_the_same_as_pillows_decompression_bomb_error():
    Image = pytest.importorskip("PIL.Image")
    assert MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- item 3: float scaling


@pytest.mark.parametrize("lo,hi,dtype", [(-1e308, 1e308, np.float64), (1e300, 1.7e308, np.float64),
                                         (-3e38, 3e38, np.float32), (-60000, 60000, np.float16)])
def test_float_images_are_scaled_without_overflow(lo, hi, dtype):
    from napari_mtunet.preprocess import to_float_rgb

    t = np.linspace(0.0, 1.0, 24 * 20)
    a = (lo * (1 - t) + hi * t).astype(dtype).reshape(24, 20)  # (hi - lo) itself would overflow
    out = to_float_rgb(a)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() == 0.0 and out.max() == 1.0
    assert (np.diff(out[..., 0].reshape(-1)) >= 0).all()  # order preserved


def test_predictor_scales_huge_float64_images_in_every_mode(tiny_model):
    from napari_mtunet.inference import Predictor

    rng = np.random.default_rng(0)
    img = rng.uniform(-1.0, 1.0, (100, 130)) * 1e308  # max - min overflows float64
    pred = Predictor(tiny_model, device="cpu", tile_size=64)
    for mode in ("resize", "native", "tiled"):
        p = pred.predict(img, mode=mode)
        assert np.isfinite(p.probability).all() and np.isfinite(p.class_probabilities).all(), mode
        assert p.mask.shape == img.shape and p.class_name in tiny_model.config.class_names


# --------------------------------------------------------------------------- item 6: paths escape the dataset


def test_generic_labels_csv_rows_outside_the_dataset_are_reported_not_read(tmp_path):
    root = make_generic(tmp_path / "ds", n=9)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(root / "images" / "img_000.png", other / "img_000.png")
    lines = (root / "labels.csv").read_text().splitlines()
    assert lines[1].startswith("img_000.png,a,")
    lines[1] = "../other/img_000.png,c,patient0"  # used to relabel images/img_000.png as "c"
    lines.append(f"{other / 'img_000.png'},b,patient9")  # an absolute path
    lines.append("masks/img_001.png,b,patient9")  # another folder of the dataset
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    rep = load_dataset(root, duplicates=False)
    assert all(Path(s.image).resolve().is_relative_to(root.resolve()) for s in rep.samples)
    img0 = next(s for s in rep.samples if Path(s.image).name == "img_000.png")
    assert img0.label is None  # no silent relabelling: segmentation only, reported below
    kinds = {(p.kind, p.file.rsplit(":", 1)[-1]) for p in rep.problems}
    assert ("outside_dataset", "2") in kinds and ("outside_dataset", "11") in kinds, rep.problems
    assert ("bad_filename", "12") in kinds, rep.problems
    outside = [p for p in rep.problems if p.kind == "outside_dataset"]
    assert all("labels.csv:" in p.file and "only files under the dataset root" in p.message for p in outside)
    assert any(p.kind == "image_without_label" and p.file.endswith("img_000.png") for p in rep.problems)
    with pytest.raises(Exception, match="outside the dataset"):
        load_dataset(root, duplicates=False, strict=True)


def test_panda_ids_outside_the_root_are_reported_not_read(tmp_path):
    root = make_panda(tmp_path / "panda")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "train_images" / "aaa111.tiff", outside / "evil.tiff")
    shutil.copy(root / "train_images" / "aaa111.tiff", outside / "evil2.tiff")
    with open(root / "train.csv", "a", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["../../outside/evil", "radboud", "5", "5+5"])
        w.writerow([str(outside / "evil2"), "radboud", "4", "4+4"])
        w.writerow(["..\\..\\outside\\evil", "radboud", "4", "4+4"])
    rep = load_dataset(root, layout="panda", duplicates=False, level=0, patch_size=128, min_tissue=0.3)
    assert rep.samples and all(Path(s.image).parent == root / "train_images" for s in rep.samples)
    outside_rows = sorted(p.file.rsplit(":", 1)[-1] for p in rep.problems if p.kind == "outside_dataset")
    assert outside_rows == ["5", "6", "7"], rep.problems
    assert all("train.csv:" in p.file for p in rep.problems if p.kind == "outside_dataset")


# --------------------------------------------------------------------------- item 7: masks


def _palette_mask(path: Path, mask01: np.ndarray, palette: list[int]) -> None:
    im = Image.fromarray(mask01.astype(np.uint8), mode="P")
    im.putpalette(palette + [0] * (768 - len(palette)))
    im.save(path)


def test_palette_mask_with_white_index_0_is_read_by_index(tmp_path):
    root = make_generic(tmp_path / "ds", n=6)
    truth = read_mask(root / "masks" / "img_000.png")
    assert 0 < truth.mean() < 0.5
    # index 0 = white, index 1 = black: as colours this is "all foreground"
    _palette_mask(root / "masks" / "img_000.png", truth, [255, 255, 255, 0, 0, 0])
    assert Image.open(root / "masks" / "img_000.png").mode == "P"
    assert np.array_equal(read_mask(root / "masks" / "img_000.png"), truth)
    rep = load_dataset(root, duplicates=False)
    s = next(s for s in rep.samples if Path(s.image).name == "img_000.png")
    assert np.array_equal(load_sample(s)[1], truth)
    assert rep.stats[s.id].mask_fraction == pytest.approx(float(truth.mean()))
    # a palette *image* still reads as its colours
    assert read_image(root / "masks" / "img_000.png").shape == truth.shape + (3,)


def test_jpeg_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = np.full((24, 40, 3), 30, np.uint8)
    stored[0:8, 0:10] = 230  # bright block, top-left as stored
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(root / "images" / "scan.jpg", exif=exif.tobytes(), quality=98)
    shown = np.rot90(stored, k=-1)  # what viewers show: 40 x 24, block top-right
    mask = (shown[..., 0] > 128).astype(np.uint8) * 255
    Image.fromarray(mask).save(root / "masks" / "scan.png")
    # an EXIF-rotated mask (JPEG masks exist in the wild) turns with it
    mi = Image.fromarray(np.rot90(mask, k=1).copy())
    mi.save(root / "masks" / "scan_rotated.jpg", exif=exif.tobytes(), quality=98)
    (root / "labels.csv").write_text("filename,label\nscan.jpg,a\n")
    rep = load_dataset(root, duplicates=False)
    assert not [p for p in rep.problems if p.kind == "mask_size"], rep.problems
    image, m = load_sample(rep.samples[0])
    assert image.shape[:2] == (40, 24) == m.shape
    assert image[m > 0].mean() > 200 and image[m == 0].mean() < 60
    rotated = read_mask(root / "masks" / "scan_rotated.jpg")
    assert rotated.shape == (40, 24) and (rotated == (mask > 0)).mean() > 0.98
