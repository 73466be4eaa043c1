"""Bad-input corpus: malformed files, folders, CSVs and arrays each give a specific error or a reported skip.

tests/test_data_io.py already checks single readers on a truncated PNG/TIFF,
a zero-byte file, text named .png, a folder named .png and (non-root only)
chmod 000; tests/test_inference.py checks NaN and 5-D arrays in the
Predictor.  This module generates a larger corpus and pushes it through the
*consumers* users actually hit:

1. every bad image/mask file inside an otherwise good generic dataset:
   lenient loading reports it (file named, action ``skipped``) and keeps
   every good sample; strict loading raises one error naming all of them;
   the accepted-but-odd files (16-bit, float, RGBA, 1x1, 10^5 px wide ...)
   reach the training pipeline as float [0, 1] images and {0, 1} masks;
2. the same bad files through ``Predictor.predict_many([path])``;
3. dataset-level problems (empty folder, unrelated files, CSV oddities,
   unknown class, missing file, duplicate ids, symlink loops, PANDA slide
   with no tissue, a class with one sample, RLE overrunning the image);
4. unreadable permissions *as root* (capabilities dropped with setpriv);
5. arrays as napari holds them (4-D, complex, object, empty, Inf, ...).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_mtunet.data import (
    DataError,
    DatasetValidationError,
    EmptyDatasetError,
    LayoutError,
    SplitError,
    load_dataset,
    load_sample,
    read_image,
    train_val_test_split,
)
from napari_mtunet.preprocess import ImageFormatError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_fixtures import make_generic, make_panda, make_siim, write_pyramid_tiff  # noqa: E402

RNG = np.random.default_rng(7)
H, W = 32, 40  # size of the good samples (make_generic default)


# --------------------------------------------------------------------------- file builders


def _png(path: Path, arr: np.ndarray, **kw) -> None:
    Image.fromarray(arr, **kw).save(path)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def b_trunc_png(p):
    _png(p, RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _truncate(p, 300)


def b_trunc_tiff(p):
    tifffile.imwrite(p, RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    _truncate(p, 1000)


def b_trunc_jpeg(p):
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(p, format="JPEG")
    _truncate(p, 300)


def b_zero(p):
    p.write_bytes(b"")


def b_html(p):  # a download that saved the server's error page
    p.write_text("<html><body>404 Not Found</body></html>")


def b_lfs(p):  # a git-lfs pointer instead of the image
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 12345\n")


def b_bad_crc(p):
    _png(p, RNG.integers(0, 256, (32, 32), dtype=np.uint8))
    b = bytearray(p.read_bytes())
    b[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    p.write_bytes(bytes(b))


def b_bomb(p):  # header claims 100000 x 100000 pixels: must not try to allocate 10 GB
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def b_nan(p):
    a = RNG.random((H, W)).astype(np.float32)
    a[3, 4] = np.nan
    tifffile.imwrite(p, a)


def b_inf(p):
    a = RNG.random((H, W)).astype(np.float32)
    a[5, 6] = np.inf
    tifffile.imwrite(p, a)


def b_complex(p):
    tifffile.imwrite(p, np.zeros((H, W), np.complex64))


def b_five_channels(p):
    tifffile.imwrite(p, np.zeros((H, W, 5), np.uint8), photometric="minisblack", planarconfig="contig")


#: name -> (builder, accepted error kinds, message must contain)
BAD_IMAGES = {
    "trunc_png.png": (b_trunc_png, {"truncated"}, "truncated"),
    "trunc_tiff.tif": (b_trunc_tiff, {"truncated", "unreadable", "wrong_format"}, ""),
    "trunc_jpeg.jpg": (b_trunc_jpeg, {"truncated"}, "truncated"),
    "zero_byte.png": (b_zero, {"empty_file"}, "0 bytes"),
    "error_page.png": (b_html, {"wrong_format"}, "not an image"),
    "lfs_pointer.png": (b_lfs, {"wrong_format"}, "not an image"),
    "bad_crc.png": (b_bad_crc, {"wrong_format", "unreadable", "truncated"}, ""),
    "bomb.png": (b_bomb, {"too_large"}, "decompression bomb"),
    "nan_pixels.tif": (b_nan, {"wrong_format"}, "NaN"),
    "inf_pixels.tif": (b_inf, {"wrong_format"}, "infinite"),
    "complex_pixels.tif": (b_complex, {"wrong_format"}, "complex"),
    "five_channels.tif": (b_five_channels, {"colour_model"}, "extra samples"),
}


def m_size(p):
    _png(p, np.zeros((H + 3, W - 5), np.uint8))


def m_trunc(p):
    _png(p, (RNG.random((H, W)) > 0.5).astype(np.uint8) * 255)
    _truncate(p, 60)


def m_nan(p):
    a = np.zeros((H, W), np.float32)
    a[0, 0] = np.nan
    tifffile.imwrite(p, a)


#: masks of good images: image stem -> (mask file name, builder, kinds, message)
BAD_MASKS = {
    "mask_size": ("mask_size.png", m_size, {"mask_size"}, "differs"),
    "mask_trunc": ("mask_trunc.png", m_trunc, {"truncated", "unreadable", "wrong_format"}, ""),
    "mask_nan": ("mask_nan.tif", m_nan, {"wrong_format"}, "NaN"),
}

#: odd but valid inputs: name -> (image array, mask array or None); all must be used
ODD_GOOD = {
    "sixteen_bit.png": (RNG.integers(0, 65536, (H, W)).astype(np.uint16), None),
    "float_range.tif": ((RNG.random((H, W)) * 1000 - 200).astype(np.float32), None),
    "rgba.png": (RNG.integers(0, 256, (H, W, 4), dtype=np.uint8), None),
    "grey_alpha.png": (RNG.integers(0, 256, (H, W, 2), dtype=np.uint8), None),
    "one_pixel.png": (np.full((1, 1), 200, np.uint8), np.ones((1, 1), np.uint8)),
    "very_wide.png": (RNG.integers(0, 256, (1, 100_000), dtype=np.uint8), np.ones((1, 100_000), np.uint8)),
    "rgb_annotation.png": (RNG.integers(0, 256, (H, W), dtype=np.uint8), np.dstack([np.eye(H, W, dtype=np.uint8) * 7] * 3)),
    "grey_annotation.png": (RNG.integers(0, 256, (H, W), dtype=np.uint8), RNG.integers(0, 256, (H, W), dtype=np.uint8)),
    "int32_negative.tif": (RNG.integers(-5000, 5000, (H, W)).astype(np.int32), None),
}


def _save_any(path: Path, arr: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    elif arr.ndim == 3 and arr.shape[-1] == 2:
        Image.merge("LA", [Image.fromarray(arr[..., 0]), Image.fromarray(arr[..., 1])]).save(path)
    elif arr.dtype == np.uint16:
        Image.fromarray(arr).save(path)  # uint16 -> 16-bit PNG
    else:
        Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A generic dataset: 9 good samples + every bad image, bad mask and odd-but-valid file."""
    root = make_generic(tmp_path_factory.mktemp("corpus") / "ds", n=9)
    rows = []
    good_mask = (RNG.random((H, W)) > 0.5).astype(np.uint8) * 255
    for name, (build, _, _) in BAD_IMAGES.items():
        build(root / "images" / name)
        _png(root / "masks" / f"{Path(name).stem}.png", good_mask)
        rows.append([name, "a", f"bad_{name}"])
    for stem, (mask_name, build, _, _) in BAD_MASKS.items():
        _png(root / "images" / f"{stem}.png", RNG.integers(0, 256, (H, W), dtype=np.uint8))
        build(root / "masks" / mask_name)
        rows.append([f"{stem}.png", "b", f"bad_{stem}"])
    for name, (img, mask) in ODD_GOOD.items():
        _save_any(root / "images" / name, img)
        if mask is not None:
            _png(root / "masks" / f"{Path(name).stem}.png", mask)
        rows.append([name, "c", f"odd_{name}"])
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_every_bad_file_is_reported_and_good_ones_are_kept(corpus):
    rep = load_dataset(corpus, duplicates=False)
    by_file = {Path(p.file).name: p for p in rep.problems}
    for name, (_, kinds, text) in BAD_IMAGES.items():
        p = by_file.get(name)
        assert p is not None, f"{name} not reported: {rep.problems}"
        assert p.kind in kinds and p.action == "skipped", p
        assert text.lower() in p.message.lower(), p
    for stem, (mask_name, _, kinds, text) in BAD_MASKS.items():
        p = by_file.get(mask_name)
        assert p is not None, f"{mask_name} not reported"
        assert p.kind in kinds and text in p.message and f"{stem}.png" in p.message, p  # names both files
    used = {s.image.name for s in rep.samples}
    assert {f"img_{i:03d}.png" for i in range(9)} <= used
    assert set(ODD_GOOD) <= used
    assert not used & (set(BAD_IMAGES) | {f"{s}.png" for s in BAD_MASKS})


def test_strict_mode_names_every_bad_file_at_once(corpus):
    with pytest.raises(DatasetValidationError) as ei:
        load_dataset(corpus, strict=True, duplicates=False)
    msg = str(ei.value)
    for name in list(BAD_IMAGES) + [m for m, *_ in BAD_MASKS.values()]:
        assert name in msg, name
    assert len(ei.value.problems) == len(BAD_IMAGES) + len(BAD_MASKS)


def test_odd_but_valid_files_reach_training_as_clean_tensors(corpus):
    import torch

    from napari_mtunet.config import Preprocessing
    from napari_mtunet.data import SampleDataset

    rep = load_dataset(corpus, duplicates=False)
    odd = [s for s in rep.samples if s.image.name in ODD_GOOD]
    ds = SampleDataset(odd, rep.class_names, Preprocessing(image_size=32), cache=False)
    for i, s in enumerate(odd):
        item = ds[i]
        img, mask = item["image"], item["mask"]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32, s.image.name
        assert torch.isfinite(img).all() and 0 <= float(img.min()) and float(img.max()) <= 1, s.image.name
        assert set(mask.unique().tolist()) <= {0.0, 1.0}, s.image.name
        if ODD_GOOD[s.image.name][1] is not None:
            assert bool(item["has_mask"])


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from napari_mtunet.inference import Predictor

    return Predictor(tiny_model, device="cpu", tile_size=128)


def test_bad_files_through_the_predictor(corpus, predictor, tmp_path):
    extra = {}
    d = tmp_path / "folder.png"
    d.mkdir()
    extra[d] = "found a folder"
    loop = tmp_path / "loop.png"
    os.symlink(loop.name, loop)
    extra[loop] = ""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # must not block
    extra[fifo] = ""
    extra[tmp_path / "missing.png"] = "does not exist"
    for name, (_, _, text) in BAD_IMAGES.items():
        extra[corpus / "images" / name] = text
    for path, text in extra.items():
        with pytest.raises(DataError) as ei:
            predictor.predict_many([path])
        assert path.name in str(ei.value) and text.lower() in str(ei.value).lower(), str(ei.value)
    # odd but valid files predict with the right shape (the 10^5-px-wide one is tiled)
    for name in ("sixteen_bit.png", "rgba.png", "one_pixel.png", "float_range.tif", "grey_alpha.png"):
        (p,) = predictor.predict_many([corpus / "images" / name])
        img = read_image(corpus / "images" / name)
        assert p.mask.shape == img.shape[:2] and np.isfinite(p.probability).all()


def test_symlink_loop_is_named_as_such(tmp_path):
    loop = tmp_path / "loop.png"
    os.symlink(loop.name, loop)
    with pytest.raises(DataError) as ei:
        read_image(loop)
    assert re.search("(?i)symbolic link|symlink|link loop", ei.value.detail), ei.value.detail  # not the path


def test_generic_dataset_with_mask_like_image_name_stays_generic(tmp_path):
    root = _generic(tmp_path)
    _png(root / "images" / "scan_mask.png", np.zeros((H, W), np.uint8))
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["scan_mask.png", "a", "p9"])
    assert load_dataset(root, duplicates=False).layout == "generic"


# --------------------------------------------------------------------------- dataset-level corpus


def _generic(tmp_path, name="ds", n=9):
    return make_generic(tmp_path / name, n=n)


def _kinds(rep):
    return {(Path(p.file.split(":")[0]).name, p.kind) for p in rep.problems}


def test_empty_folder_and_unrelated_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="no known dataset layout") as ei:
        load_dataset(empty)
    assert "empty" in str(ei.value)
    junk = tmp_path / "junk"
    (junk / "sub").mkdir(parents=True)
    (junk / "notes.txt").write_text("x")
    (junk / ".DS_Store").write_bytes(b"\0\0")
    (junk / "table.csv").write_text("a,b\n1,2\n")
    (junk / "sub" / "report.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(LayoutError, match="no known dataset layout"):
        load_dataset(junk)
    with pytest.raises(LayoutError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    # a generic layout whose every image is broken: an empty dataset error, with the first problem
    bad = _generic(tmp_path, "allbad", n=3)
    for p in (bad / "images").iterdir():
        p.write_bytes(b"")
    with pytest.raises(EmptyDatasetError, match="no usable samples.*empty"):
        load_dataset(bad)


CSV_CASES = {
    # name: (transform of the good CSV bytes, expected: "ok" | ("error", regex) | ("problem", file, kind))
    "utf8_bom": (lambda b: b"\xef\xbb\xbf" + b, "ok"),
    "crlf": (lambda b: b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), "ok"),
    "utf16": (lambda b: b.decode().encode("utf-16"), ("error", "not UTF-8")),
    "latin1": (lambda b: b.replace(b",a,", b",\xe9,"), ("error", "not UTF-8")),
    "no_header": (lambda b: b.split(b"\n", 1)[1], ("error", "needs the header")),
    "empty_csv": (lambda b: b"", ("error", "empty")),
    "extra_fields": (lambda b: b + b"img_000.png,b,p,EXTRA\n", ("error", "line 11 has 4 fields")),
    "duplicate_row": (lambda b: b + b"img_000.png,b,patient0\n", ("problem", "labels.csv", "duplicate_id")),
    "missing_file": (lambda b: b + b"gone.png,b,patientX\n", ("problem", "labels.csv", "label_without_image")),
    "nul_byte": (lambda b: b.replace(b"img_001.png", b"img_\x00001.png"), ("problem", "img_001.png", "image_without_label")),
    "stray_quote": (lambda b: b.replace(b"img_003.png", b'"img_003.png'), ("problem", "labels.csv", "label_without_image")),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_oddities(tmp_path, case):
    transform, expected = CSV_CASES[case]
    root = _generic(tmp_path)
    csv_path = root / "labels.csv"
    csv_path.write_bytes(transform(csv_path.read_bytes()))
    if expected == "ok":
        rep = load_dataset(root, duplicates=False)
        assert len(rep.samples) == 9 and rep.problems == []
        assert {s.label for s in rep.samples} == {"a", "b", "c"}
    elif expected[0] == "error":
        with pytest.raises(DataError, match=expected[1]) as ei:
            load_dataset(root, duplicates=False)
        assert "labels.csv" in str(ei.value)
    else:
        rep = load_dataset(root, duplicates=False)
        assert (expected[1], expected[2]) in _kinds(rep), rep.problems
        if any(p.action != "ignored" for p in rep.problems):
            with pytest.raises(DatasetValidationError):
                load_dataset(root, strict=True, duplicates=False)


def test_unknown_class_duplicate_stems_and_one_sample_class(tmp_path):
    root = _generic(tmp_path)
    # unknown class: skipped and named
    rep = load_dataset(root, class_names=["a", "b"], duplicates=False)
    unknown = [p for p in rep.problems if p.kind == "unknown_class"]
    assert len(unknown) == 3 and all("'c'" in p.message and p.action == "skipped" for p in unknown)
    # two images with the same stem (masks would be ambiguous)
    _png(root / "images" / "img_000.tif", np.zeros((H, W), np.uint8))
    rep = load_dataset(root, duplicates=False)
    assert ("img_000.tif", "duplicate_id") in _kinds(rep) or ("img_000.png", "duplicate_id") in _kinds(rep)
    # a class with one sample: warned, and a split says exactly which class is too small
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["img_solo.png", "rare", "solo"])
    img = np.zeros((H, W), np.uint8)
    img[2:9, 3:11] = 200  # unlike the others (no duplicate link)
    _png(root / "images" / "img_solo.png", img)
    rep = load_dataset(root, duplicates=False)
    assert ("rare", "too_few_samples") in _kinds(rep)
    with pytest.raises(SplitError, match="'rare': 1"):
        train_val_test_split(rep.samples, 0.2, 0.2, seed=0)


def test_symlink_loops_in_the_dataset_tree_terminate(tmp_path):
    root = _generic(tmp_path)
    os.symlink("..", root / "images" / "up")  # directory cycle
    os.symlink("self", root / "self")  # self-referencing link
    os.symlink("loop.png", root / "images" / "loop.png")  # image link loop
    rep = load_dataset(tmp_path, duplicates=False)  # auto-detect walks the tree
    assert len(rep.samples) == 9


def test_panda_slide_without_tissue_is_reported(tmp_path):
    root = make_panda(tmp_path / "panda")
    write_pyramid_tiff(root / "train_images" / "aaa111.tiff", np.full((512, 384, 3), 245, np.uint8))
    rep = load_dataset(root, duplicates=False)
    p = [p for p in rep.problems if Path(p.file).name == "aaa111.tiff"]
    assert p and p[0].kind == "no_tissue" and p[0].action == "skipped"
    assert all(s.image.name != "aaa111.tiff" for s in rep.samples)


def test_rle_overrunning_the_image(tmp_path):
    root, _ = make_siim(tmp_path / "siim")
    csv_path = root / "train-rle.csv"
    lines = csv_path.read_text().splitlines()
    victim = lines[1].split(",")[0]
    lines[1] = f"{victim}, 10 100000"
    csv_path.write_text("\n".join(lines) + "\n")
    rep = load_dataset(root, duplicates=False)
    bad = [p for p in rep.problems if victim in p.file or victim in p.message]
    assert bad and bad[0].kind == "bad_rle" and "only 4096 pixels" in bad[0].message and bad[0].action == "skipped"
    with pytest.raises(DatasetValidationError, match=victim.replace(".", r"\.")):
        load_dataset(root, strict=True, duplicates=False)


def test_rle_error_from_load_sample_names_the_image(tmp_path):
    from napari_mtunet.data import Sample

    img = tmp_path / "x.png"
    _png(img, np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="x.png"):
        load_sample(Sample(image=img, label=None, rle=("0 1000",)))


# --------------------------------------------------------------------------- permissions (as root too)


def test_unreadable_files_are_named(tmp_path):
    """chmod 000 does not stop root, so when running as root the check runs in a child whose
    CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH capabilities are dropped (setpriv)."""
    root = _generic(tmp_path)
    secret = root / "images" / "img_004.png"
    code = textwrap.dedent(
        f"""
        from napari_mtunet.data import FilePermissionError, load_dataset, read_image
        try:
            read_image({str(secret)!r})
        except FilePermissionError as exc:
            assert "img_004.png" in str(exc) and "permission" in str(exc), exc
        else:
            raise SystemExit("read an unreadable file")
        rep = load_dataset({str(root)!r}, duplicates=False)
        kinds = {{(p.file.split("/")[-1], p.kind, p.action) for p in rep.problems}}
        assert ("img_004.png", "permission", "skipped") in kinds, rep.problems
        assert len(rep.samples) == 8
        print("PERMISSION-OK")
        """
    )
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is unavailable: cannot make a file unreadable to this user")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    secret.chmod(0)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        secret.chmod(0o644)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr and "setpriv" in proc.stderr:
        pytest.skip("setpriv cannot change the capability bounding set here")
    assert proc.returncode == 0 and "PERMISSION-OK" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- arrays (napari layers)

BAD_ARRAYS = {
    "4d_not_rgb": (np.zeros((2, 3, 16, 16), np.uint8), "shape"),
    "inf": (np.array([[0.0, np.inf], [1.0, 0.5]], np.float32), "infinite"),
    "neg_inf_float64": (np.full((8, 8), -np.inf), "infinite"),
    "complex": (np.zeros((16, 16), np.complex64), "pixel type"),
    "object": (np.empty((16, 16), object), "pixel type"),
    "empty_rows": (np.zeros((0, 16), np.uint8), "empty"),
    "strings": (np.full((4, 4), "a"), "pixel type"),
}


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_bad_arrays_are_clear_errors(predictor, name):
    arr, text = BAD_ARRAYS[name]
    with pytest.raises((ImageFormatError, DataError), match=text):
        predictor.predict(arr)


@pytest.mark.parametrize(
    "arr",
    [np.ones((1, 1), np.uint8), np.ones((1, 1, 3), np.uint8) * 9, np.zeros((5, 7), bool),
     np.arange(-50, 50, dtype=np.int16).reshape(10, 10), np.full((6, 6), 3.0, np.float32)],
    ids=["1x1", "1x1_rgb", "bool", "int16_signed", "constant_float_out_of_range"],
)
@pytest.mark.parametrize("mode", ["resize", "native"])
def test_degenerate_but_valid_arrays_predict(predictor, arr, mode):
    p = predictor.predict(arr, mode=mode)
    assert p.mask.shape == arr.shape[:2] and np.isfinite(p.probability).all()
    assert abs(float(p.class_probabilities.sum()) - 1) < 1e-5
