"""Regions of an image, for search inside images (groundwork of issue #37): windows of a layer's spatial grid
pooled into one vector each, the box each covers in the original image, a query pooled over any box, and the
reduction (PCA, then int8 per dimension) that a folder stores so that queries are reduced the same way.

The grid. At 224² ``feature4`` is 14x14 cells of 16 pixels. Objects worth finding cover 5-20 % of an image, a side
of 0.22-0.45 of it, 3-6 cells: so windows of 3 and 5 cells, every 2 cells, the last moved in to end on the edge
(7 x 7 + 6 x 6 = 85 windows an image; at 1 M images a 2 GB index leaves ~20 bytes a region: product codes).
Smaller windows multiply the index (a 1 x 1 grid is 196 vectors an image) for parts that one cell's receptive
field already blurs; larger ones are the whole image, which the image vector already is. A window larger than the
grid (a small input) becomes the whole grid.

Where a cell is. The model sees the image resized (shorter side to ``resize_size``) and center-cropped to
``crop_size``; cell ``(r, c)`` of an ``n x n`` grid covers ``1/n`` of that crop, which :func:`crop_box` maps back
to the original image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (window side in cells, stride in cells) on the layer's grid
WINDOWS: tuple[tuple[int, int], ...] = ((3, 2), (5, 2))


def windows(grid: int, spec: tuple[tuple[int, int], ...] = WINDOWS) -> np.ndarray:
    """The windows of an ``grid x grid`` map: ``(n, 3)`` int32 rows of (top, left, side) in cells, covering the
    grid's last row and column too (a last window is moved in to end on the edge)."""
    out: list[tuple[int, int, int]] = []
    for side, stride in spec:
        if side >= grid:
            out.append((0, 0, grid))
            continue
        starts = list(range(0, grid - side + 1, stride))
        if starts[-1] != grid - side:
            starts.append(grid - side)
        out += [(top, left, side) for top in starts for left in starts]
    return np.unique(np.array(out, np.int32), axis=0)


def pool_windows(fmap: np.ndarray, wins: np.ndarray) -> np.ndarray:
    """The mean of each window's cells of a ``(C, H, W)`` map: ``(len(wins), C)`` float32, through a summed-area
    table (one pass over the map, then four lookups a window)."""
    c, h, w = fmap.shape
    table = np.zeros((h + 1, w + 1, c), np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(np.moveaxis(fmap, 0, -1), axis=0), axis=1)
    top, left, side = wins[:, 0], wins[:, 1], wins[:, 2]
    bottom, right = top + side, left + side
    sums = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    return (sums / (side * side)[:, None]).astype(np.float32)


def crop_box(width: int, height: int, resize_size: int, crop_size: int) -> tuple[float, float, float]:
    """The part of a ``width x height`` image that the model sees: ``(left, top, side)`` in its pixels (the shorter
    side resized to ``resize_size``, then a centered ``crop_size`` square)."""
    scale = resize_size / min(width, height)
    side = crop_size / scale
    return (width - side) / 2, (height - side) / 2, side


def window_boxes(wins: np.ndarray, grid: int, seen: tuple[float, float, float]) -> np.ndarray:
    """Each window's box in the original image's pixels, ``(n, 4)`` float32 ``x0, y0, x1, y1``; ``seen`` is
    :func:`crop_box`'s answer for that image."""
    left, top, side = seen
    cell = side / grid
    x0 = left + wins[:, 1] * cell
    y0 = top + wins[:, 0] * cell
    return np.stack([x0, y0, x0 + wins[:, 2] * cell, y0 + wins[:, 2] * cell], axis=1).astype(np.float32)


def box_vector(fmap: np.ndarray, box: tuple[float, float, float, float], seen: tuple[float, float, float]
               ) -> np.ndarray:
    """A query's part: the cells of a ``(C, n, n)`` map under ``box`` (``x0, y0, x1, y1`` in the image's pixels),
    averaged with the share of each cell the box covers; ``(C,)`` float32. A box outside what the model saw
    raises ``ValueError``."""
    c, n, _ = fmap.shape
    left, top, side = seen
    cell = side / n
    x0, y0, x1, y1 = ((box[0] - left) / cell, (box[1] - top) / cell, (box[2] - left) / cell, (box[3] - top) / cell)
    edges = np.arange(n + 1, dtype=np.float64)
    cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, 1)
    cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, 1)
    weights = np.outer(cover_y, cover_x)
    if weights.sum() <= 0:
        raise ValueError(f"the box {tuple(round(v, 1) for v in box)} is outside the part of the image the model "
                         "sees (its center crop)")
    return (np.tensordot(fmap, weights, axes=([1, 2], [0, 1])) / weights.sum()).astype(np.float32)


@dataclass
class RegionCodec:
    """Region vectors reduced for a large index: centred, projected on ``dims`` principal components, L2-normalized
    (cosine), then int8 per dimension with one scale each. Fitted on a sample of a folder's regions and stored
    with it (:meth:`to_arrays`), so that a query is reduced exactly as the regions were."""

    mean: np.ndarray  # (C,)
    basis: np.ndarray  # (C, dims)
    scale: np.ndarray  # (dims,): a code's value times its scale is the reduced vector's

    @classmethod
    def fit(cls, sample: np.ndarray, dims: int = 64, seed: int = 0, rows: int = 100_000) -> RegionCodec:
        rng = np.random.default_rng(seed)
        if len(sample) > rows:
            sample = sample[np.sort(rng.choice(len(sample), rows, replace=False))]
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        basis = vt[:dims].T.astype(np.float32)
        reduced = _unit((sample - mean) @ basis)
        scale = np.maximum(np.abs(reduced).max(axis=0), 1e-6) / 127.0
        return cls(mean.astype(np.float32), basis, scale.astype(np.float32))

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, C)`` -> ``(n, dims)`` float32, unit length (what the codes approximate)."""
        return _unit((np.asarray(vectors, np.float32) - self.mean) @ self.basis)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self.reduce(vectors) / self.scale), -127, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.scale

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "basis": self.basis, "scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RegionCodec:
        missing = sorted({"mean", "basis", "scale"} - set(arrays))
        if missing:
            raise ValueError(f"a region codec needs mean, basis and scale; missing {', '.join(missing)}")
        return cls(np.asarray(arrays["mean"], np.float32), np.asarray(arrays["basis"], np.float32),
                   np.asarray(arrays["scale"], np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
