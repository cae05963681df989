"""BYOL's two-view dataset, a resumable per-rank sampler, and batching of the views.

Sources (``storage.sources``, shared with ``byol-embed``): a folder of images (searched recursively, ImageFolder
trees included, labels ignored), a text file listing image paths, WebDataset-style ``.tar`` shards (indexed
once, read by offset, so they are map-style and resumable), or a Parquet path column. Unreadable images are
skipped and counted, never a crash.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from hub.preprocess import to_rgb
from storage.sources import IMAGE_EXTENSIONS, DataError, ImageSource, open_source  # one home for listing inputs
from training.augment import BACKENDS, AugmentConfig, ViewDraw, decode_rgb, draw_view, sample_rng, two_views

logger = logging.getLogger(__name__)

class TwoViewDataset(Dataset):
    """Item ``(epoch, index)`` -> ``(view1, view2, skipped)``: uint8 ``(H, W, 3)`` views.

    An unreadable image is skipped and replaced by the next readable one (deterministically), so
    every batch keeps its size: BatchNorm statistics and the ranks' collectives stay in step.
    ``skipped`` counts the unreadable files passed over.
    """

    max_substitutes = 16

    def __init__(self, source: ImageSource, augment: AugmentConfig, seed: int, backend: str = "pil",
                 cache_mb: int = 0) -> None:
        if len(source) == 0:
            raise DataError("the dataset is empty: no images with extensions " + ", ".join(IMAGE_EXTENSIONS))
        if backend not in (*BACKENDS, "device"):
            raise DataError(f"unknown augmentation backend {backend!r}; accepted: {', '.join(BACKENDS)}, device")
        if cache_mb < 0:
            raise DataError(f"decode_cache_mb must be >= 0 (0: off), got {cache_mb}")
        self.source, self.augment, self.seed, self.backend = source, augment, seed, backend
        # decoded images kept per process (each loader worker its own), at most cache_mb MiB, shrunk to what the
        # crops need: decoded once, augmented from uint8 every epoch
        self.cache_bytes = cache_mb * 2**20 if backend != "device" else 0
        self.cache_side = 2 * augment.size
        self._cache: dict[int, Image.Image | np.ndarray] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.source)

    def _shrunk(self, img: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
        """The image with its shorter side at most ``2 x size`` (a crop of 8 % of it still has ~0.57 x size pixels
        a side); the crop's area fraction and aspect ratio are what the recipe draws, so the views keep their
        distribution."""
        height, width = img.shape[:2] if isinstance(img, np.ndarray) else img.size[::-1]
        scale = self.cache_side / min(width, height)
        if scale >= 1:
            return img
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if isinstance(img, np.ndarray):
            import cv2

            return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        return img.resize(size, Image.Resampling.BOX)

    def load(self, index: int) -> Image.Image | np.ndarray | tuple[bytes, tuple[int, int]] | None:
        """The decoded image (``opencv``: an array; ``pil``: a PIL image), or for ``device`` the bytes and the
        displayed size read from the header (decoding happens in the step); None when unreadable."""
        if index in self._cache:
            return self._cache[index]
        try:
            loaded = self._decode(index)
        except Exception as err:  # a corrupt file costs one sample, not the run
            logger.debug("skipping unreadable image %d: %s", index, err)
            return None
        if self.cache_bytes:
            loaded = self._shrunk(loaded)
            size = loaded.nbytes if isinstance(loaded, np.ndarray) else loaded.width * loaded.height * 3
            if self._cached + size <= self.cache_bytes:
                self._cache[index] = loaded
                self._cached += size
        return loaded

    def _decode(self, index: int) -> Image.Image | np.ndarray | tuple[bytes, tuple[int, int]] | None:
        """Raises on an unreadable file (``device``: None where the header cannot be read)."""
        data = self.source.read(index)
        if self.backend == "device":
            from training.device_augment import header_size

            size = header_size(data)
            return None if size is None else (data, size)
        if self.backend == "opencv":  # OpenCV's decoder straight to an array (no PIL copy)
            return decode_rgb(data)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, int]:
        """``(view1, view2, skipped)``; for the ``device`` backend ``(bytes, (draw1, draw2), skipped)``."""
        epoch, index = key
        for skipped in range(self.max_substitutes):
            loaded = self.load((index + skipped) % len(self))
            if loaded is None:
                continue
            rng = sample_rng(self.seed, epoch, index)
            if self.backend == "device":
                data, (width, height) = loaded
                cfg = self.augment
                return data, (draw_view(rng, width, height, cfg, cfg.view1),
                              draw_view(rng, width, height, cfg, cfg.view2)), skipped
            v1, v2 = two_views(loaded, self.augment, rng, self.backend)
            return v1, v2, skipped
        raise DataError(f"{self.max_substitutes} consecutive unreadable images from index {index}; is the data corrupt?")


@dataclass
class ResumableSampler(Sampler):
    """Per-rank seeded shuffling over many epochs, startable mid-epoch: yields ``(epoch, index)``.

    Epoch ``e`` draws one permutation from ``seed + e``; rank ``r`` of ``w`` takes every ``w``-th element
    and keeps the first ``per_epoch`` of them (whole optimizer steps, the same count on every rank).
    Iteration runs from ``start_epoch`` (skipping ``start`` samples there) to ``end_epoch``, so one
    DataLoader with persistent workers serves the whole run.
    """

    size: int
    per_epoch: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    start_epoch: int = 0
    start: int = 0
    end_epoch: int = 1

    def __len__(self) -> int:
        return (self.end_epoch - self.start_epoch) * self.per_epoch - self.start

    def epoch_indices(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=gen)
        return order[self.rank::self.world_size][: self.per_epoch].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.start_epoch, self.end_epoch):
            indices = self.epoch_indices(epoch)
            for index in indices[self.start if epoch == self.start_epoch else 0:]:
                yield epoch, index


class SubsetSource(ImageSource):
    """The items ``indices`` of ``source``, renumbered from 0 (the training images once a sample is held out)."""

    def __init__(self, source: ImageSource, indices: list[int]) -> None:
        self.source, self.indices = source, indices
        self.kind = source.kind

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> bytes:
        return self.source.read(self.indices[index])

    def item_id(self, index: int) -> str:
        return self.source.item_id(self.indices[index])

    def item_path(self, index: int) -> str:
        return self.source.item_path(self.indices[index])

    def fingerprint(self) -> str:
        return self.source.fingerprint()


def hold_out(size: int, sample: int, seed: int, share: float = 0.1) -> tuple[list[int], list[int]]:
    """``(train, held)`` indices: ``min(sample, share x size)`` items drawn with ``seed`` are held out (the same ones
    on every rank and every resume), the rest train. Fewer than 16 held-out items: none (too few to measure)."""
    count = min(sample, int(size * share))
    if count < 16:
        return list(range(size)), []
    held = sorted(np.random.default_rng([seed, 0x1ab]).choice(size, count, replace=False).tolist())
    chosen = set(held)
    return [i for i in range(size) if i not in chosen], held


def single_threaded_worker(worker_id: int = 0) -> None:
    """Loader workers augment on one core each: pin OpenCV's threads (torch's are set per worker already)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def collate_raw(items: list[tuple[bytes, tuple[ViewDraw, ViewDraw], int]]) -> tuple[list, list, int]:
    """The ``device`` backend's batch: the encoded images, both views' draws, and the skipped-file count."""
    return [item[0] for item in items], [item[1] for item in items], sum(item[2] for item in items)


def device_views(batch: tuple, device: torch.device, augment: AugmentConfig, mean: tuple[float, ...],
                 std: tuple[float, ...], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode on ``device`` and build both views there; an image that fails to decode is replaced by another of
    the batch (counted as skipped), so the batch keeps its size."""
    from training.device_augment import apply_views, decode_batch

    blobs, draws, skipped = batch
    images = decode_batch(blobs, device)
    good = [i for i, img in enumerate(images) if img is not None]
    if not good:
        raise DataError("no image of this batch could be decoded on the device")
    fill = [i if img is not None else good[i % len(good)] for i, img in enumerate(images)]
    skipped += len(images) - len(good)
    imgs = [images[i] for i in fill]
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    views = []
    for v in range(2):
        x = apply_views(imgs, [draws[i][v] for i in fill], augment).sub_(m).div_(s)
        views.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return views[0], views[1], skipped


def collate_views(items: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the views as uint8 ``(B, 3, H, W)`` twice, and sum the skipped-file counts."""
    v1 = torch.from_numpy(np.stack([item[0] for item in items])).permute(0, 3, 1, 2)
    v2 = torch.from_numpy(np.stack([item[1] for item in items])).permute(0, 3, 1, 2)
    return v1, v2, sum(item[2] for item in items)


def to_device_views(view: torch.Tensor, device: torch.device, mean: tuple[float, ...], std: tuple[float, ...],
                    channels_last: bool) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> normalized float32 on ``device`` (batched, so cheap)."""
    x = view.to(device, non_blocking=True).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = x.sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def steps_per_epoch(dataset_size: int, world_size: int, batch_per_device: int, accum: int) -> int:
    per_rank = dataset_size // world_size
    steps = per_rank // (batch_per_device * accum)
    if steps == 0:
        raise DataError(
            f"{dataset_size} images cannot fill one optimizer step of {world_size} x {batch_per_device} x {accum} "
            f"= {world_size * batch_per_device * accum} images; lower --batch-size-per-device or --grad-accum-steps"
        )
    return steps


__all__ = ["DataError", "open_source", "TwoViewDataset", "ResumableSampler", "collate_views", "to_device_views",
           "steps_per_epoch"]
