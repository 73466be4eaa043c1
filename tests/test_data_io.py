"""Image/mask readers: formats, conversions and precise errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_mtunet.data import (
    DataError,
    EmptyFileError,
    FilePermissionError,
    MaskMismatchError,
    MissingFileError,
    OptionalDependencyError,
    TruncatedFileError,
    UnsupportedFormatError,
    read_image,
    read_image_info,
    read_mask,
    read_region,
    tiff_levels,
)
from napari_mtunet.preprocess import to_float_rgb

from data_fixtures import write_pyramid_tiff

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (12, 17), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "name,array,mode",
    [
        ("g8.png", GREY8, None),
        ("rgb.png", RGB8, None),
        ("rgba.png", np.dstack([RGB8, np.full((12, 17), 200, np.uint8)]), None),
        ("g16.png", (GREY8.astype(np.uint16) * 257), None),
        ("g8.bmp", GREY8, None),
        ("rgb.bmp", RGB8, None),
    ],
)
def test_pil_formats_roundtrip_exactly(tmp_path, name, array, mode):
    p = tmp_path / name
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(p)
    out = read_image(p)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)
    info = read_image_info(p)
    assert (info.height, info.width) == (12, 17)


def test_jpeg_and_content_wins_over_extension(tmp_path):
    p = tmp_path / "photo.png"  # a JPEG mislabelled as .png still reads
    Image.fromarray(RGB8).save(p, format="JPEG", quality=95)
    out = read_image(p)
    assert out.shape == (12, 17, 3) and out.dtype == np.uint8


def test_one_bit_and_palette_png(tmp_path):
    m = np.zeros((10, 10), bool)
    m[2:5, 3:7] = True
    Image.fromarray(m).convert("1").save(tmp_path / "m.png")
    assert read_image(tmp_path / "m.png").dtype == bool
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), m.astype(np.uint8))
    pal = Image.fromarray(m.astype(np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), m.astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_dtypes(tmp_path, dtype):
    arr = (RNG.random((9, 11)) * (200 if dtype != np.float32 else 1)).astype(dtype)
    tifffile.imwrite(tmp_path / "x.tif", arr)
    out = read_image(tmp_path / "x.tif")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, arr)
    rgb = to_float_rgb(out)
    assert rgb.shape == (9, 11, 3)


def test_tiff_rgb_planar_and_multipage(tmp_path):
    planar = np.moveaxis(RGB8, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), RGB8)
    stack = RNG.integers(0, 255, (3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(UnsupportedFormatError, match="multi-page TIFF with 3 pages"):
        read_image(tmp_path / "stack.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif", page=2), stack[2])
    assert read_image_info(tmp_path / "stack.tif").pages == 3
    with pytest.raises(UnsupportedFormatError, match="page 5"):
        read_image(tmp_path / "stack.tif", page=5)


def test_error_missing_and_empty(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"zero\.png: .*0 bytes"):
        read_image(tmp_path / "zero.png")


def test_error_truncated_png_and_tiff(tmp_path):
    p = tmp_path / "t.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(TruncatedFileError) as ei:
        read_image(p)
    assert "t.png" in str(ei.value) and "truncated" in str(ei.value)
    t = tmp_path / "t.tif"
    tifffile.imwrite(t, RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    t.write_bytes(t.read_bytes()[:1000])
    with pytest.raises(DataError) as ei:
        read_image(t)
    assert "t.tif" in str(ei.value)
    assert ei.value.kind in ("truncated", "unreadable", "wrong_format")


def test_error_wrong_content_and_extension(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(UnsupportedFormatError, match="extension says PNG but the content is not an image"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "data.xyz").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="not a supported image file"):
        read_image(tmp_path / "data.xyz")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UnsupportedFormatError, match="found a folder"):
        read_image(tmp_path / "folder.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_error_permission(tmp_path):
    p = tmp_path / "secret.png"
    Image.fromarray(GREY8).save(p)
    p.chmod(0)
    try:
        with pytest.raises(FilePermissionError, match="no permission"):
            read_image(p)
    finally:
        p.chmod(0o644)


def test_dicom_without_pydicom_is_a_clear_error(tmp_path):
    pytest.importorskip("PIL")
    try:
        import pydicom  # noqa: F401

        pytest.skip("pydicom is installed")
    except ImportError:
        pass
    p = tmp_path / "x.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(OptionalDependencyError, match="pydicom"):
        read_image(p)


def test_masks_or_and_size_mismatch(tmp_path):
    a = np.zeros((10, 12), np.uint8)
    a[1:3, 1:3] = 255
    b = np.zeros((10, 12, 3), np.uint8)
    b[5:7, 5:9, 1] = 9  # RGB mask: any channel counts
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    m = read_mask([tmp_path / "a.png", tmp_path / "b.png"], shape=(10, 12))
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert m.sum() == 4 + 8
    with pytest.raises(MaskMismatchError) as ei:
        read_mask(tmp_path / "a.png", shape=(11, 12), image_path=tmp_path / "img.png")
    msg = str(ei.value)
    assert "a.png" in msg and "img.png" in msg and "12x10" in msg
    labels = np.array([[0, 1, 2, 3, 4, 5]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "lab.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "lab.png", values=(3, 4, 5)), [[0, 0, 0, 1, 1, 1]])


def test_read_region_matches_full_level(tmp_path):
    rng = np.random.default_rng(1)
    slide = rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)
    p = tmp_path / "slide.tiff"
    write_pyramid_tiff(p, slide, factors=(2, 4), tile=32)
    assert tiff_levels(p) == [(200, 150), (100, 75), (50, 38)]
    np.testing.assert_array_equal(read_region(p, (40, 70, 50, 33), 0), slide[70:103, 40:90])
    lvl1 = read_region(p, None, 1)
    np.testing.assert_array_equal(lvl1, slide[::2, ::2])
    # window crossing the border is zero-padded
    part = read_region(p, (60, 90, 32, 32), 1)
    np.testing.assert_array_equal(part[:10, :15], slide[::2, ::2][90:100, 60:75])
    assert (part[10:] == 0).all() and (part[:, 15:] == 0).all()
    with pytest.raises(UnsupportedFormatError, match="level 3"):
        read_region(p, (0, 0, 8, 8), 3)
    # striped (untiled) TIFF
    s = tmp_path / "striped.tif"
    tifffile.imwrite(s, slide, photometric="rgb", rowsperstrip=16)
    np.testing.assert_array_equal(read_region(s, (5, 33, 40, 20), 0), slide[33:53, 5:45])


def test_pyramid_as_separate_reduced_pages(tmp_path):
    """Real PANDA files store levels as top-level pages flagged reduced-resolution (no SubIFDs)."""
    rng = np.random.default_rng(2)
    slide = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
    p = tmp_path / "panda_like.tiff"
    with tifffile.TiffWriter(p) as tw:
        tw.write(slide, tile=(32, 32), photometric="rgb")
        tw.write(slide[::4, ::4], tile=(16, 16), photometric="rgb", subfiletype=1)
        tw.write(slide[::16, ::16], tile=(16, 16), photometric="rgb", subfiletype=1)
    assert tiff_levels(p) == [(128, 96), (32, 24), (8, 6)]
    np.testing.assert_array_equal(read_region(p, (4, 8, 16, 16), 1), slide[::4, ::4][8:24, 4:20])
    np.testing.assert_array_equal(read_image(p), slide)  # reduced pages are not extra "pages"
