"""The groundwork of search inside images (curation/regions.py): windows of a grid, their pooled vectors and boxes
in the original image, a query pooled over a box, and the int8 reduction a folder would store."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.regions import (
    MAX_WINDOWS,
    PROBE_SCALES,
    RegionCodec,
    box_in_pixels,
    box_vector,
    crop_box,
    parse_box,
    pool_windows,
    probe_images,
    window_boxes,
    windows,
)


def test_windows_are_two_sevenths_of_the_grid_every_half_side_to_its_edges():
    for grid, side, count in ((14, 4, 36), (7, 2, 36), (28, 8, 36), (16, 5, 25), (8, 2, 49), (6, 2, 25), (4, 1, 16)):
        wins = windows(grid)
        assert len(wins) == count and set(wins[:, 2]) == {side}, grid
        covered = np.zeros((grid, grid), bool)
        for top, left, s in wins:
            covered[top:top + s, left:left + s] = True
        assert covered.all() and (wins[:, :2] + wins[:, 2:] <= grid).all(), grid
        assert len(wins) <= MAX_WINDOWS
    # other sizes on request; a window larger than the grid becomes the whole grid (once)
    assert len(windows(14, ((3, 2), (5, 2)))) == 49 + 36
    assert windows(2, ((3, 2), (5, 2))).tolist() == [[0, 0, 2]]


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


def test_codes_of_maps_equal_pooling_then_reducing_and_survive_the_codec_file():
    rng = np.random.default_rng(2)
    maps = np.abs(rng.standard_normal((6, 32, 14, 14))).astype(np.float32)
    codec = RegionCodec.fit_maps([maps[:3], maps[3:]], dims=16)
    assert codec.grid == 14 and len(codec.windows) == 36
    codes = codec.encode_maps(maps)
    assert codes.shape == (6, 36, 16) and codes.dtype == np.int8
    direct = codec.encode(np.concatenate([pool_windows(m, codec.windows) for m in maps])).reshape(6, 36, 16)
    assert np.abs(codes.astype(int) - direct.astype(int)).max() <= 1  # the same up to rounding
    again = RegionCodec.from_bytes(codec.to_bytes())
    assert again.grid == 14 and np.array_equal(again.windows, codec.windows)
    assert np.array_equal(again.encode_maps(maps), codes)
    with pytest.raises(ValueError, match="fitted on a 14x14 grid"):
        codec.encode_maps(maps[:, :, :7, :7])


def test_boxes_are_read_in_pixels_or_fractions_and_refused_clearly():
    assert parse_box(None) is None and parse_box(" ") is None
    assert parse_box("10,20,110,220") == (10, 20, 110, 220)
    assert box_in_pixels(parse_box("0.25,0.5,0.75,1"), 400, 200) == (100, 100, 300, 200)
    assert box_in_pixels(None, 400, 200) == (0, 0, 400, 200)
    assert box_in_pixels((350, 150, 900, 900), 400, 200) == (350, 150, 400, 200)  # clipped to the image
    for bad, message in (("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("5,5,1,1", "x0 < x1"),
                         ("-1,0,3,3", "none negative"), ("nan,0,1,1", "four numbers")):
        with pytest.raises(ValueError, match=message):
            parse_box(bad)
    with pytest.raises(ValueError, match="outside the 400x200 image"):
        box_in_pixels((500, 10, 600, 50), 400, 200)


def test_a_part_is_probed_in_its_image_and_pasted_at_each_scale():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    image.paste((255, 0, 0), (100, 50, 160, 110))  # a red part
    probes = probe_images(image, (100.0, 50.0, 160.0, 110.0), canvas=128)
    assert len(probes) == 1 + len(PROBE_SCALES) and probes[0] == (image, (100.0, 50.0, 160.0, 110.0))
    for (square, (x0, y0, x1, y1)), scale in zip(probes[1:], PROBE_SCALES):
        assert square.size == (128, 128)
        assert max(x1 - x0, y1 - y0) == int(128 * scale)
        assert square.getpixel((int((x0 + x1) / 2), int((y0 + y1) / 2))) == (255, 0, 0)
        assert square.getpixel((1, 1)) != (255, 0, 0)  # the neutral canvas around it
