"""Regions of an image, for search inside images: windows of a layer's spatial grid pooled into one vector each,
the box each covers in the original image, the probes of a query part, and the reduction (PCA, then int8 per
dimension) that a folder stores so that queries are reduced the same way.

The grid. Each region is a square window of the layer's cells whose side is 2/7 of the grid (4 cells of
``feature4``'s 14 x 14 at 224², 2 of a 7 x 7 grid, 8 of a 28 x 28), placed every half side, the last moved in to end
on the edge: 6 x 6 = 36 windows an image on grids of 7, 14 and 28 (25 on 16, 49 on 8). Why that size: the parts worth finding cover 5-20 % of
an image (a side of 0.22-0.45 of it), and with windows of 0.29 every 0.15 some window lies mostly on such a part
wherever it is.
Measured on the planted set (test model at 224², ``feature4``, exact vectors), 36 windows of 4 cells find the
parts as well as 85 windows of 3 and 5 cells (recall@10 0.88 against 0.88, object queries) and better than 49 of 3
(0.70); 169 of 2 cells were worse (0.30): one cell's receptive field already spans most of the image. 36 windows an
image keep a million images' index at 36 M codes (:mod:`service.embed.region_index`).

Where a cell is. The model sees the image resized (shorter side to ``resize_size``) and center-cropped to
``crop_size``; cell ``(r, c)`` of an ``n x n`` grid covers ``1/n`` of that crop, which :func:`crop_box` maps back
to the original image's pixels.

A query's probes. A CNN's features are not scale-invariant: a part photographed alone fills the frame, where the
same part inside a photo spans a few cells. So a part is looked for as itself (its cells pooled over its box in its
own image) and pasted at :data:`PROBE_SCALES` of a neutral canvas, where it spans as many cells as the stored
parts do (:func:`probe_images`); an image's score is its best window against any probe. On the planted set this
lifted recall@10 of object queries from 0.25 to 0.88, and of boxes in a photo from 0.32 to 0.70.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from storage.vectors import l2_normalize

WINDOW_SHARE = 2 / 7  # a window's side, as a share of the grid's
PROBE_SCALES = (0.5, 0.35)  # a query part pasted at these sides of a canvas (besides the part in its own image)
CANVAS_FILL = (124, 116, 104)  # the canvas around a pasted part: ImageNet's mean colour
REGION_DIMS = 64  # a region vector's dimensions after the PCA
MAX_WINDOWS = 64  # a region's label in an index is image label x MAX_WINDOWS + window


def window_spec(grid: int) -> tuple[tuple[int, int], ...]:
    """(side, stride) in cells of the windows of a ``grid x grid`` map (the module's docstring says why)."""
    side = max(1, round(grid * WINDOW_SHARE))
    return ((side, max(1, (side + 1) // 2)),)


def windows(grid: int, spec: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
    """The windows of an ``grid x grid`` map: ``(n, 3)`` int32 rows of (top, left, side) in cells, covering the
    grid's last row and column too (a last window is moved in to end on the edge); ``spec``: (side, stride)
    pairs, by default :func:`window_spec`'s."""
    spec = spec or window_spec(grid)
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


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """``x0,y0,x1,y1`` in pixels, or in fractions of the image's width and height when all four are at most 1;
    None for no box. A clear ``ValueError`` for anything else."""
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"box {text!r}: expected four numbers x0,y0,x1,y1 (pixels, or fractions of the image's "
                         "width and height between 0 and 1)")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0 or min(values) < 0:
        raise ValueError(f"box {text!r}: expected x0 < x1 and y0 < y1, none negative")
    return values


def box_in_pixels(box: tuple[float, float, float, float] | None, width: int, height: int
                  ) -> tuple[float, float, float, float]:
    """A parsed box in the image's pixels (fractions scaled; none: the whole image), clipped to the image."""
    if box is None:
        return 0.0, 0.0, float(width), float(height)
    if max(box) <= 1.0:
        box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"box {tuple(round(v, 1) for v in box)} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def probe_images(image: Image.Image, box: tuple[float, float, float, float], canvas: int
                 ) -> list[tuple[Image.Image, tuple[float, float, float, float]]]:
    """The probes of a query part (``box`` in ``image``'s pixels): the image itself with the box, then the part
    cropped and pasted at the centre of a ``canvas``-pixel square at each of :data:`PROBE_SCALES`, with its box
    there."""
    part = image.crop(tuple(int(round(v)) for v in box)).convert("RGB")
    probes = [(image, box)]
    for scale in PROBE_SCALES:
        side = max(8, int(canvas * scale))
        pasted = part.copy()
        ratio = side / max(pasted.size)
        pasted = pasted.resize((max(1, round(pasted.width * ratio)), max(1, round(pasted.height * ratio))),
                               Image.Resampling.BILINEAR)
        square = Image.new("RGB", (canvas, canvas), CANVAS_FILL)
        x, y = (canvas - pasted.width) // 2, (canvas - pasted.height) // 2
        square.paste(pasted, (x, y))
        probes.append((square, (float(x), float(y), float(x + pasted.width), float(y + pasted.height))))
    return probes


def query_parts(image: Image.Image, box: tuple[float, float, float, float] | None, preprocessing: Any,
                run_maps: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The pooled vectors ``(probes, C)`` of a query part: ``box`` (parsed, pixels or fractions; None: the whole
    image) in ``image``, looked for as itself and pasted at :data:`PROBE_SCALES` (:func:`probe_images`).
    ``run_maps``: preprocessed pixels ``(n, 3, H, W)`` -> the region layer's maps ``(n, C, h, w)``. A box outside
    the part of the image the model sees is looked for through its pasted probes only."""
    from hub.preprocess import preprocess_one

    image = image.convert("RGB")
    box = box_in_pixels(box, image.width, image.height)
    probes = probe_images(image, box, preprocessing.crop_size)
    maps = run_maps(np.stack([preprocess_one(img, preprocessing) for img, _ in probes]))
    parts = []
    for fmap, (img, at) in zip(maps, probes):
        seen = crop_box(img.width, img.height, preprocessing.resize_size, preprocessing.crop_size)
        try:
            parts.append(box_vector(np.asarray(fmap, np.float32), at, seen))
        except ValueError:  # outside the centre crop of the query image: its pasted probes still look for it
            continue
    return np.stack(parts)


@dataclass
class RegionCodec:
    """Region vectors reduced for a large index: centred, projected on ``dims`` principal components, L2-normalized
    (cosine), then int8 per dimension with one scale each. Fitted on a sample of a folder's regions and stored
    with it (:meth:`to_arrays`), so that a query is reduced exactly as the regions were."""

    mean: np.ndarray  # (C,)
    basis: np.ndarray  # (C, dims)
    scale: np.ndarray  # (dims,): a code's value times its scale is the reduced vector's
    windows: np.ndarray | None = None  # (n, 3) the windows of the grid each image's codes are in that order
    grid: int = 0

    @classmethod
    def fit_maps(cls, batches: Iterable[np.ndarray], dims: int = REGION_DIMS, seed: int = 0) -> RegionCodec:
        """The codec of a layer's maps (batches of ``(n, C, H, W)``: a sample of a folder's images): its windows,
        and the PCA of their pooled vectors (each batch pooled as it comes: the maps are never all held)."""
        pooled: list[np.ndarray] = []
        grid, wins = 0, None
        for maps in batches:
            if wins is None:
                grid = int(maps.shape[-1])
                wins = windows(grid)
            pooled += [pool_windows(m, wins) for m in maps]
        if wins is None:
            raise ValueError("no maps to fit a region codec on")
        sample = np.concatenate(pooled)
        codec = cls.fit(sample, dims=min(dims, sample.shape[1], max(1, len(sample) - 1)), seed=seed)
        codec.windows, codec.grid = wins, grid
        return codec

    @classmethod
    def fit(cls, sample: np.ndarray, dims: int = REGION_DIMS, seed: int = 0, rows: int = 100_000) -> RegionCodec:
        rng = np.random.default_rng(seed)
        if len(sample) > rows:
            sample = sample[np.sort(rng.choice(len(sample), rows, replace=False))]
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        basis = vt[:dims].T.astype(np.float32)
        reduced = l2_normalize((sample - mean) @ basis)
        scale = np.maximum(np.abs(reduced).max(axis=0), 1e-6) / 127.0
        return cls(mean.astype(np.float32), basis, scale.astype(np.float32))

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, C)`` -> ``(n, dims)`` float32, unit length (what the codes approximate)."""
        return l2_normalize((np.asarray(vectors, np.float32) - self.mean) @ self.basis)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self.reduce(vectors) / self.scale), -127, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.scale

    def encode_maps(self, maps: np.ndarray) -> np.ndarray:
        """``(n, C, H, W)`` maps -> ``(n, windows, dims)`` int8 codes. Each cell is projected first, then the
        windows are pooled in the reduced space (the same as pooling then projecting: both are linear), so the
        cost is one ``(H*W, C) @ (C, dims)`` product an image."""
        n, c, h, w = maps.shape
        if h != self.grid or w != self.grid:
            raise ValueError(f"the codec was fitted on a {self.grid}x{self.grid} grid; these maps are {h}x{w}")
        cells = np.moveaxis(np.asarray(maps, np.float32).reshape(n, c, h * w), 1, 2) @ self.basis  # (n, hw, dims)
        offset = self.mean @ self.basis
        out = np.empty((n, len(self.windows), self.dims), np.int8)
        for i in range(n):
            pooled = pool_windows(np.moveaxis(cells[i].reshape(h, w, -1), -1, 0), self.windows) - offset
            out[i] = np.clip(np.rint(l2_normalize(pooled) / self.scale), -127, 127).astype(np.int8)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"mean": self.mean, "basis": self.basis, "scale": self.scale}
        if self.windows is not None:
            arrays.update(windows=self.windows, grid=np.array(self.grid, np.int32))
        return arrays

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **self.to_arrays())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RegionCodec:
        import io

        with np.load(io.BytesIO(data)) as arrays:
            return cls.from_arrays(dict(arrays))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RegionCodec:
        missing = sorted({"mean", "basis", "scale"} - set(arrays))
        if missing:
            raise ValueError(f"a region codec needs mean, basis and scale; missing {', '.join(missing)}")
        wins = np.asarray(arrays["windows"], np.int32) if "windows" in arrays else None
        return cls(np.asarray(arrays["mean"], np.float32), np.asarray(arrays["basis"], np.float32),
                   np.asarray(arrays["scale"], np.float32), wins, int(arrays.get("grid", 0)))


def folder_codec(store: Any, manifest: Any) -> RegionCodec:
    """The region codec of an embedding folder (``storage.store.Store`` and its ``Manifest``), with a clear error
    where the folder has no regions."""
    from storage.errors import FolderError

    if not manifest.regions or not manifest.region_codec:
        raise FolderError(f"{store} has no regions: embed it with `byol-embed run --regions feature4` (an append "
                          "keeps the settings, so a folder without regions is embedded again with --overwrite)")
    try:
        return RegionCodec.from_bytes(store.read_bytes(manifest.region_codec["file"]))
    except FileNotFoundError:
        raise FolderError(f"{store} lost its region codec {manifest.region_codec['file']}") from None


def decoded(codec: RegionCodec, codes: np.ndarray) -> np.ndarray:
    """``(n, windows x dims)`` int8 codes -> ``(n x windows, dims)`` unit float32 region vectors."""
    vectors = codec.decode(np.asarray(codes).reshape(-1, codec.dims))
    return l2_normalize(vectors)
