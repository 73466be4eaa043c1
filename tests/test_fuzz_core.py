"""Property-based tests (hypothesis): RLE, joint transforms, tiled reassembly, Dice/IoU, splits.

Complements, without repeating, tests/test_data_rle.py (mask -> RLE -> mask
round trip), tests/test_data_splits.py (no group leak at fixed fractions)
and tests/test_data_transforms.py (six seeds on one fixed image):

- RLE: string -> mask -> string is canonical; *arbitrary* integer strings
  either decode to exactly the pixels they describe or raise DataError;
- transforms: random sizes/aspect ratios/seeds; the mask stays binary and
  aligned (exactly, for crop + flips at native resolution);
- tiling: with a test-only network whose probability *is* the input, the
  tiled path reassembles the image exactly, whatever the size, tile size
  and overlap (incl. 1 x 100000 px), and ``iter_tiles`` covers every pixel;
- Dice/IoU: bounds, symmetry, identity, the Dice-IoU relation, disjointness;
- splits: random fractions and seeds, partition + no group leak + determinism.

Example counts are small (the file runs in well under a minute).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_mtunet.config import AugmentConfig, Preprocessing
from napari_mtunet.data import (
    DataError,
    Sample,
    SplitError,
    build_transforms,
    sample_key,
    split_groups,
    train_val_test_split,
)
from napari_mtunet.data.rle import rle_decode, rle_encode
from napari_mtunet.inference import Predictor
from napari_mtunet.training.metrics import dice_iou_per_image, segmentation_metrics

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- RLE


@st.composite
def rle_strings(draw):
    """A valid SIIM RLE string (relative starts >= 1 except the first) for a random shape."""
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    n = h * w
    pairs, pos = [], 0
    for i in range(draw(st.integers(0, 6))):
        gap = draw(st.integers(0 if i == 0 else 1, 5))
        if pos + gap >= n:
            break
        length = draw(st.integers(1, max(1, min(6, n - pos - gap))))
        pairs.append((gap, length))
        pos += gap + length
    return h, w, " ".join(f"{g} {l}" for g, l in pairs) or "-1"


@FAST
@given(rle_strings())
def test_rle_string_mask_string_is_canonical(case):
    h, w, code = case
    mask = rle_decode(code, (h, w))
    assert mask.dtype == np.uint8 and mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
    lengths = [int(v) for v in code.split()[1::2]] if code != "-1" else []
    assert int(mask.sum()) == sum(lengths)
    assert rle_encode(mask) == code  # non-adjacent runs: the encoding is unique


@FAST
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.lists(st.integers(-3, 200), max_size=10),
)
def test_rle_decode_arbitrary_integers_never_crashes(h, w, nums):
    code = " ".join(map(str, nums))
    try:
        mask = rle_decode(code, (h, w))
    except DataError as exc:
        assert "RLE" in str(exc)
        return
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
    assert int(mask.sum()) == sum(nums[1::2])  # runs are disjoint: every described pixel is set


@pytest.mark.parametrize("code", ["1 " + "9" * 30, " ".join([str(2**62), "1"] * 3)])
def test_rle_decode_huge_numbers_are_data_errors(code):
    with pytest.raises(DataError, match="RLE"):
        rle_decode(code, (4, 4))


# --------------------------------------------------------------------------- transforms


def _derived_pair(h, w, rng):
    """Random rectangles: the image is exactly mask * 255 on all three channels."""
    m = np.zeros((h, w), np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, max(2, h // 2 + 1)), x0 : x0 + rng.integers(1, max(2, w // 2 + 1))] = 1
    img = torch.from_numpy(np.stack([m * 255] * 3)).to(torch.uint8)
    return img, torch.from_numpy(m)[None]


@FAST
@given(st.integers(1, 90), st.integers(1, 90), st.integers(0, 2**16))
def test_transforms_keep_mask_binary_and_aligned(h, w, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    img, mask = _derived_pair(h, w, rng)
    aug = AugmentConfig(rotation_degrees=25, shear_degrees=12, hflip=True, vflip=True)
    tf = build_transforms(Preprocessing(image_size=32), aug, train=True)
    out_img, out_mask = tf(img, mask)
    assert out_img.shape == (3, 32, 32) and out_mask.shape == (1, 32, 32)
    assert out_img.dtype == torch.float32 and out_mask.dtype == torch.uint8
    assert set(out_mask.unique().tolist()) <= {0, 1}
    assert torch.isfinite(out_img).all() and 0 <= float(out_img.min()) and float(out_img.max()) <= 1
    # alignment: pixels the (interpolated) image shows as clearly in / out agree with the (nearest) mask
    m = out_mask[0].bool()
    inside, outside = out_img[0] > 0.99, out_img[0] < 0.01
    if int(inside.sum()) >= 16:
        assert m[inside].float().mean() >= 0.9
    if int(outside.sum()) >= 16:
        assert (~m[outside]).float().mean() >= 0.9


@FAST
@given(st.integers(8, 80), st.integers(8, 80), st.integers(0, 2**16))
def test_native_crop_and_flips_are_exactly_aligned(h, w, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    img, mask = _derived_pair(h, w, rng)
    aug = AugmentConfig(rotation_degrees=0, shear_degrees=0, hflip=True, vflip=True)
    tf = build_transforms(Preprocessing(image_size=32, resize=False), aug, train=True)
    out_img, out_mask = tf(img, mask)
    assert out_img.shape == (3, 32, 32) and out_mask.shape == (1, 32, 32)
    # no interpolation anywhere: the image is still exactly the mask (padding is 0 in both)
    assert torch.equal((out_img[0] * 255).round().to(torch.uint8), out_mask[0] * 255)


# --------------------------------------------------------------------------- tiling


@pytest.fixture(scope="module")
def echo():
    from array_data import EchoNet

    return EchoNet().eval()


@FAST
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from([64, 96, 128]),
    st.sampled_from([0.0, 0.1, 0.25, 0.45]),
    st.integers(1, 4),
    st.integers(0, 2**16),
)
@example(h=1, w=100_000, tile=128, overlap=0.25, batch=4, seed=0)  # 10^5-px-wide
@example(h=257, w=1, tile=64, overlap=0.45, batch=1, seed=1)
def test_tiled_prediction_reassembles_the_image_exactly(echo, h, w, tile, overlap, batch, seed):
    img = np.random.default_rng(seed).integers(1, 255, (h, w), dtype=np.uint8)
    p = Predictor(echo, device="cpu", tile_size=tile, tile_overlap=overlap, batch_size=batch, threshold=0.5)
    pred = p.predict(img, mode="tiled")
    expected = img.astype(np.float32) / 255
    np.testing.assert_allclose(pred.probability, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.mask, (expected >= 0.5).astype(np.uint8))
    softmax = torch.softmax(echo.bias.detach(), 0).numpy()
    np.testing.assert_allclose(pred.class_probabilities, softmax, atol=1e-5)


@FAST
@given(st.integers(1, 400), st.integers(1, 400), st.sampled_from([64, 128]), st.sampled_from([0.0, 0.25, 0.4]))
def test_iter_tiles_cover_every_pixel_with_the_right_content(echo, h, w, tile, overlap):
    img = (np.arange(h * w, dtype=np.int64).reshape(h, w) % 251 + 1).astype(np.uint8)
    p = Predictor(echo, device="cpu", tile_size=tile, tile_overlap=overlap)
    covered = np.zeros((h, w), bool)
    for y, x, t in p.iter_tiles(img):
        assert t.shape[2] == 3 and t.shape[0] % 32 == 0 and t.shape[1] % 32 == 0
        ye, xe = min(y + t.shape[0], h), min(x + t.shape[1], w)
        np.testing.assert_allclose(t[: ye - y, : xe - x, 0], img[y:ye, x:xe] / 255.0, atol=1e-6)
        covered[y:ye, x:xe] = True
    assert covered.all()


# --------------------------------------------------------------------------- Dice / IoU

masks = arrays(np.bool_, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)))


@FAST
@given(st.data())
def test_dice_iou_bounds_and_symmetries(data):
    a = data.draw(masks)
    b = data.draw(arrays(np.bool_, a.shape))
    d_ab, i_ab = dice_iou_per_image(a, b)
    d_ba, i_ba = dice_iou_per_image(b, a)
    assert ((0 <= d_ab) & (d_ab <= 1)).all() and ((0 <= i_ab) & (i_ab <= 1)).all()
    np.testing.assert_array_equal(d_ab, d_ba)
    np.testing.assert_array_equal(i_ab, i_ba)
    assert (i_ab <= d_ab + 1e-12).all()
    np.testing.assert_allclose(d_ab, 2 * i_ab / (1 + i_ab), atol=1e-12)  # Dice = 2 IoU / (1 + IoU)
    d_aa, i_aa = dice_iou_per_image(a, a)
    assert (d_aa == 1).all() and (i_aa == 1).all()
    # disjoint, both non-empty -> 0
    d_disj, _ = dice_iou_per_image(a, ~a)
    nonempty = a.reshape(len(a), -1).any(1) & (~a).reshape(len(a), -1).any(1)
    assert (d_disj[nonempty] == 0).all()
    # invariant to flipping both masks the same way
    np.testing.assert_array_equal(dice_iou_per_image(a[:, ::-1], b[:, ::-1])[0], d_ab)


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_segmentation_metrics_are_bounded_with_ordered_cis(data):
    a = data.draw(arrays(np.bool_, st.tuples(st.integers(1, 8), st.integers(2, 8), st.integers(2, 8))))
    b = data.draw(arrays(np.bool_, a.shape))
    res = segmentation_metrics(a, b, n_boot=50)
    for name, mv in res.items():
        if math.isfinite(mv.value):
            assert 0 <= mv.value <= 1, (name, mv)
        if math.isfinite(mv.ci_low):
            assert 0 <= mv.ci_low <= mv.ci_high <= 1, (name, mv)
    swapped = segmentation_metrics(b, a, n_boot=50)
    for k in ("dice", "iou", "dice_global"):
        assert res[k].value == swapped[k].value or (math.isnan(res[k].value) and math.isnan(swapped[k].value))


# --------------------------------------------------------------------------- splits


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 11)), min_size=24, max_size=60),
    st.floats(0.05, 0.35),
    st.floats(0.05, 0.35),
    st.integers(0, 10_000),
)
def test_random_fractions_partition_without_group_leaks_and_are_deterministic(spec, val, test, seed):
    samples = [
        Sample(image=Path(f"/d/ïmg, {i:03d}.png"), label=label, group=f"patient {g}") for i, (label, g) in enumerate(spec)
    ]
    try:
        split = train_val_test_split(samples, val, test, seed=seed)
    except SplitError:
        return  # too few groups for these fractions: a clear error is the right answer
    again = train_val_test_split(samples, val, test, seed=seed)
    assert (split.train, split.val, split.test) == (again.train, again.val, again.test)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    all_keys = [k for v in parts.values() for k in v]
    assert len(all_keys) == len(set(all_keys)) == len(samples)
    group_of = dict(zip([s.id for s in samples], split_groups(samples)))
    placed: dict[str, str] = {}
    by_key = {sample_key(s): s for s in samples}
    for name, keys in parts.items():
        for k in keys:
            g = group_of[by_key[k].id]
            assert placed.setdefault(g, name) == name, f"group {g} in {placed[g]} and {name}"


# --------------------------------------------------------------------------- text safety, masks with alpha, metrics


@FAST
@given(st.text(max_size=60))
def test_escaped_text_is_always_printable_and_safe_text_is_untouched(text):
    from napari_mtunet import textsafe

    shown = textsafe.escape(text)
    assert not textsafe.unsafe_characters(shown)
    shown.encode("utf-8")  # never a lone surrogate left
    if not textsafe.unsafe_characters(text):
        assert shown == text
        textsafe.check_name(text)
    else:
        with pytest.raises(ValueError):
            textsafe.check_name(text)


@FAST
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([2, 4]))))
def test_the_alpha_rule_is_binary_and_transparent_pixels_are_background(arr):
    from napari_mtunet.preprocess import to_binary_mask

    m = to_binary_mask(arr)
    assert m.shape == arr.shape[:2] and set(np.unique(m)) <= {0, 1}
    alpha = arr[..., -1]
    if alpha.min() == alpha.max():
        assert np.array_equal(m, arr[..., :-1].any(-1).astype(np.uint8))  # constant alpha carries nothing
    else:
        assert not m[alpha == 0].any()  # transparent = background
        assert m[alpha != 0].all() or m[alpha != 0].sum() == (arr[alpha != 0][:, :-1].any(-1)).sum()


@FAST
@given(st.integers(2, 40), st.integers(2, 5), st.integers(0, 2**16))
def test_vectorised_classification_statistics_equal_their_single_value(n, k, seed):
    from napari_mtunet.training import metrics as M

    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, k, n), rng.integers(0, k, n)
    idx = M.bootstrap_indices(n, 5, seed)
    for fn in (M.accuracy, M.balanced_accuracy, lambda a, b, i=None: M.macro_f1(a, b, list(range(k)), i)):
        batched = fn(y, p, idx)
        singles = [fn(y[r], p[r]) for r in idx]
        np.testing.assert_allclose(batched, singles, atol=1e-12)
        assert 0.0 <= fn(y, p) <= 1.0
