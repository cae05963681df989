"""Thumbnails of the images in the served index (``GET /thumb/{id}``), made by the server, capped and cached.

Only ids in the index are ever read, through the manifest's own input (a folder, a list, tar shards or Parquet,
as ``byol-embed run`` read them): a request names an id, never a path, so nothing outside the embedded set can
be reached (a ``../`` id is simply not in the index).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from functools import cached_property
from typing import Any

from hub.preprocess import decode_image
from service.embed.errors import EmbedJobError
from storage.folder import Manifest
from storage.sources import open_source
from storage.store import Store

THUMB_SIDE = 256
CACHE_ENTRIES = 2048  # ~10-20 KB each

logger = logging.getLogger(__name__)


class ThumbnailError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Thumbnails:
    def __init__(self, index: Any, *, max_pixels: int, side: int = THUMB_SIDE, entries: int = CACHE_ENTRIES) -> None:
        self.index, self.max_pixels, self.side, self.entries = index, max_pixels, side, entries
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._others: dict[str, tuple[Any, dict[str, int]]] = {}  # another folder's input (leaks): source, positions

    @property
    def _options(self) -> dict | None:
        return self.index.store.options if self.index.store is not None else None

    def _input_of(self, manifest: Any) -> tuple[Any, dict[str, int]]:
        """A folder's input as its ``byol-embed run`` read it, and each id's position in it."""
        source = open_source(manifest.input, **manifest.source_options, storage_options=self._options)
        return source, source.positions()

    @cached_property
    def _source(self):
        return self._input_of(self.index.manifest)

    def _cached(self, key: str) -> bytes | None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def get(self, item_id: str) -> bytes:
        """A JPEG of at most ``side`` px a side; raises :class:`ThumbnailError` (404 for an id not in the index)."""
        if (data := self._cached(item_id)) is not None:
            return data
        try:
            self.index.row_of(item_id)
        except EmbedJobError:
            raise ThumbnailError(404, "unknown_id", f"no image with id {item_id!r} in the index") from None
        try:
            source, positions = self._source
        except OSError as err:  # the reason (a path, a bucket, a storage error) goes to the log, not to the client
            logger.warning("thumbnails: the index's input cannot be read: %s", err)
            raise ThumbnailError(404, "image_unavailable", "the index's input cannot be read; see the server log") from None
        position = positions.get(item_id)
        if position is None:
            raise ThumbnailError(404, "image_unavailable", f"{item_id!r} is no longer in the index's input")
        return self._render(item_id, source, position)

    def _render(self, key: str, source: Any, position: int) -> bytes:
        try:
            img = decode_image(source.read(position), max_pixels=self.max_pixels, draft_min_side=self.side)
        except Exception as err:  # unreadable now, or not an image any more: the reason to the log only
            logger.warning("thumbnail of %r: %s", key, err)
            raise ThumbnailError(404, "image_unavailable", f"{key!r} cannot be read now; see the server log") from None
        img = img.convert("RGB")
        img.thumbnail((self.side, self.side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return data

    def leak_partner(self, item_id: str, leaks: dict[str, list]) -> bytes:
        """The thumbnail of the image in the other folder (A) that ``item_id`` (of this index's folder) leaks from:
        read through A's own manifest and input, by the id ``byol-embed leaks`` recorded (never a path from the
        request)."""
        key = f"\0leak\0{item_id}"
        if (data := self._cached(key)) is not None:
            return data
        try:
            partner = leaks["id_a"][leaks["id"].index(item_id)]
        except ValueError:
            raise ThumbnailError(404, "unknown_id", f"{item_id!r} has no leak in curation/leaks.parquet") from None
        try:
            source, positions = self._other_source(leaks["a"])
        except Exception as err:
            logger.warning("thumbnails: the other folder's input cannot be read: %s", err)
            raise ThumbnailError(404, "image_unavailable", "the other folder's input cannot be read; see the server "
                                 "log") from None
        position = positions.get(partner)
        if position is None:
            raise ThumbnailError(404, "image_unavailable", f"{partner!r} is no longer in the other folder's input")
        return self._render(key, source, position)

    def _other_source(self, folder: str):
        with self._lock:
            cached = self._others.get(folder)
        if cached is None:
            cached = self._input_of(Manifest.load(Store(folder, self._options)))
            with self._lock:
                self._others[folder] = cached
        return cached
