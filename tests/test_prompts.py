"""Prompts for interactive segmentation: validation, the zoom region, guidance encoding, the simulated user."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtunet.config import GUIDANCE_CHANNELS, InteractiveConfig
from napari_mtunet.prompts import (
    Click,
    PromptError,
    Prompts,
    apply_prompts,
    bbox,
    disks,
    ellipse_in_box,
    encode,
    next_click,
    to_region,
    training_view,
    zoom_region,
)


def _ellipse(shape, centre, radii):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return ((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2 <= 1


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [(200, 5, True)]}, "outside the image"),
        ({"points": [(-1, 5, True)]}, "outside the image"),
        ({"points": [(5, 5, "yes")]}, "'positive' must be true or false"),
        ({"points": [(5,)]}, "must be (row, col, positive)"),
        ({"points": [5]}, "must be (row, col, positive)"),
        ({"points": [(float("nan"), 5, True)]}, "must be finite"),
        ({"points": [("1", 5, True)]}, "must be a number"),
        ({"box": (10, 10, 10, 30)}, "is empty inside the image"),
        ({"box": (120, 10, 150, 30)}, "is empty inside the image"),
        ({"box": (1, 2, 3)}, "must be (row0, col0, row1, col1)"),
        ({"box": (1, 2, 3, True)}, "must be a number"),
        ({"points": [(5, 5, True)], "previous_mask": np.zeros((10, 10))}, "previous_mask has shape"),
        ({"points": [(5, 5, True)], "previous_mask": np.full((100, 80), np.nan)}, "NaN"),
    ],
)
def test_bad_prompts_are_refused_by_name(kwargs, message):
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        Prompts.from_user((100, 80), where="scan.png", **kwargs)
    assert str(info.value).startswith("scan.png: ")


def test_prompts_are_normalised():
    p = Prompts.from_user((100, 80), points=[(10, 20), (30.5, 40, False), (np.int64(3), np.float32(4), np.bool_(1))],
                          box=(-5, 10.2, 50, 500), previous_mask=np.eye(100, 80, dtype=np.uint8) * 255)
    assert [c.positive for c in p.points] == [True, False, True]
    assert p.box == (0, 10, 50, 80)  # clipped to the image, outward-rounded
    assert p.previous_mask.dtype == bool and p.previous_mask.sum() == 80
    assert not p.empty and not p.needs_first_pass()
    assert Prompts.from_user((100, 80), points=[(1, 1)]).needs_first_pass()


def test_extent_holds_box_positive_clicks_and_previous_mask_not_negative_clicks():
    prev = np.zeros((100, 80), bool)
    prev[40:50, 30:35] = True
    p = Prompts.from_user((100, 80), points=[(10, 5, True), (90, 70, False)], box=(20, 20, 30, 40), previous_mask=prev)
    assert p.extent() == (10, 5, 50, 40)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("shape, extent", [((471, 562), (100, 270, 190, 360)), ((100, 800), (10, 10, 20, 15)),
                                           ((300, 300), (0, 0, 300, 300)), ((64, 2000), (30, 1990, 40, 2000))])
def test_zoom_region_is_square_holds_the_extent_and_stays_inside(shape, extent):
    r0, c0, r1, c1 = zoom_region(shape, extent, margin=0.4, min_zoom=0.15)
    assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]
    assert r0 <= extent[0] and c0 <= extent[1] and r1 >= extent[2] and c1 >= extent[3]
    side = max(extent[2] - extent[0], extent[3] - extent[1]) * 1.4
    side = max(side, 0.15 * max(shape))
    assert r1 - r0 == min(shape[0], round(side)) and c1 - c0 == min(shape[1], round(side))


def test_zoom_region_without_prompts_is_the_whole_image():
    assert zoom_region((40, 50), None, margin=0.4, min_zoom=0.1) == (0, 0, 40, 50)


def test_encoding_places_clicks_box_and_previous_mask_in_the_region():
    shape = (400, 600)
    prev = np.zeros(shape, bool)
    prev[150:250, 250:350] = True
    p = Prompts.from_user(shape, points=[(200, 300, True), (160, 260, False)], box=(150, 250, 250, 350),
                          previous_mask=prev)
    region = (100, 200, 300, 400)  # 200 x 200 -> 64 x 64: scale 0.32
    g = encode(p, region, (64, 64), radius=3)
    assert g.shape == (len(GUIDANCE_CHANNELS), 64, 64) and g.dtype == np.float32
    r, c = to_region(200, 300, region, (64, 64))
    assert g[0, round(r), round(c)] == 1 and g[0].sum() == disks([(r, c)], (64, 64), 3).sum()
    assert g[1].sum() > 0 and g[1, round(r), round(c)] == 0
    # the box and the previous mask cover the same 100 x 100 pixels: 32 x 32 of the input
    assert g[3].sum() == 32 * 32 and g[3, 16:48, 16:48].all()
    assert abs(int(g[2].sum()) - 32 * 32) <= 64


def test_pixel_centres_map_to_pixel_centres():
    assert to_region(0, 0, (0, 0, 10, 10), (10, 10)) == (0, 0)
    assert to_region(9, 9, (0, 0, 10, 10), (20, 20)) == (18.5, 18.5)


def test_apply_prompts_keeps_the_clicked_part_and_respects_every_click():
    m = np.zeros((50, 50), bool)
    m[5:15, 5:15] = True  # the clicked object
    m[30:40, 30:40] = True  # another blob
    p = Prompts.from_user((50, 50), points=[(10, 10, True), (6, 6, False), (45, 2, True)])
    out = apply_prompts(m, p, radius=1.5)
    assert out[10, 10] and not out[6, 6] and out[45, 2]
    assert not out[30:40, 30:40].any()  # the other blob was not asked for
    boxed = apply_prompts(m, Prompts.from_user((50, 50), box=(28, 28, 42, 42)), radius=1.5)
    assert boxed[30:40, 30:40].all() and not boxed[5:15, 5:15].any()


def test_ellipse_in_box_fills_pi_over_four_of_it():
    e = ellipse_in_box((200, 200), (20, 40, 120, 180))
    assert abs(e.sum() / (100 * 140) - np.pi / 4) < 0.02
    assert bbox(e) == (20, 40, 120, 180)


# --------------------------------------------------------------------------- the simulated user


def test_first_click_is_the_point_farthest_from_the_boundary():
    truth = _ellipse((120, 160), (60, 90), (30, 50))
    click = next_click(truth, None)
    assert click == Click(60.0, 90.0, True)


def test_next_click_goes_into_the_larger_error_region():
    truth = _ellipse((120, 160), (60, 60), (30, 30))
    pred = truth.copy()
    pred[20:100, 100:150] = True  # a large false-positive area
    pred[55:65, 55:65] = False  # a small hole
    click = next_click(truth, pred)
    assert not click.positive and pred[int(click.row), int(click.col)] and not truth[int(click.row), int(click.col)]
    pred[20:100, 100:150] = False
    click = next_click(truth, pred)
    assert click.positive and 55 <= click.row < 65 and 55 <= click.col < 65
    assert next_click(truth, truth) is None


def test_random_next_click_stays_in_the_error_region():
    truth = _ellipse((80, 80), (40, 40), (20, 20))
    pred = np.zeros_like(truth)
    rng = np.random.default_rng(0)
    clicks = [next_click(truth, pred, rng) for _ in range(30)]
    assert all(c.positive and truth[int(c.row), int(c.col)] for c in clicks)
    assert len({(c.row, c.col) for c in clicks}) > 5  # drawn, not always the same point


def test_training_views_cover_every_kind_and_their_prompts_are_inside_the_region():
    truth = _ellipse((300, 400), (150, 250), (40, 60))
    cfg = InteractiveConfig()
    rng = np.random.default_rng(1)
    kinds = {}
    for _ in range(300):
        v = training_view(truth, rng, cfg)
        kinds[v.kind] = kinds.get(v.kind, 0) + 1
        r0, c0, r1, c1 = v.region
        assert 0 <= r0 < r1 <= 300 and 0 <= c0 < c1 <= 400
        assert 0 <= v.iterations <= cfg.max_iterations
        for p in v.prompts.points:
            assert truth[int(p.row), int(p.col)] == p.positive
            if p.positive or v.kind != "corrections":  # (a negative click may lie beyond what is run)
                assert r0 <= p.row < r1 and c0 <= p.col < c1
        if v.kind == "corrections":
            assert v.prompts.previous_mask is not None and (v.prompts.previous_mask != truth).any()
            assert v.region == zoom_region(truth.shape, v.prompts.extent(), margin=cfg.zoom_margin,
                                           min_zoom=cfg.min_zoom)  # what the Predictor would run
        if v.kind == "box":
            b = v.prompts.box
            assert r0 <= b[0] and b[2] <= r1 and c0 <= b[1] and b[3] <= c1
    assert set(kinds) == {"box", "first_click", "zoomed_clicks", "corrections"}
    assert abs(kinds["box"] / 300 - cfg.box_share) < 0.1
    empty = training_view(np.zeros((50, 50), bool), rng, cfg)
    assert empty.kind == "negative" and empty.prompts.points and not any(p.positive for p in empty.prompts.points)


def test_corrupted_masks_are_wrong_and_corrective_clicks_fix_their_errors():
    from napari_mtunet.prompts import corrective_clicks, corrupt_mask

    truth = _ellipse((200, 240), (100, 120), (30, 45))
    rng = np.random.default_rng(5)
    ious = []
    for _ in range(40):
        prev = corrupt_mask(truth, rng)
        ious.append((prev & truth).sum() / max(1, (prev | truth).sum()))
        for c in corrective_clicks(truth, prev, rng, 3):
            r, k = int(c.row), int(c.col)
            assert truth[r, k] == c.positive and prev[r, k] != c.positive  # on an error, on the right side
    assert max(ious) < 1.0 and np.median(ious) < 0.9 and min(ious) < 0.5
