"""Colour models: every one a reader can meet becomes a documented layout, or is refused by name.

Images are read as displayed (CMYK, YCbCr, L*a*b*, palettes, min-is-white
grey converted); masks by their stored labels and with their alpha (a lesion
drawn only in the alpha channel is found).  The same BUSI scan saved in
another colour model must give the network the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_mtunet.data.colour import COLOUR_MODELS, cmyk_to_rgb, invert_grey, ycbcr_to_rgb
from napari_mtunet.data.errors import UnsupportedColourModelError
from napari_mtunet.data.io import read_image, read_image_info, read_mask, read_region
from napari_mtunet.preprocess import to_binary_mask, to_float_rgb

BUSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    """A real BUSI scan as 8-bit RGB (a synthetic gradient when the data set is not there)."""
    path = BUSI / "malignant" / "malignant (1).png"
    if path.is_file():
        return np.asarray(Image.open(path).convert("RGB"))[:160, :200].copy()
    rng = np.random.default_rng(0)
    base = (np.add.outer(np.arange(160), np.arange(200)) % 256).astype(np.uint8)
    return np.stack([base, base[::-1], rng.integers(0, 256, base.shape, dtype=np.uint8)], -1)


def _same_input(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    """What the network sees (float RGB in [0, 1]) is the same within ``tol``."""
    fa, fb = to_float_rgb(a), to_float_rgb(b)
    assert fa.shape == fb.shape
    assert np.abs(fa - fb).max() <= tol, np.abs(fa - fb).max()


def _info_matches(path: Path, arr: np.ndarray) -> None:
    info = read_image_info(path)
    assert (info.height, info.width) == arr.shape[:2]
    assert info.channels == (1 if arr.ndim == 2 else arr.shape[-1]), (info, arr.shape)
    assert info.dtype == str(arr.dtype), (info, arr.dtype)


# --------------------------------------------------------------------------- CMYK


def test_cmyk_tiff_written_by_pillow_reads_as_the_rgb_scan(scan, tmp_path):
    path = tmp_path / "scan_cmyk.tif"
    Image.fromarray(scan).convert("CMYK").save(path)
    got = read_image(path)
    assert got.shape == scan.shape and got.dtype == np.uint8
    _same_input(got, scan, 1 / 255)  # not C, M, Y used as R, G, B (inverted) and K dropped
    _info_matches(path, got)


def test_cmyk_tiff_written_by_tifffile_with_black_ink(tmp_path):
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[:, :4] = (200, 30, 90)
    cmyk = np.zeros((8, 12, 4), np.uint8)
    cmyk[..., :3] = 255 - rgb
    cmyk[:, 4:] = 0  # no ink
    cmyk[:, 8:, 3] = 255  # pure black by the K ink alone
    path = tmp_path / "sep.tif"
    tifffile.imwrite(path, cmyk, photometric="separated")
    got = read_image(path)
    assert got.shape == (8, 12, 3)
    assert np.array_equal(got[:, :4], rgb[:, :4])
    assert (got[:, 8:] == 0).all()
    assert (got[:, 4:8] == 255).all()  # no ink = white


def test_cmyk_jpeg_reads_as_rgb(scan, tmp_path):
    path = tmp_path / "scan_cmyk.jpg"
    Image.fromarray(scan).convert("CMYK").save(path, quality=98)
    got = read_image(path)
    assert got.shape == scan.shape
    assert np.abs(got.astype(int) - scan).mean() < 4  # JPEG noise only


def test_cmyk_16_bit_tiff_keeps_its_depth(tmp_path):
    cmyk = np.zeros((4, 4, 4), np.uint16)
    cmyk[..., 0] = 65535  # full cyan
    path = tmp_path / "c16.tif"
    tifffile.imwrite(path, cmyk, photometric="separated")
    got = read_image(path)
    assert got.dtype == np.uint16 and (got[..., 0] == 0).all() and (got[..., 1:] == 65535).all()


def test_cmyk_mask_uses_the_converted_colour(tmp_path):
    cmyk = np.zeros((10, 10, 4), np.uint8)
    cmyk[..., 3] = 255  # black background (K ink)
    cmyk[3:6, 3:6] = (0, 255, 255, 0)  # red lesion
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, cmyk, photometric="separated")
    want = np.zeros((10, 10), np.uint8)
    want[3:6, 3:6] = 1
    assert np.array_equal(read_mask(path), want)


@pytest.mark.parametrize("inks,inkset", [(5, 1), (4, 2)])
def test_separated_other_than_cmyk_is_refused_by_name(tmp_path, inks, inkset):
    path = tmp_path / "ink.tif"
    tags = [(334, "H", 1, inks, True)] + ([(332, "H", 1, inkset, True)] if inkset != 1 else [])
    tifffile.imwrite(path, np.zeros((8, 8, inks), np.uint8), photometric="separated", planarconfig="contig",
                     extratags=tags)
    with pytest.raises(UnsupportedColourModelError, match=rf"ink\.tif: colour model 'separated' \(TIFF ink set {inkset}, "
                                                          rf"{inks} inks\)"):
        read_image(path)


# --------------------------------------------------------------------------- YCbCr and L*a*b*


def test_ycbcr_tiff_written_by_pillow_reads_as_rgb(scan, tmp_path):
    path = tmp_path / "ycc.tif"
    Image.fromarray(scan).convert("YCbCr").save(path)
    got = read_image(path)
    assert got.shape == scan.shape
    _same_input(got, scan, 4 / 255)  # 8-bit YCbCr round trip


def test_jpeg_compressed_ycbcr_tiles_are_rgb_and_windows_agree(scan, tmp_path):
    path = tmp_path / "slide.tif"
    ycc = np.asarray(Image.fromarray(scan).convert("YCbCr"))
    tifffile.imwrite(path, ycc, photometric="ycbcr", compression="jpeg", tile=(64, 64))
    whole = read_image(path)
    assert whole.shape == scan.shape
    assert np.abs(whole.astype(int) - scan).mean() < 6
    window = read_region(path, (10, 20, 100, 70))
    assert np.array_equal(window, whole[20:90, 10:110])


def test_ycbcr_coefficients_and_reference_black_white_are_used():
    ycc = np.array([[[16, 128, 128], [235, 128, 128]]], np.uint8)
    # studio range (ReferenceBlackWhite 16-235 / 16-240): 16 is black and 235 is white
    rgb = ycbcr_to_rgb(ycc, reference=(16, 235, 128, 240, 128, 240))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    # full range default (JFIF): Pillow's own conversion
    ycc = np.asarray(Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)).convert("YCbCr"))
    assert np.abs(ycbcr_to_rgb(ycc).astype(int) - [200, 30, 90]).max() <= 3


def test_subsampled_ycbcr_without_jpeg_is_refused_by_name(tmp_path):
    path = tmp_path / "sub.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="ycbcr")
    blob = path.read_bytes()
    entry = b"\x12\x02\x03\x00\x02\x00\x00\x00\x01\x00\x01\x00"  # YCbCrSubSampling SHORT[2] = (1, 1)
    assert blob.count(entry) == 1
    path.write_bytes(blob.replace(entry, entry[:8] + b"\x02\x00\x02\x00"))  # (2, 2), data left unsubsampled
    with pytest.raises(UnsupportedColourModelError, match="YCbCr.*subsampling"):
        read_image(path)


def test_lab_tiff_reads_as_srgb(scan, tmp_path):
    path = tmp_path / "lab.tif"
    Image.fromarray(scan).convert("LAB").save(path)
    got = read_image(path)
    assert got.shape == scan.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - scan).mean() < 3  # 8-bit L*a*b* quantisation
    grey = np.repeat(np.arange(0, 256, 15, dtype=np.uint8)[None, :, None], 3, axis=2)
    Image.fromarray(grey).convert("LAB").save(path)
    assert np.abs(read_image(path).astype(int) - grey).max() <= 2  # greys stay grey


def test_icc_lab_offset_encoding_is_decoded(scan, tmp_path):
    lab = np.asarray(Image.fromarray(scan).convert("LAB")).copy()
    icc = lab.copy()
    icc[..., 1:] = (lab[..., 1:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # a*, b* + 128
    path = tmp_path / "icclab.tif"
    tifffile.imwrite(path, icc, photometric=9)
    assert np.abs(read_image(path).astype(int) - scan).mean() < 3


@pytest.mark.parametrize("photometric,dtype,samples", [(10, np.uint8, 3), (8, np.uint16, 3), (32844, np.uint16, 1),
                                                       (32803, np.uint8, 1), (4, np.uint8, 1)])
def test_other_colour_models_are_refused_by_name(tmp_path, photometric, dtype, samples):
    path = tmp_path / "odd.tif"
    shape = (8, 8, samples) if samples > 1 else (8, 8)
    tifffile.imwrite(path, np.zeros(shape, dtype), photometric=photometric)
    with pytest.raises(UnsupportedColourModelError, match=r"odd\.tif: colour model .*(photometric|L\*a\*b\*)"):
        read_image(path)


# --------------------------------------------------------------------------- palettes


def test_palette_tiff_image_shows_its_colours_and_its_mask_its_indices(tmp_path):
    idx = np.zeros((6, 6), np.uint8)
    idx[2:4, 2:4] = 1
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0] = (65535, 65535, 65535)  # index 0 painted white
    cmap[:, 1] = (65535, 0, 0)  # index 1 red
    path = tmp_path / "pal.tif"
    tifffile.imwrite(path, idx, photometric="palette", colormap=cmap)
    img = read_image(path)
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 255, 255] and img[2, 2].tolist() == [255, 0, 0]
    assert np.array_equal(read_mask(path), idx)  # by index: white index 0 is background
    _info_matches(path, img)


def test_palette_png_with_transparency(tmp_path):
    idx = np.zeros((6, 6), np.uint8)
    idx[1:3, 1:3] = 2
    idx[4:, 4:] = 1  # index 1 is fully transparent
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255, 0, 255, 0] + [0] * (253 * 3))
    path = tmp_path / "pal.png"
    im.save(path, transparency=bytes([255, 0, 255]))
    img = read_image(path)
    assert img.shape == (6, 6, 4) and img[1, 1, :3].tolist() == [0, 255, 0]  # colours; alpha kept, then dropped
    assert to_float_rgb(img).shape == (6, 6, 3)
    want = (idx == 2).astype(np.uint8)  # index 0 and the transparent index 1 are background
    assert np.array_equal(read_mask(path), want)
    _info_matches(path, img)


# --------------------------------------------------------------------------- alpha in masks


def _rgba_mask(tmp_path, name, rgba):
    path = tmp_path / name
    Image.fromarray(rgba).save(path)
    return path


def test_a_lesion_drawn_only_in_the_alpha_channel_is_found(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[5:10, 6:12, 3] = 255  # black, opaque lesion on a transparent black background
    want = (rgba[..., 3] > 0).astype(np.uint8)
    assert np.array_equal(read_mask(_rgba_mask(tmp_path, "alpha.png", rgba)), want)
    la = np.zeros((20, 20, 2), np.uint8)
    la[..., 1] = want * 200
    path = tmp_path / "alpha_la.png"
    Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]).save(path)
    assert np.array_equal(read_mask(path), want)  # grey + alpha too
    tifffile.imwrite(tmp_path / "alpha.tif", rgba, photometric="rgb", extrasamples=[2])
    assert np.array_equal(read_mask(tmp_path / "alpha.tif"), want)  # TIFF with an alpha sample too


def test_transparent_background_of_any_colour_is_background(tmp_path):
    rgba = np.full((12, 12, 4), 255, np.uint8)
    rgba[..., 3] = 0  # transparent white everywhere
    rgba[4:8, 4:8] = (255, 0, 0, 255)  # opaque red lesion
    want = np.zeros((12, 12), np.uint8)
    want[4:8, 4:8] = 1
    assert np.array_equal(read_mask(_rgba_mask(tmp_path, "overlay.png", rgba)), want)


def test_constant_alpha_is_ignored_and_the_colour_decides(tmp_path):
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2:5, 2:5, :3] = 255
    want = np.zeros((12, 12), np.uint8)
    want[2:5, 2:5] = 1
    assert np.array_equal(read_mask(_rgba_mask(tmp_path, "opaque.png", rgba)), want)
    rgba[..., 3] = 0  # fully transparent everywhere: alpha still carries nothing
    assert np.array_equal(to_binary_mask(rgba), want)


def test_visible_pixels_of_two_colours_use_the_colour(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, :2, 3] = 0  # a transparent border
    rgba[3:6, 3:6, :3] = (0, 255, 0)  # a green lesion on opaque black
    want = np.zeros((10, 10), np.uint8)
    want[3:6, 3:6] = 1
    assert np.array_equal(to_binary_mask(rgba), want)


def test_images_with_alpha_keep_their_colours(tmp_path):
    la = np.zeros((5, 5, 2), np.uint8)
    la[..., 0] = 90
    la[..., 1] = 10
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]).save(path)
    img = read_image(path)
    assert img.shape == (5, 5) and (img == 90).all()  # grey, alpha ignored
    _info_matches(path, img)


# --------------------------------------------------------------------------- grey, depth, float


def test_min_is_white_image_is_inverted_and_its_mask_keeps_its_labels(tmp_path):
    grey = np.zeros((6, 6), np.uint8)
    grey[1:3, 1:3] = 255
    path = tmp_path / "miniswhite.tif"
    tifffile.imwrite(path, grey, photometric="miniswhite")
    assert np.array_equal(read_image(path), 255 - grey)  # as displayed
    assert np.array_equal(read_mask(path), (grey > 0).astype(np.uint8))  # stored labels (ImageJ's inverted LUT)
    twelve = np.array([[0, 4095]], np.uint16)
    assert invert_grey(twelve, 12).tolist() == [[4095, 0]]  # over its bits per sample, not the dtype's


def test_16_bit_and_float_images_follow_the_documented_scaling(tmp_path):
    sixteen = np.array([[0, 65535], [32768, 1000]], np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([sixteen] * 3, -1), photometric="rgb")
    got = read_image(tmp_path / "rgb16.tif")
    assert got.dtype == np.uint16
    np.testing.assert_allclose(to_float_rgb(got)[..., 0], sixteen / 65535, atol=1e-6)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").dtype == np.uint16
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    tifffile.imwrite(tmp_path / "unit.tif", unit)
    np.testing.assert_allclose(to_float_rgb(read_image(tmp_path / "unit.tif"))[..., 0], unit)  # kept
    wide = np.array([[-100.0, 0.0], [100.0, 300.0]], np.float32)
    tifffile.imwrite(tmp_path / "wide.tif", wide)
    np.testing.assert_allclose(to_float_rgb(read_image(tmp_path / "wide.tif"))[..., 0], (wide + 100) / 400, atol=1e-6)
    half = unit.astype(np.float16)
    tifffile.imwrite(tmp_path / "half.tif", half)
    np.testing.assert_allclose(to_float_rgb(read_image(tmp_path / "half.tif"))[..., 0], unit, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_32_bit_integer_images_are_scaled_per_image_not_by_the_dtype(tmp_path, dtype):
    data = np.array([[0, 500], [1000, 2000]], dtype)
    tifffile.imwrite(tmp_path / "i32.tif", data)
    out = to_float_rgb(read_image(tmp_path / "i32.tif"))[..., 0]
    np.testing.assert_allclose(out, data / 2000, atol=1e-6)  # not a constant ~0.5 or ~0 image


def test_more_than_one_extra_sample_is_refused_by_name(tmp_path):
    path = tmp_path / "rgb_plus_two.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 5), np.uint8), photometric="rgb", planarconfig="contig",
                     extrasamples=[0, 0])
    with pytest.raises(UnsupportedColourModelError, match="2 extra samples"):
        read_image(path)


# --------------------------------------------------------------------------- Pillow modes


@pytest.mark.parametrize("mode", ["HSV", "YCbCr", "CMYK", "RGBX", "RGBa", "LA", "LAB"])
def test_every_pillow_mode_converts(mode, scan):
    from napari_mtunet.data.colour import from_pil

    im = Image.fromarray(scan).convert("RGBA" if mode in ("RGBa",) else "RGB")
    if mode == "LA":
        im = Image.fromarray(scan[..., 0]).convert("LA")
    else:
        im = im.convert(mode)
    out = from_pil(im, "x.png", mask=False)
    if mode == "LA":
        assert out.shape == scan.shape[:2]
    else:
        assert out.shape[:2] == scan.shape[:2] and out.shape[-1] in (3, 4)
        assert np.abs(out[..., :3].astype(int) - scan).mean() < (3 if mode != "HSV" else 4)


def test_unknown_pillow_modes_are_refused_by_name():
    from napari_mtunet.data.colour import from_pil

    im = Image.new("I;16S", (4, 4)) if "I;16S" in Image.MODES else Image.new("I;16B", (4, 4))
    if im.mode == "I;16S":
        with pytest.raises(UnsupportedColourModelError, match="I;16S"):
            from_pil(im, "x.png", mask=False)


# --------------------------------------------------------------------------- DICOM


def _dicom(path: Path, arr: np.ndarray, pi: str, *, bits_stored: int | None = None, **extra) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else arr.shape[2]
    ds.PhotometricInterpretation = pi
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    kwargs = {"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}
    ds.save_as(path, **kwargs)
    return path


def test_dicom_monochrome1_is_inverted_over_its_stored_bits(tmp_path):
    data = np.array([[0, 4095], [1000, 2000]], np.uint16)
    got = read_image(_dicom(tmp_path / "m1.dcm", data, "MONOCHROME1", bits_stored=12))
    assert got.tolist() == [[4095, 0], [3095, 2095]]


def test_dicom_ybr_full_reads_as_rgb(scan, tmp_path):
    ycc = np.asarray(Image.fromarray(scan).convert("YCbCr"))
    got = read_image(_dicom(tmp_path / "ybr.dcm", ycc, "YBR_FULL"))
    assert got.shape == scan.shape
    _same_input(got, scan, 4 / 255)


def test_dicom_palette_colour_reads_as_rgb_and_unknown_models_are_refused(tmp_path):
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    lut = np.zeros(256, np.uint16)
    lut[1] = 65535
    zero = np.zeros(256, np.uint16)
    path = _dicom(tmp_path / "pal.dcm", idx, "PALETTE COLOR",
                  RedPaletteColorLookupTableDescriptor=[256, 0, 16], GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
                  BluePaletteColorLookupTableDescriptor=[256, 0, 16], RedPaletteColorLookupTableData=lut.tobytes(),
                  GreenPaletteColorLookupTableData=zero.tobytes(), BluePaletteColorLookupTableData=zero.tobytes())
    got = read_image(path)
    assert got.shape == (2, 2, 3) and got[0, 1, 0] == 65535 and got[0, 0].tolist() == [0, 0, 0]
    assert np.array_equal(read_mask(path), idx)  # masks: the stored index
    bad = _dicom(tmp_path / "hsv.dcm", np.zeros((2, 2, 3), np.uint8), "HSV")
    with pytest.raises(UnsupportedColourModelError, match=r"hsv\.dcm.*'HSV'"):
        read_image(bad)


# --------------------------------------------------------------------------- the table


def test_cmyk_formula_matches_pillow():
    rng = np.random.default_rng(4)
    cmyk = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    want = np.asarray(Image.frombytes("CMYK", (16, 16), cmyk.tobytes()).convert("RGB")).astype(int)
    assert np.abs(cmyk_to_rgb(cmyk).astype(int) - want).max() <= 1


def test_docs_list_every_colour_model():
    text = DOCS.read_text()
    for model, _where, image, mask in COLOUR_MODELS:
        assert model in text, model
    assert "refused by name" in text and "alpha rule" in text
