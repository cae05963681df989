"""Thumbnails of the images in the served index (``GET /thumb/{id}``), made by the server, capped and cached.

Only ids in the index are ever read: a request names an id, never a path, so nothing outside the embedded set can
be reached (a ``../`` id is simply not in the index). Each row's bytes are found by the locator ``byol-embed run``
recorded (the object, the tar member's offset and size, or the Parquet row: :func:`storage.sources.read_located`),
so a thumbnail is one read and no listing. An index built before locators existed reads its input as ``run`` did,
which lists it once (for a million objects, minutes): that listing is made once, and a failure (an input that
moved) is remembered for ``FAILURE_TTL_S``, so that requests meanwhile answer 404 at once; the reason goes to the
log. The server runs all of this on its own small pool with a deadline (:mod:`service.server.routes.pages`), never on
the pool ``/search`` uses.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from hub.preprocess import decode_image
from service.embed.errors import EmbedJobError
from storage.folder import Manifest, open_input
from storage.sources import read_located
from storage.store import Store

THUMB_SIDE = 256
CACHE_ENTRIES = 2048  # ~10-20 KB each
FAILURE_TTL_S = 60.0  # an input (or an image) that could not be read is not tried again for this long

logger = logging.getLogger(__name__)


class ThumbnailError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


UNAVAILABLE = "image_unavailable"


class Thumbnails:
    def __init__(self, index: Any, *, max_pixels: int, side: int = THUMB_SIDE, entries: int = CACHE_ENTRIES) -> None:
        self.index, self.max_pixels, self.side, self.entries = index, max_pixels, side, entries
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._inputs: dict[str, tuple[Any, dict[str, int]]] = {}  # a folder's input, listed (older indexes only)
        self._failed: dict[str, tuple[float, str]] = {}  # what could not be read: when, and the client's message

    @property
    def _options(self) -> dict | None:
        return self.index.store.options if self.index.store is not None else None

    def _cached(self, key: str) -> bytes | None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_TTL_S:
            raise ThumbnailError(404, UNAVAILABLE, failed[1])
        return None

    def _fail(self, key: str, message: str, reason: object) -> ThumbnailError:
        """Remember a failure for ``FAILURE_TTL_S`` (the reason to the log, the message to the client)."""
        logger.warning("thumbnail of %r: %s", key, reason)
        with self._lock:
            self._failed[key] = (time.monotonic(), message)
            if len(self._failed) > self.entries:
                self._failed.pop(next(iter(self._failed)))
        return ThumbnailError(404, UNAVAILABLE, message)

    def get(self, item_id: str) -> bytes:
        """A JPEG of at most ``side`` px a side; raises :class:`ThumbnailError` (404 for an id not in the index, or
        an image that cannot be read now)."""
        if (data := self._cached(item_id)) is not None:
            return data
        try:
            row = self.index.row_of(item_id)
        except EmbedJobError:
            raise ThumbnailError(404, "unknown_id", f"no image with id {item_id!r} in the index") from None
        locator = self.index.locator_of(row)
        if locator is not None:
            return self._render(item_id, lambda: read_located(locator, self._options))
        return self._render_listed(item_id, self.index.manifest, item_id, "the index's input")

    def leak_partner(self, item_id: str, partner: str, locator: str | None, other: str) -> bytes:
        """The thumbnail of ``partner``, the image of the other folder (``other``, leaks' A) that ``item_id`` leaks
        from: by the locator ``byol-embed leaks`` recorded, else through A's own manifest and input (never a path
        from the request)."""
        key = f"\0leak\0{item_id}"
        if (data := self._cached(key)) is not None:
            return data
        if locator is not None:
            return self._render(key, lambda: read_located(locator, self._options))
        try:
            manifest = Manifest.load(Store(other, self._options))
        except Exception as err:  # noqa: BLE001 - the reason goes to the log only
            raise self._fail(key, "the other folder cannot be read; see the server log", err) from None
        return self._render_listed(key, manifest, partner, "the other folder's input")

    def _render_listed(self, key: str, manifest: Manifest, item_id: str, what: str) -> bytes:
        """An older index without locators: through the folder's input, listed once."""
        listed = self._cached_failure(manifest.input)
        if listed is None:
            try:
                listed = self._listed(manifest)
            except Exception as err:  # noqa: BLE001 - a moved input: 404 now, and for a while, the reason logged
                raise self._fail(f"\0input\0{manifest.input}", f"{what} cannot be read; see the server log",
                                 err) from None
        source, positions = listed
        position = positions.get(item_id)
        if position is None:
            raise ThumbnailError(404, UNAVAILABLE, f"{item_id!r} is no longer in {what}")
        return self._render(key, lambda: source.read(position))

    def _cached_failure(self, input_: str) -> tuple[Any, dict[str, int]] | None:
        self._cached(f"\0input\0{input_}")  # raises while a failure to list it is remembered
        with self._lock:
            return self._inputs.get(input_)

    def _listed(self, manifest: Manifest) -> tuple[Any, dict[str, int]]:
        listed = open_input(self.index.store or Store(str(self.index.folder)), manifest)
        with self._lock:
            self._inputs[manifest.input] = listed
        return listed

    def _render(self, key: str, read) -> bytes:
        try:
            img = decode_image(read(), max_pixels=self.max_pixels, draft_min_side=self.side)
        except Exception as err:  # noqa: BLE001 - unreadable now, or not an image any more: the reason to the log
            raise self._fail(key, f"{key.split(chr(0))[-1]!r} cannot be read now; see the server log", err) from None
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
