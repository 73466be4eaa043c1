"""SIIM-ACR run-length encoding: column-major, relative offsets, '-1' = empty."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_mtunet.data import DataError, rle_decode, rle_encode

# Hand-made 4x3 (H x W) example.  Column-major pixel numbering:
#   col 0: 0 1 2 3 | col 1: 4 5 6 7 | col 2: 8 9 10 11
MASK = np.array(
    [
        [0, 0, 1],
        [1, 1, 0],
        [1, 0, 0],
        [0, 0, 1],
    ],
    dtype=np.uint8,
)
# foreground flat (column-major) indices: 1, 2, 5, 8, 11
# runs: [1,2] -> start 1 len 2; [5] -> start 5-3=2 len 1; [8] -> 8-6=2 len 1; [11] -> 11-9=2 len 1
CODE = "1 2 2 1 2 1 2 1"


def test_hand_made_example_both_ways():
    assert rle_encode(MASK) == CODE
    np.testing.assert_array_equal(rle_decode(CODE, MASK.shape), MASK)


def test_matches_official_reference_decoder():
    """The competition's rle2mask (relative starts, reshape(width, height) then .T)."""

    def rle2mask(rle, width, height):
        mask = np.zeros(width * height)
        array = np.asarray([int(x) for x in rle.split()])
        starts, lengths = array[0::2], array[1::2]
        current_position = 0
        for index, start in enumerate(starts):
            current_position += start
            mask[current_position : current_position + lengths[index]] = 255
            current_position += lengths[index]
        return mask.reshape(width, height)

    rng = np.random.default_rng(0)
    m = (rng.random((16, 16)) > 0.7).astype(np.uint8)
    ref = (rle2mask(rle_encode(m), 16, 16).T > 0).astype(np.uint8)
    np.testing.assert_array_equal(ref, m)


def test_empty_and_full():
    assert rle_encode(np.zeros((5, 7))) == "-1"
    assert not rle_decode("-1", (5, 7)).any()
    assert not rle_decode(" -1 ", (5, 7)).any()
    full = np.ones((3, 4), np.uint8)
    assert rle_encode(full) == "0 12"
    np.testing.assert_array_equal(rle_decode("0 12", (3, 4)), full)


def test_bad_strings_are_clear_errors():
    with pytest.raises(DataError, match="odd number"):
        rle_decode("1 2 3", (4, 4))
    with pytest.raises(DataError, match="non-integer"):
        rle_decode("1 x", (4, 4))
    with pytest.raises(DataError, match="only 16 pixels"):
        rle_decode("10 10", (4, 4))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_round_trip(mask):
    code = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(code, mask.shape), mask)
