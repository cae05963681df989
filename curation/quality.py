"""Image quality: the extremes of each image statistic, with a reason per image.

    emb/curation/quality.parquet   id, path, the statistics (curation/image_stats.py), reasons (list of:
                                   dark, overexposed, blurry, low information, noise, odd size, odd aspect), flagged
    emb/curation/quality.json      the thresholds used, the count per reason, the generation it was made from

The statistics come from the shards' ``quality_*`` columns, which ``byol-embed run`` fills from the pixels it
decodes anyway; rows without them (a folder embedded before they existed) are measured by reading their images
again from the folder's input (``--no-recompute`` leaves them unflagged).

Default thresholds, chosen on scikit-image's photos and copies of them made dark, overexposed, blurred, reduced to
little information and squeezed; measured by ``benchmarks/curation.py --quality`` on 200 crops of those photos and
40 planted copies (brightness x 0.15 and x 4, a Gaussian of 1 % of the longer side, a flat fill, 3:1 squeezed):
recall 1.0 for dark, low information and odd aspect, 0.875 blurry, 0.625 overexposed, with at most 2.5 % of the
clean crops flagged (figures beside CleanVision's in docs/benchmarks.md).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.errors import CurationError
from curation.image_stats import image_stats
from curation.progress import bar as progress_bar
from curation.results import QUALITY, write_result
from hub.preprocess import decode_image
from storage.folder import QUALITY_COLUMNS, QUALITY_STATS, Manifest, finished_shards, open_input, open_parquet
from storage.store import Store, as_store

REASONS = ("dark", "overexposed", "blurry", "low information", "noise", "odd size", "odd aspect")
# reasons that say the image holds no picture at all: they make an image an outlier whatever the model says
CONTENT_REASONS = ("low information", "noise")
DEFAULT_THRESHOLDS: dict[str, float] = {
    "dark": 0.13,            # brightness below (mean grey, 0..1), with the 99th percentile below 0.5
    "overexposed": 0.3,      # highlights above (fraction of pixels clipped to white), or brightness above 0.9
    "blurry": 0.3,           # sharpness below (fine over coarse Laplacian energy)
    "low_information": 3.0,  # entropy below (bits of the grey histogram), or contrast below 0.02
    "noise": 0.5,            # noise above (white noise: 1)
    "odd_size": 10.0,        # area this many times above or below the set's median, or a side under 32 pixels
    "odd_aspect": 2.5,       # longer side over shorter above
}


def flag_reasons(stats: np.ndarray, thresholds: dict[str, float]) -> list[list[str]]:
    """The reasons of each row of ``stats`` (``(n, len(QUALITY_STATS))``, NaN rows unmeasured: no reason)."""
    s = {name: stats[:, i] for i, name in enumerate(QUALITY_STATS)}
    t = {**DEFAULT_THRESHOLDS, **thresholds}
    with np.errstate(invalid="ignore", divide="ignore"):
        area = s["width"] * s["height"]
        median_area = float(np.nanmedian(area)) if np.isfinite(area).any() else np.nan
        short = np.minimum(s["width"], s["height"])
        masks = {
            "dark": (s["brightness"] < t["dark"]) & (s["p99"] < 0.5),  # a night sky's stars are bright
            "overexposed": (s["highlights"] > t["overexposed"]) | (s["brightness"] > 0.9),
            "blurry": (s["sharpness"] < t["blurry"]) & (s["contrast"] >= 0.02),  # a flat image is not blurred
            "low information": (s["entropy"] < t["low_information"]) | (s["contrast"] < 0.02),
            "noise": s["noise"] > t["noise"],
            "odd size": (short < 32) | (area > t["odd_size"] * median_area) | (area * t["odd_size"] < median_area),
            "odd aspect": np.maximum(s["width"], s["height"]) / np.maximum(short, 1) > t["odd_aspect"],
        }
    out: list[list[str]] = [[] for _ in range(len(stats))]
    for reason in REASONS:
        for i in np.flatnonzero(masks[reason]):
            out[i].append(reason)
    return out


def load_quality(store: Store, manifest: Manifest) -> tuple[list[str], list[str], list[str | None], np.ndarray]:
    """Every row's id, path, error and quality statistics (NaN where the shard has none), in the folder's order."""
    ids: list[str] = []
    paths: list[str] = []
    errors: list[str | None] = []
    blocks: list[np.ndarray] = []
    for path in finished_shards(store, manifest):
        parquet = open_parquet(store, path)
        names = parquet.schema_arrow.names
        have = [c for c in QUALITY_COLUMNS if c in names]
        table = parquet.read(columns=["id", "path", "error", *have])
        ids += table.column("id").to_pylist()
        paths += table.column("path").to_pylist()
        errors += table.column("error").to_pylist()
        block = np.full((table.num_rows, len(QUALITY_COLUMNS)), np.nan, np.float32)
        for c, name in enumerate(QUALITY_COLUMNS):
            if name in have:
                block[:, c] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        blocks.append(block)
    stats = np.concatenate(blocks) if blocks else np.zeros((0, len(QUALITY_COLUMNS)), np.float32)
    return ids, paths, errors, stats


def recompute_missing(store: Store, manifest: Manifest, ids: list[str], errors: list[str | None], stats: np.ndarray,
                      *, workers: int = 8, progress: bool = False) -> int:
    """Measure the rows that have no statistics (and no error) by reading their images again; returns how many."""
    embedded = np.fromiter((e is None for e in errors), bool, len(errors))
    missing = np.flatnonzero(embedded & np.isnan(stats).all(axis=1)).tolist()
    if not missing:
        return 0
    source, position = open_input(store, manifest)

    def measure(i: int) -> None:
        j = position.get(ids[i])
        if j is None:
            return
        try:
            stats[i] = image_stats(decode_image(source.read(j)))
        except Exception:  # noqa: BLE001 - an image that no longer reads stays unmeasured
            pass

    bar = progress_bar(len(missing), "measuring images", progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(measure, missing):
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return len(missing)


def quality(folder: str | Path | Store, *, thresholds: dict[str, float] | None = None, recompute: bool = True,
            progress: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flag every image's quality extremes; write ``curation/quality.parquet``; returns the summary."""
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise CurationError(f"unknown quality threshold(s) {', '.join(sorted(unknown))}; accepted: "
                            + ", ".join(DEFAULT_THRESHOLDS))
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    started = time.perf_counter()
    ids, paths, errors, stats = load_quality(store, manifest)
    recomputed = recompute_missing(store, manifest, ids, errors, stats, progress=progress) if recompute else 0
    reasons = flag_reasons(stats, thresholds)
    columns: dict[str, pa.Array] = {"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string())}
    for c, name in enumerate(QUALITY_STATS):
        columns[name] = pa.array(stats[:, c], pa.float32(), mask=np.isnan(stats[:, c]))
    columns["reasons"] = pa.array(reasons, pa.list_(pa.string()))
    columns["flagged"] = pa.array([bool(r) for r in reasons], pa.bool_())
    counts = {reason: sum(reason in r for r in reasons) for reason in REASONS}
    measured = int((~np.isnan(stats).all(axis=1)).sum())
    summary = {"generation": manifest.generation, "images": len(ids), "measured": measured,
               "recomputed": recomputed, "flagged": sum(bool(r) for r in reasons), "reasons": counts,
               "thresholds": {**DEFAULT_THRESHOLDS, **thresholds}, "seconds": round(time.perf_counter() - started, 2)}
    write_result(store, QUALITY, columns, summary)
    examples = {reason: [ids[i] for i, r in enumerate(reasons) if reason in r][:5] for reason in REASONS}
    return {**summary, "examples": examples}


def content_flags(store: Store, manifest: Manifest, ids: list[str]) -> dict[str, list[str]]:
    """The content-free reasons (``CONTENT_REASONS``) of the ids that have any, from the shards' statistics (no
    image is read)."""
    all_ids, _, _, stats = load_quality(store, manifest)
    reasons = flag_reasons(stats, {})
    wanted = set(ids)
    return {i: [x for x in r if x in CONTENT_REASONS] for i, r in zip(all_ids, reasons)
            if i in wanted and any(x in CONTENT_REASONS for x in r)}
