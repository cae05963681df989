"""``--engine local``: the shards still to do, on this machine.

A decode pool of ``--workers`` threads (default: the usable CPUs) reads and decodes one read-ahead over every
shard to do, so decoding runs on into the next shard while this one finishes; batches go through the backend in
this thread, and finished shards to the job's writer thread.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hub.hardware import usable_cpus
from hub.hub_io import ResolvedModel
from service.embed.pipeline import embed_shard, read_ahead
from service.runtime.backend import Backend
from storage.folder import Manifest
from storage.sources import ImageSource


def run_local(settings: Any, source: ImageSource, manifest: Manifest, resolved: ResolvedModel, backend: Backend,
              shards: list[dict[str, Any]], writer: Any, bar: Any, stop: Any, codec: Any = None) -> None:
    """Embed ``shards`` (``settings``: the job's ``EmbedSettings``; ``writer``, ``bar``, ``stop``: its shard
    writer, progress bar and stop flag; ``codec``: the folder's region codec where the run has regions)."""
    workers = settings.workers or max(2, usable_cpus())
    max_pixels = settings.runtime.max_pixels
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="byol-decode") as pool:
        indices = itertools.chain.from_iterable(range(s["start"], s["stop"]) for s in shards)
        decoded = read_ahead(source, resolved.config, pool, indices, batch_size=settings.batch_size,
                             max_pixels=max_pixels)
        for shard in shards:
            if stop.stopped:
                break
            timings: dict[str, float] = {}
            rows = embed_shard(source, manifest, resolved.config, backend, shard, pool, batch_size=settings.batch_size,
                               max_pixels=max_pixels, on_images=bar.update, decoded=decoded, codec=codec,
                               timings=timings)
            writer.regions_s += timings.get("regions_s", 0.0)
            writer.put(rows)
