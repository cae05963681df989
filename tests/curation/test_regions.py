"""The groundwork of search inside images (curation/regions.py): windows of a grid, their pooled vectors and boxes
in the original image, a query pooled over a box, and the int8 reduction a folder would store."""

from __future__ import annotations

import numpy as np
import pytest

from curation.regions import RegionCodec, box_vector, crop_box, pool_windows, window_boxes, windows


def test_windows_cover_the_grid_to_its_edges_at_two_sizes():
    wins = windows(14)
    assert len(wins) == 49 + 36 and set(wins[:, 2]) == {3, 5}  # 7 x 7 and 6 x 6 positions, edges included
    covered = np.zeros((14, 14), bool)
    for top, left, side in wins:
        covered[top:top + side, left:left + side] = True
    assert covered.all()
    assert (wins[:, :2] + wins[:, 2:] <= 14).all()
    # a window larger than the grid becomes the whole grid (once): a small input's 4 x 4 and 2 x 2 grids
    assert windows(4).tolist() == [[0, 0, 3], [0, 0, 4], [0, 1, 3], [1, 0, 3], [1, 1, 3]]
    assert windows(2).tolist() == [[0, 0, 2]]


def test_pooled_windows_are_the_mean_of_their_cells():
    fmap = np.random.default_rng(0).standard_normal((8, 14, 14)).astype(np.float32)
    wins = windows(14)
    pooled = pool_windows(fmap, wins)
    for (top, left, side), got in zip(wins, pooled):
        assert np.allclose(got, fmap[:, top:top + side, left:left + side].mean(axis=(1, 2)), atol=1e-5)


def test_boxes_are_in_the_original_images_pixels():
    """A 640x480 photo: resized to 341x256, center crop 224 -> the model sees x 60..580, y 0..420 of the photo
    (a 420-pixel square, 30 pixels a cell of 14)."""
    seen = crop_box(640, 480, 256, 224)
    assert np.allclose(seen, (110.0, 30.0, 420.0))
    boxes = window_boxes(np.array([[0, 0, 3], [11, 9, 3]], np.int32), 14, seen)
    assert np.allclose(boxes[0], [110, 30, 200, 120]) and np.allclose(boxes[1], [380, 360, 470, 450])


def test_a_box_query_pools_the_cells_it_covers_by_their_share():
    fmap = np.zeros((2, 14, 14), np.float32)
    fmap[0, 2:5, 3:6] = 1.0  # a part at cells rows 2-4, columns 3-5
    seen = (0.0, 0.0, 224.0)  # a square image seen whole: 16 pixels a cell
    inside = box_vector(fmap, (48, 32, 96, 80), seen)
    assert np.allclose(inside, [1.0, 0.0])
    half = box_vector(fmap, (40, 32, 96, 80), seen)  # half a cell more to the left, outside the part
    assert np.isclose(half[0], 3 / 3.5)
    with pytest.raises(ValueError, match="outside the part of the image"):
        box_vector(fmap, (300, 300, 400, 400), seen)


def test_the_codec_keeps_cosines_and_round_trips_through_its_arrays():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 16)) @ rng.standard_normal((16, 256))  # rank 16 in 256 dims
    x = x.astype(np.float32)
    codec = RegionCodec.fit(x, dims=32)
    reduced = codec.reduce(x[:200])
    decoded = codec.decode(codec.encode(x[:200]))
    cos = (reduced * decoded).sum(1) / np.linalg.norm(decoded, axis=1)
    assert codec.encode(x[:5]).dtype == np.int8 and cos.min() > 0.99
    # the codes score pairs as the reduced vectors do
    exact, coded = reduced @ reduced[0], decoded @ decoded[0] / np.linalg.norm(decoded[0])
    assert np.corrcoef(exact, coded)[0, 1] > 0.99
    again = RegionCodec.from_arrays(codec.to_arrays())
    assert np.array_equal(again.encode(x[:10]), codec.encode(x[:10]))
    with pytest.raises(ValueError, match="missing scale"):
        RegionCodec.from_arrays({"mean": codec.mean, "basis": codec.basis})
