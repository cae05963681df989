"""``byol-embed run``: embed a whole dataset into resumable Parquet shards, locally or on a Ray cluster.

The shard is the unit of work and of resume. This module plans the run, checks the folder (``storage.folder``)
under its lock, and hands the shards still to do to an engine: the local one (:mod:`service.embed.local_engine`)
decodes in a thread pool overlapped with inference and hands finished shards to a writer thread (writes stay off
the critical path); the Ray one (:mod:`service.embed.ray_engine`) runs the same ``embed_shard`` in an actor pool
whose actors write their shards themselves, and the driver commits each from a small acknowledgement (no vector
passes through it). Input and output may be local paths or fsspec URLs (``s3://...``): see :mod:`storage`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from curation.errors import CurationError
from curation.regions import REGION_DIMS, RegionCodec
from hub.hardware import usable_cpus
from hub.hub_io import ResolvedModel
from hub.layers import FEATURE_LAYERS, check_layers, feature_sizes, map_name, output_name, serving_outputs
from service.embed.errors import EmbedJobError
from service.embed.index import has_index, update_index
from service.embed.local_engine import run_local
from service.embed.pipeline import read_ahead
from service.embed.ray_engine import run_ray
from service.embed.region_index import has_region_index, update_region_index
from service.runtime.factory import build_backend, build_streamed_backend, resolve_for_backend
from service.runtime.onnx import onnx_path
from service.runtime.settings import RuntimeSettings
from storage.changes import Changes, plan_changes
from storage.errors import FolderError
from storage.folder import (
    KEEP_GENERATIONS,
    MANIFEST,
    SETTINGS_FIELDS,
    Manifest,
    ShardRows,
    clear_outputs,
    codec_name,
    commit_generation,
    done_name,
    mark_done,
    plan_shards,
    prepare_folder,
    rewrite_shard,
    write_shard,
)
from storage.location import shown
from storage.lock import LOCK_TTL_S, folder_lock
from storage.sources import ImageSource, SubsetSource, open_source
from storage.store import Store

logger = logging.getLogger(__name__)
POOLINGS = ("gap", "mhead")
DTYPES = ("float32", "float16")
REGION_LAYERS = FEATURE_LAYERS[2:]  # feature3..feature5: finer grids' cells see too little of a part


@dataclass
class EmbedSettings:
    """A run: the model and how it runs (``runtime``, the settings the server has too), the input and output,
    and the job's own choices."""

    runtime: RuntimeSettings
    input: str
    output: str
    layers: tuple[str, ...] = ("avgpool",)
    pooling: str = "gap"
    normalize: bool = False
    dtype: str = "float32"
    batch_size: int = 64
    shard_size: int = 10_000
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 0  # local: decode threads; ray: actors (0: automatic)
    path_column: str | None = None
    image_column: str | None = None  # Parquet with the image bytes inside
    id_column: str | None = None
    overwrite: bool = False
    dry_run: bool = False  # plan only: what would be added, embedded again and dropped
    keep_generations: int = KEEP_GENERATIONS  # generations whose shards stay (readers one behind find theirs)
    update_index: bool = True  # an index the folder has follows each new generation
    regions: str | None = None  # a feature layer whose grid's windows are stored as region codes (--regions)
    # fsspec options for URLs of --input and --output (endpoint_url, anon, ...): never logged nor recorded
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    break_lock: bool = False
    lock_ttl_s: float = LOCK_TTL_S
    progress: bool = True

    def source_options(self) -> dict[str, str]:
        """How the input is read, beyond its path (kept in the manifest: curation and thumbnails read it again)."""
        options = {"path_column": self.path_column, "image_column": self.image_column, "id_column": self.id_column}
        return {k: v for k, v in options.items() if v is not None}

    def __post_init__(self) -> None:
        self.layers = check_layers(self.layers)
        if self.pooling not in POOLINGS:
            raise EmbedJobError(f"unknown pooling {self.pooling!r}; accepted: {', '.join(POOLINGS)}")
        if self.dtype not in DTYPES:
            raise EmbedJobError(f"unknown dtype {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        if self.engine not in ("local", "ray"):
            raise EmbedJobError(f"unknown engine {self.engine!r}; accepted: local, ray")
        if self.batch_size <= 0:
            raise EmbedJobError(f"--batch-size must be positive, got {self.batch_size}")
        if self.keep_generations < 1:
            raise EmbedJobError(f"--keep-generations must be >= 1, got {self.keep_generations}")
        if self.regions is not None and self.regions not in REGION_LAYERS:
            raise EmbedJobError(f"--regions {self.regions!r}: region vectors come from a layer's grid; accepted: "
                                f"{', '.join(REGION_LAYERS)}")

    @property
    def maps(self) -> tuple[str, ...]:
        """Layers whose whole maps the backend must give (the region layer)."""
        return (self.regions,) if self.regions else ()


def build_manifest(settings: EmbedSettings, resolved: ResolvedModel, source: ImageSource, outputs: list[str]) -> Manifest:
    config = resolved.config
    missing = [layer for layer in settings.layers if output_name(layer, settings.pooling) not in outputs]
    if missing:
        raise EmbedJobError(f"pooling {settings.pooling!r} is not available for {', '.join(missing)} on this model "
                            "(its maps are smaller than the mhead grids); use --pooling gap")
    if len(source) == 0:
        raise EmbedJobError(f"{settings.input} holds no images")
    dims = {layer: int(config.dims(settings.pooling if layer != "avgpool" else "gap")[layer]) for layer in settings.layers}
    regions: dict[str, Any] = {}
    if settings.regions:
        grid = feature_sizes(config.stem, config.input_size)[FEATURE_LAYERS.index(settings.regions)]
        if grid < 2:
            raise EmbedJobError(f"--regions {settings.regions}: this model's {settings.regions} is a {grid}x{grid} "
                                "grid at its input size; take an earlier layer")
        regions = {"layer": settings.regions, "dims": REGION_DIMS}
    model_id = str(resolved.folder.resolve()) if not resolved.from_hub else resolved.model_id
    return Manifest(model_id=model_id, revision=resolved.revision, weights_sha256=config.weights_sha256,
                    architecture=config.architecture, layers=list(settings.layers), pooling=settings.pooling,
                    normalize=settings.normalize, dtype=settings.dtype, dims=dims,
                    preprocessing=config.to_dict()["preprocessing"], input=shown(settings.input),
                    input_kind=source.kind, input_fingerprint=source.fingerprint(), input_count=len(source),
                    shard_size=settings.shard_size, source_options=settings.source_options(), regions=regions)


@dataclass
class JobSummary:
    images: int = 0
    errors: int = 0
    shards_written: int = 0
    shards_total: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0  # from the start to the first embedded images (listing, model load; Ray: cluster, actors)
    steady_images_per_s: float = 0.0  # after the first embedded images
    interrupted: bool = False
    output: str = ""
    engine: str = "local"
    error_examples: list[str] = field(default_factory=list)
    generation: int = 0  # the folder's generation after the run (the one it committed, or the one it found)
    base_generation: int = 0  # the generation it built on (0: a first run)
    changes: dict[str, int] = field(default_factory=dict)  # added, changed, gone, dropped, unchanged, compared
    changed_ids: dict[str, list[str]] = field(default_factory=dict)  # a dry run: a few ids of each kind
    up_to_date: bool = False  # nothing to do: the input is the one the generation was made from
    dry_run: bool = False
    index: str = ""  # what happened to the folder's index (updated in place, rebuilt and why, or nothing)
    regions: dict[str, Any] = field(default_factory=dict)  # --regions: layer, windows, fit_s, encode_s

    def line(self) -> str:
        if self.dry_run:
            if self.up_to_date:
                return f"dry run: generation {self.generation} is up to date with its input; nothing to do"
            c = self.changes
            if not self.base_generation:
                return (f"dry run: a first run would embed {c['embed']} images in {self.shards_total} shards "
                        f"into {self.output}")
            return (f"dry run: generation {self.generation} (on {self.base_generation}) would add {c['added']}, embed "
                    f"again {c['changed']} changed, drop {c['dropped']} rows ({c['gone']} gone) and keep "
                    f"{c['unchanged']} ({c['compared']} files read to compare their bytes): {c['embed']} images to "
                    f"embed in {self.shards_total} shards, {c['rewritten_shards']} shards written again without "
                    f"their dropped rows, {c['removed_shards']} removed")
        if self.up_to_date:
            return f"up to date: generation {self.generation} already holds this input; nothing to do ({self.output})"
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        state = ("interrupted at a shard boundary; rerun the same command to resume" if self.interrupted else
                 f"generation {self.generation} committed")
        change = "" if not self.base_generation else (
            f" [append to generation {self.base_generation}: {self.changes['added']} added, {self.changes['changed']} "
            f"changed, {self.changes['gone']} gone, {self.changes['unchanged']} unchanged]")
        index = f"; index {self.index}" if self.index else ""
        if self.regions:
            r = self.regions
            extra = r.get("fit_s", 0.0) + r.get("encode_s", 0.0)
            index += (f"; regions of {r['layer']} ({r['windows']} windows an image): codec "
                      f"{'fitted on ' + str(r['sample']) + ' images in ' + format(r['fit_s'], '.1f') + ' s' if r.get('fit_s') else 'of the folder'}"
                      f", codes {r.get('encode_s', 0.0):.1f} s: +{extra:.1f} s, "
                      f"{100 * extra / max(self.seconds - extra, 1e-9):.0f} % over the run without them")
        return (f"{state}: {self.images} images ({self.errors} errors) in {self.shards_written} new shards "
                f"({self.shards_skipped} already done, {self.shards_total} in the plan), {self.seconds:.1f} s, "
                f"{rate:.1f} images/s (start-up {self.startup_s:.1f} s, then {self.steady_images_per_s:.1f} "
                f"images/s), engine {self.engine}, output {self.output}{change}{index}")


class Progress:
    """The progress bar, and when the first images were embedded (start-up apart from the steady rate)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="img", desc="embed", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1)
        self.first_at: float | None = None
        self.first_count = self.count = 0

    def update(self, count: int) -> None:
        if self.first_at is None:
            self.first_at, self.first_count = time.perf_counter(), count
        self.count += count
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


class StopFlag:
    """Ctrl-C (or SIGTERM) once: finish the shards in flight, write them, stop. Twice: stop now."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        logger.warning("stopping after the shard in flight (press Ctrl-C again to stop at once)")
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


class ShardWriter:
    """Writes finished shards in a background thread (Parquet encoding and uploads stay off the inference path),
    and counts what was committed: the local engine's shards, and the Ray actors' acknowledgements."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self.store, self.manifest = store, manifest
        self.queue: queue.Queue[ShardRows | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        # counts only: the rows themselves go once written (the job's memory does not grow with the dataset)
        self.shards = self.images = self.errors = 0
        self.regions_s = 0.0  # seconds spent encoding region codes (the local engine's, and each actor's)
        self.error_examples: list[str] = []
        self.thread = threading.Thread(target=self._run, name="byol-embed-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (rows := self.queue.get()) is not None:
            try:
                self._count(write_shard(self.store, self.manifest, rows))
            except BaseException as err:  # surfaced to the main thread on the next put/close
                self.error = err

    def _count(self, ack: dict[str, Any]) -> None:
        self.shards += 1
        self.images += ack["rows"]
        self.errors += ack["errors"]
        self.regions_s += ack.get("regions_s", 0.0)
        self.error_examples += ack["error_examples"][:5 - len(self.error_examples)]

    def put(self, rows: ShardRows) -> None:
        if self.error:
            raise self.error
        self.queue.put(rows)

    def commit(self, ack: dict[str, Any]) -> None:
        """A shard an actor wrote itself: its done marker, from the acknowledgement."""
        mark_done(self.store, ack)
        self._count(ack)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def run_job(settings: EmbedSettings) -> JobSummary:
    """Plan, check the folder, embed the shards still to do, write each atomically. Resumable."""
    started = time.perf_counter()
    runtime = settings.runtime.model_copy(update={"device": settings.runtime.resolved_device()})

    def reach_storage() -> tuple[Store, ImageSource]:
        out = Store(settings.output, settings.storage_options)
        out.check()  # an unreachable endpoint, refused credentials or a missing bucket: said before any work
        out.mkdir()
        return out, open_source(settings.input, **settings.source_options(), storage_options=settings.storage_options)

    # the storage is reached and the input listed while the model loads (each can cost a second or more)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="byol-list") as lister:
        storage = lister.submit(reach_storage)
        try:
            resolved = resolve_for_backend(runtime, settings.maps)
            backend = build_streamed_backend(resolved, runtime, settings.maps) if settings.engine == "local" else None
        except BaseException:
            storage.result()  # a bad input or output is said first, before a model's error
            raise
        out, source = storage.result()
    return _run_job(settings, runtime, resolved, out, source, backend, started)


def _committed(out: Store, fresh: Manifest, overwrite: bool) -> Manifest | None:
    """The folder's committed generation, when the run builds on it: other settings are refused (or, with
    ``--overwrite``, the folder is cleared and the run starts over). An interrupted run with other settings is
    refused too: its shards are work a rerun with its settings would keep."""
    pending = Manifest.load_pending(out)
    pending_diffs = pending.differences(fresh, SETTINGS_FIELDS) if pending is not None else []
    if pending_diffs and not overwrite:
        raise FolderError(f"{out} holds an interrupted run with other settings (" + "; ".join(pending_diffs) + "); "
                          "rerun it with its settings to finish it, use another --output, or pass --overwrite to "
                          "start over")
    try:
        committed = Manifest.load(out)
    except FolderError:
        if out.exists(MANIFEST):  # an older format, unfinished
            if not overwrite:
                raise
            committed = None
        else:
            return None
    diffs = committed.differences(fresh, SETTINGS_FIELDS) if committed is not None else ["an unreadable manifest"]
    if diffs and not overwrite:
        raise FolderError(f"{out} holds embeddings made with other settings (" + "; ".join(diffs) + "); an append "
                          "needs the same model, layers, pooling, normalize, dtype, preprocessing and input; use "
                          "another --output, or pass --overwrite to start over")
    if diffs:
        logger.warning("--overwrite: removing the previous run's shards, index and curation in %s", out)
        clear_outputs(out)
        return None
    return committed


def _plan(out: Store, fresh: Manifest, committed: Manifest | None, source: ImageSource,
          settings: EmbedSettings) -> tuple[Manifest, Changes | None]:
    """The pending generation's manifest: a first run embeds every image; an append the new and changed ones."""
    if committed is None:
        changes = None
        generation, count = 1, len(source)
        work = {"digest": source.fingerprint(), "rewrites": [], "removed_parts": []}
        counts = {"added": len(source), "changed": 0, "gone": 0, "dropped": 0, "unchanged": 0, "compared": 0}
    else:
        generation = committed.generation + 1
        changes = plan_changes(out, committed, source, generation)
        count = len(changes.work)
        work = {"digest": changes.digest(source.item_id), "rewrites": changes.rewrites,
                "removed_parts": changes.removed_parts}
        counts = changes.counts()
    counts["embed"] = count
    pending = replace(fresh, generation=generation, base_generation=committed.generation if committed else 0,
                      shards=plan_shards(count, settings.shard_size, generation), work=work, changes=counts)
    return pending, changes


def _run_job(settings: EmbedSettings, runtime: RuntimeSettings, resolved: ResolvedModel, out: Store,
             source: ImageSource, backend, started: float) -> JobSummary:
    outputs = serving_outputs(resolved.config.stem, resolved.config.input_size)
    fresh = build_manifest(settings, resolved, source, outputs)
    summary = JobSummary(output=str(out), engine=settings.engine, dry_run=settings.dry_run)
    if settings.dry_run:  # reads only: no lock, nothing written
        committed = _committed(out, fresh, overwrite=False)  # refuses as the run would; never writes
        return _dry_run(out, fresh, committed, source, settings, summary)
    with folder_lock(out, break_lock=settings.break_lock, ttl_s=settings.lock_ttl_s), StopFlag() as stop:
        committed = _committed(out, fresh, settings.overwrite)
        if committed is not None and committed.input_fingerprint == fresh.input_fingerprint \
                and Manifest.load_pending(out) is None:
            summary.generation, summary.up_to_date = committed.generation, True
            summary.index = _follow_index(out, committed, settings)
            summary.seconds = time.perf_counter() - started
            return summary
        pending, changes = _plan(out, fresh, committed, source, settings)
        if changes is not None and changes.empty:
            # the listing changed (a touched file) but no image did: nothing to commit
            logger.info("the input's listing changed but no image did (%s)", changes.summary())
            summary.generation, summary.up_to_date = committed.generation, True
            summary.seconds = time.perf_counter() - started
            return summary
        work_source = source if changes is None else SubsetSource(source, changes.work)
        codec = None
        if pending.regions:
            codec, pending.region_codec, fitted = _region_codec(out, pending, committed, work_source, resolved,
                                                                backend, runtime, settings)
            summary.regions = {"layer": pending.regions["layer"], "windows": pending.region_codec["windows"]}
            if fitted:
                summary.regions.update(sample=pending.region_codec["sample"], fit_s=pending.region_codec["fit_s"])
        todo = prepare_folder(out, pending)
        summary.generation, summary.base_generation, summary.changes = (pending.generation, pending.base_generation,
                                                                        pending.changes)
        summary.shards_total, summary.shards_skipped = pending.shard_count, pending.shard_count - len(todo)
        if changes is not None:
            logger.info("append to generation %d: %s", committed.generation, changes.summary())
        _rewrite(out, pending, committed)
        shards = [pending.shards[i] for i in todo]
        done_images = len(work_source) - sum(s["stop"] - s["start"] for s in shards)
        logger.info("generation %d: %d images to embed in %d shards of %d; %d shards to do (%d done before); model "
                    "%s @ %s, layers %s, pooling %s, engine %s", pending.generation, len(work_source),
                    pending.shard_count, pending.shard_size, len(shards), summary.shards_skipped, pending.model_id,
                    pending.revision, ",".join(pending.layers), pending.pooling, settings.engine)
        bar = Progress(len(work_source), done_images, settings.progress)
        writer = ShardWriter(out, pending)
        try:
            if settings.engine == "local" and shards:
                run_local(settings, work_source, pending, resolved, backend, shards, writer, bar, stop, codec)
            elif shards:
                if runtime.backend == "onnx":  # export a missing graph once here, not in every actor at once
                    onnx_path(resolved, "fp32")
                run_ray(settings, runtime, pending, work_source, out, shards, writer, bar, stop)
        finally:
            writer.close()
            bar.close()
        summary.shards_written, summary.images, summary.errors = writer.shards, writer.images, writer.errors
        if summary.regions:
            summary.regions["encode_s"] = writer.regions_s
        summary.error_examples = writer.error_examples
        summary.interrupted = stop.stopped and summary.shards_written + summary.shards_skipped < pending.shard_count
        if not summary.interrupted:
            committed = commit_generation(out, pending, keep=settings.keep_generations)
            logger.info("generation %d committed: %d rows in %d shards", committed.generation, committed.rows,
                        len(committed.parts))
            summary.index = _follow_index(out, committed, settings)
    ended = time.perf_counter()
    summary.seconds = ended - started
    if bar.first_at is not None:
        summary.startup_s = bar.first_at - started
        if ended > bar.first_at:
            summary.steady_images_per_s = (bar.count - bar.first_count) / (ended - bar.first_at)
    return summary


# images whose regions the codec's PCA is fitted on (256 x 36 windows: ~9 k vectors), at most a twentieth of the
# run's (each is embedded once more), at least 64 (2 304 windows for 64 dimensions)
REGION_SAMPLE, REGION_SAMPLE_SHARE, REGION_SAMPLE_MIN = 256, 20, 64


def _region_codec(out: Store, pending: Manifest, committed: Manifest | None, source: ImageSource,
                  resolved: ResolvedModel, backend: Any, runtime: RuntimeSettings, settings: EmbedSettings
                  ) -> tuple[RegionCodec, dict[str, Any], bool]:
    """The codec this generation's region codes are made with: the folder's (an append, or a resumed run), else
    fitted now on up to :data:`REGION_SAMPLE` images spread over the input (a twentieth of them, at least
    :data:`REGION_SAMPLE_MIN`) and written to ``regions/`` before any shard (a rerun and every Ray actor read it
    from there)."""
    for known in (committed, Manifest.load_pending(out)):
        if known is not None and known.regions == pending.regions and known.region_codec:
            try:
                return RegionCodec.from_bytes(out.read_bytes(known.region_codec["file"])), known.region_codec, False
            except FileNotFoundError:
                if known is committed:
                    raise FolderError(f"{out} lost its region codec {known.region_codec['file']}; its region codes "
                                      "cannot be extended: run again with --overwrite") from None
    started = time.perf_counter()
    layer = pending.regions["layer"]
    count = min(len(source), max(REGION_SAMPLE_MIN, min(REGION_SAMPLE, len(source) // REGION_SAMPLE_SHARE)))
    picks = sorted(set(np.linspace(0, len(source) - 1, count).round().astype(int).tolist()))
    backend = backend or build_backend(resolved, runtime, settings.maps)

    def batches():
        with ThreadPoolExecutor(max_workers=max(2, usable_cpus()), thread_name_prefix="byol-decode") as pool:
            batch: list[np.ndarray] = []
            for item in read_ahead(source, resolved.config, pool, picks, batch_size=settings.batch_size,
                                   max_pixels=runtime.max_pixels):
                if item.error is None:
                    batch.append(item.pixels)
                if len(batch) == settings.batch_size:
                    yield backend.run(np.stack(batch))[map_name(layer)]
                    batch = []
            if batch:
                yield backend.run(np.stack(batch))[map_name(layer)]

    try:
        codec = RegionCodec.fit_maps(batches(), dims=pending.regions["dims"])
    except ValueError:
        raise EmbedJobError(f"none of the {len(picks)} images sampled to fit the region codec could be read") from None
    data = codec.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = codec_name(digest)
    out.write_bytes(name, data)
    fit_s = round(time.perf_counter() - started, 2)
    logger.info("regions of %s: %d windows an image (a %dx%d grid), codec fitted on %d images in %.1f s (%s)", layer,
                len(codec.windows), codec.grid, codec.grid, len(picks), fit_s, name)
    return codec, {"file": name, "sha256": digest, "windows": len(codec.windows), "grid": codec.grid,
                   "sample": len(picks), "fit_s": fit_s}, True


def _rewrite(out: Store, pending: Manifest, committed: Manifest | None) -> None:
    """The shards that lose rows, written again without them (before the new images: no decode, seconds)."""
    if not pending.work.get("rewrites"):
        return
    done = set(out.names("part-*.done"))
    rows = {p["name"]: int(p["rows"]) for p in committed.parts}
    for rewrite in pending.work["rewrites"]:
        if done_name(rewrite["name"]) in done:
            continue
        drop = set(rewrite["drop"])
        rewrite_shard(out, rewrite["from"], rewrite["name"], [r for r in range(rows[rewrite["from"]]) if r not in drop])


def _follow_index(out: Store, committed: Manifest, settings: EmbedSettings) -> str:
    """Bring the folder's index (if it has one) to the committed generation: in place where the index type
    allows, else rebuilt; what was done, in words."""
    if not settings.update_index:
        return ""
    done = []
    for name, has, update in (("", has_index, update_index), ("region index ", has_region_index, update_region_index)):
        if not has(out):
            continue
        try:
            done.append(name + update(out)["action"])
        except (EmbedJobError, CurationError, FolderError) as err:  # the generation is committed; the index stays
            logger.warning("the %sindex was left at its generation: %s; run `byol-embed index %s` once fixed", name,
                           err, out)
            done.append(f"{name}left behind ({err})")
    return "; ".join(done)


def _dry_run(out: Store, fresh: Manifest, committed: Manifest | None, source: ImageSource, settings: EmbedSettings,
             summary: JobSummary) -> JobSummary:
    if committed is not None and committed.input_fingerprint == fresh.input_fingerprint:
        summary.generation, summary.up_to_date = committed.generation, True
        return summary
    pending, changes = _plan(out, fresh, committed, source, settings)
    summary.generation, summary.base_generation = pending.generation, pending.base_generation
    summary.changes, summary.shards_total = pending.changes, pending.shard_count
    if changes is not None:
        summary.up_to_date = changes.empty
        summary.changed_ids = {"added": changes.added[:10], "changed": changes.changed[:10], "gone": changes.gone[:10]}
    return summary
