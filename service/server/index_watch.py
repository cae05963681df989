"""The served index follows its folder: ``byol-serve --index EMB`` checks for a new generation every
``--index-poll-s`` seconds and switches to it without a pause.

A check is one small request: the version of ``EMB/index/index.json`` (its modification time on disk, its ETag on
object storage), which ``byol-embed index`` (or ``byol-embed run``, whose index follows each generation) replaces
last. A new version is loaded beside the served index, in a worker thread, with the same checks as at start (the
model, layer and pooling must still match); then one assignment on the event loop makes it the served one. A
request takes the index once when it starts, so it is answered from one generation, never a mix; the old index
is freed when the last request holding it ends, so at most two are in memory, and only during a switch. The
model is never loaded again. A check or load that fails leaves the served index as it is, is logged and counted
(``byol_index_poll_errors_total``); a version that failed to load is tried again only after ``RETRY_S`` (or at
once when the folder changes again), so a broken index is not copied and read at every check.

Each process does this on its own: every Ray Serve replica and every Kubernetes pod watches the folder itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.server.state import ServiceState
from service.server.thumbs import Thumbnails
from storage.store import Store

logger = logging.getLogger(__name__)
META = "index/index.json"
REGION_META = "regions/index/index.json"  # the region index follows its folder too (replaced after the image index)
RETRY_S = 60.0  # a version that failed to load is tried again after this long (a new version: at once)


class IndexWatcher:
    def __init__(self, state: ServiceState, load: Any) -> None:
        """``load()``: open and check the index (blocking), as at start."""
        settings = state.settings
        self.state, self.load = state, load
        self.store = Store(settings.index, settings.storage_options)
        self.interval = settings.index_poll_s
        self.version: str | None = None
        self.checked_at: float | None = None
        self.switched_at: float | None = None
        self.last_error: str | None = None
        self.failed: tuple[str, float] | None = None  # the version that failed to load, and when
        self.task: asyncio.Task | None = None

    def describe(self) -> dict[str, Any]:
        return {"poll_s": self.interval, "checked_at": self.checked_at, "switched_at": self.switched_at,
                "last_error": self.last_error}

    async def start(self) -> None:
        """Serve the index as it is now, then watch it."""
        self.version = await asyncio.to_thread(self._version)
        self._serve(await asyncio.to_thread(self.load))
        if self.interval > 0:
            self.task = asyncio.create_task(self._watch(), name="byol-index-watch")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def _version(self) -> str | None:
        """The image index's version, and the region index's where there is one (None: being replaced)."""
        image = self.store.version(META)
        regions = self.store.version(REGION_META)
        return None if image is None else f"{image} {regions or ''}"

    def _serve(self, index: Any) -> None:
        state = self.state
        # one step on the event loop: the next request takes the new index, those in flight keep theirs
        state.search_index, state.thumbnails = index, Thumbnails(index, max_pixels=state.settings.max_pixels)
        state.metrics.index_generation.set(index.generation)

    async def check(self) -> bool:
        """One check; True when it switched to a new generation."""
        noticed = time.perf_counter()
        version = await asyncio.to_thread(self._version)
        self.checked_at = time.time()
        if version is None or version == self.version:  # None: being replaced on object storage (last file first)
            return False
        if self.failed is not None and self.failed[0] == version and time.monotonic() - self.failed[1] < RETRY_S:
            return False
        old = self.state.search_index
        try:
            index = await asyncio.to_thread(self.load)
        except Exception:
            self.failed = (version, time.monotonic())
            raise
        self.failed = None
        self.version = version
        self._serve(index)
        took = time.perf_counter() - noticed
        self.switched_at = time.time()
        self.state.metrics.index_switches.inc()
        self.state.metrics.index_switch_seconds.set(took)
        logger.info("index: switched from generation %s to %s (%d vectors) in %.2f s", getattr(old, "generation", "?"),
                    index.generation, len(index.ids), took)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
                if self.failed is None:  # still waiting to retry a failed version: its error stands
                    self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the served index goes on; the next check tries again
                self.state.metrics.index_poll_errors.inc()
                message = f"{type(err).__name__}: {err}"
                if message != self.last_error:
                    logger.warning("index: cannot load the new generation of %s (still serving generation %s): %s",
                                   self.store, getattr(self.state.search_index, "generation", "?"), message)
                self.last_error = message
