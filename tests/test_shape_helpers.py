"""The plain-Python shape helpers of the hot paths agree with torch's and Triton's own."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pladis_analysis.maps._shapes import block_size, broadcast_shapes, cdiv, next_power_of_2, split_blocks

from hypothesis_budget import examples

shape = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@pytest.mark.property
@settings(max_examples=examples(300), deadline=None)
@given(st.lists(shape, min_size=1, max_size=4))
def test_broadcast_shapes_matches_torch(shapes):
    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        with pytest.raises(RuntimeError):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == expected


@pytest.mark.property
@settings(max_examples=examples(300), deadline=None)
@given(st.integers(1, 1 << 20), st.integers(1, 1 << 10))
def test_next_power_of_2_and_cdiv(n, b):
    p = next_power_of_2(n)
    assert p >= n and p & (p - 1) == 0 and (p == 1 or p // 2 < n)
    assert cdiv(n, b) == -(-n // b) and (cdiv(n, b) - 1) * b < n <= cdiv(n, b) * b
    assert block_size(n) == max(16, p)


@pytest.mark.property
@settings(max_examples=examples(300), deadline=None)
@given(st.integers(1, 4096))
def test_split_blocks_cover_with_less_padding(n):
    head, tail = split_blocks(n)
    assert head >= 16 and head & (head - 1) == 0
    if tail == 0:
        assert head == block_size(n)
    else:
        assert tail >= 16 and tail & (tail - 1) == 0
        assert head < n <= head + tail < block_size(n)


def test_split_blocks_for_text_encoders():
    assert split_blocks(77) == (64, 16)        # CLIP
    assert split_blocks(300) == (256, 64)      # Gemma in SANA
    assert split_blocks(120) == (128, 0)
    assert split_blocks(64) == (64, 0)
    assert split_blocks(5) == (16, 0)
