"""``--engine ray``: the same shard plan on a Ray cluster, through an actor pool of backend workers.

Each actor loads the backend once, runs ``embed_shard`` (the local engine's code) on whole shards, reads its
shard's images and writes the shard itself (to object storage, or to a folder every node shares) through the
same writer, so shard names, ids, order and errors are the local engine's. The driver only plans, hands out shard
numbers and writes each done marker from the actor's small acknowledgement: no vector passes through it, and its
memory does not grow with the dataset. The listing reaches the actors once through Ray's object store. Actors are
restarted when they die and their shard is retried (``max_restarts``, ``max_task_retries``).

Scheduling (Ray issue #44687): an actor pool that reserves every logical CPU starves anything else that needs a
CPU slot, and the job hangs. Actors therefore ask for a fractional ``num_cpus`` so that pool x CPUs stays below
the cluster's total, and set their inference threads explicitly (Ray sets ``OMP_NUM_THREADS`` from
``num_cpus``, which would be 1 or 0 here). Where the cluster has GPUs, each actor takes one (``num_gpus=1``).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from curation.regions import RegionCodec
from hub.hardware import usable_cpus
from service.embed.errors import EmbedJobError
from service.embed.pipeline import embed_shard
from service.runtime.factory import build_streamed_backend, resolve_for_backend
from service.runtime.settings import RuntimeSettings
from storage.folder import Manifest, write_shard

logger = logging.getLogger(__name__)


def _init(address: str | None) -> bool:
    """Connect to (or start) a cluster; True when this call started or connected it (so the job disconnects)."""
    try:
        import ray
    except ImportError:
        raise EmbedJobError("--engine ray needs ray (pip install 'byol[embed]')") from None
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 num_cpus=max(2, usable_cpus()))
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


class ShardWorker:
    """A Ray actor: one backend, a small decode pool, whole shards in and their rows out."""

    def __init__(self, runtime: dict[str, Any], manifest: dict[str, Any], source: Any, store: Any,
                 decode_threads: int, batch_size: int, max_pixels: int) -> None:
        settings = RuntimeSettings(**runtime)
        self.manifest = Manifest(**manifest)
        maps = (self.manifest.regions["layer"],) if self.manifest.regions else ()
        self.resolved = resolve_for_backend(settings, maps)
        self.backend = build_streamed_backend(self.resolved, settings, maps)
        # the folder's region codec, written by the driver before any shard
        self.codec = RegionCodec.from_bytes(store.read_bytes(self.manifest.region_codec["file"])) if maps else None
        self.source, self.store = source, store  # the driver's listing; the output folder
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="byol-decode")
        self.batch_size, self.max_pixels = batch_size, max_pixels

    def embed(self, shard: dict[str, Any]) -> dict[str, Any]:
        """Embed and write one shard; only its acknowledgement (index, rows, errors) goes back to the driver."""
        timings: dict[str, float] = {}
        rows = embed_shard(self.source, self.manifest, self.resolved.config, self.backend, shard, self.pool,
                           batch_size=self.batch_size, max_pixels=self.max_pixels, codec=self.codec, timings=timings)
        return {**write_shard(self.store, self.manifest, rows, mark=False), "regions_s": timings.get("regions_s", 0.0)}


def run_ray(settings: Any, runtime: RuntimeSettings, manifest: Manifest, source: Any, store: Any, shards: list[dict[str, Any]],
            writer: Any, bar: Any, stop: Any) -> None:
    import ray

    connected_here = _init(settings.ray_address)
    try:
        _run_pool(settings, runtime, manifest, source, store, shards, writer, bar, stop)
    finally:
        if connected_here:  # a local cluster the job started ends with it (an existing one is only disconnected)
            ray.shutdown()


def _run_pool(settings: Any, runtime: RuntimeSettings, manifest: Manifest, source: Any, store: Any, shards: list[dict[str, Any]],
              writer: Any, bar: Any, stop: Any) -> None:
    import ray
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    actors_wanted = settings.workers or (gpus if gpus else max(1, int(cpus) // 2))
    if gpus:
        actors_wanted = min(actors_wanted, gpus)
    # fractional CPUs: pool x CPUs stays below the cluster's total (leaves room for anything else Ray schedules)
    cpus_per_actor = max(0.1, min(1.0, (cpus - 0.5) / actors_wanted))
    threads = runtime.threads or max(1, math.floor(cpus / actors_wanted))
    options = {"num_cpus": cpus_per_actor, "num_gpus": 1 if gpus else 0, "max_restarts": 2, "max_task_retries": 2}
    runtime_dict = runtime.portable()  # the actors load the model; their store and source carry their I/O
    runtime_dict.update(threads=threads, device="cuda" if gpus and runtime.backend == "torch" else runtime.device)
    remote = ray.remote(ShardWorker).options(**options)
    source_ref = ray.put(source)  # one copy in the object store, fetched once per node
    actors = [remote.remote(runtime_dict, manifest.to_dict(), source_ref, store, max(2, threads), settings.batch_size,
                            runtime.max_pixels) for _ in range(actors_wanted)]
    logger.info("ray: %d actors (%.2f CPU%s each, %d inference threads) on a cluster of %g CPUs, %d GPUs",
                len(actors), cpus_per_actor, ", 1 GPU" if gpus else "", threads, cpus, gpus)
    pool = ActorPool(actors)
    pending = list(shards)
    try:
        while pending and not stop.stopped:
            # submit at most one shard per actor ahead, so Ctrl-C stops after the shards in flight
            while pending and pool.has_free():
                pool.submit(lambda actor, shard: actor.embed.remote(shard), pending.pop(0))
            ack = pool.get_next_unordered()
            writer.commit(ack)
            bar.update(ack["rows"])
        while pool.has_next():  # the shards already in flight when stopping
            ack = pool.get_next_unordered()
            writer.commit(ack)
            bar.update(ack["rows"])
    finally:
        for actor in actors:
            ray.kill(actor)
