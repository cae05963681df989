"""The curation commands: ``dedup``, ``outliers``, ``leaks``, ``calibrate``, ``quality``, ``labels``, ``select`` and
``map``. Each takes only the options it uses; each runs under the folder's lock and prints what
:mod:`curation.results` says it wrote. The model that calibration needs is the folder's own, passed in
(:class:`service.embed.model.FolderModel`, loaded only where a calibration is measured)."""

from __future__ import annotations

import argparse
from typing import Any

from curation import calibration, select, shared
from curation import map as map_command
from curation.calibration import DEFAULT_PRECISION, DEFAULT_SAMPLE, DEFAULT_THRESHOLD, calibrate
from curation.dedup import KEEP_RULES, dedup, format_histogram
from curation.errors import CurationError
from curation.label_sources import FORMS
from curation.labels import labels
from curation.leaks import leaks
from curation.map import LANDMARKS, build_map, rejoin
from curation.outliers import outliers
from curation.quality import DEFAULT_THRESHOLDS as DEFAULT_QUALITY
from curation.quality import quality
from curation.results import (
    CALIBRATION,
    DUPLICATES,
    LABELS,
    LEAKS,
    MAP,
    OUTLIERS,
    QUALITY,
    SELECTION,
    SHARED_PARTS,
)
from curation.select import STRATEGIES
from hub import spectrum
from service.embed.cli.common import (
    add_folder,
    add_json,
    add_knn,
    add_layer,
    add_lock_options,
    add_progress,
    add_storage,
    locked,
    parent,
    report,
    written,
)
from service.embed.model import FolderModel
from storage.folder import Manifest, load_rows
from storage.imported import is_imported
from storage.store import Store

QUALITY_HELP = {
    "dark": "brightness (mean grey, 0..1) below it, with the 99th percentile of grey below 0.5, is dark",
    "overexposed": "a fraction of pixels clipped to white above it (or brightness above 0.9) is overexposed",
    "blurry": "sharpness (fine over coarse Laplacian energy) below it is blurry",
    "low_information": "grey-histogram entropy (bits) below it is low information (as is contrast below 0.02)",
    "noise": "noise (Laplacian over 20 x grey variance; white noise is 1) above it is noise",
    "odd_size": "an area this many times above or below the set's median (or a side under 32 px) is an odd size",
    "odd_aspect": "a longer side over shorter side above it is an odd aspect",
}


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", type=float, default=DEFAULT_PRECISION,
                   help=f"the pair precision the calibrated threshold is chosen for (default {DEFAULT_PRECISION})")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"images sampled and copied for the calibration (default {DEFAULT_SAMPLE})")


def add_parsers(sub) -> None:
    base = parent(add_folder, add_storage, add_lock_options, add_json)  # every curation command
    shown = parent(add_layer, add_progress)  # the commands over one layer's vectors, with a progress bar
    knn = parent(add_knn)  # the commands whose kNN may go beyond the exact limit

    p = sub.add_parser("dedup", parents=[base, shown, knn], help="exact and near-duplicate groups, and which copy "
                       "to keep", description="Exact duplicates (same bytes) and near-duplicate groups (a kNN graph at "
                       "cosine >= --threshold, every two members >= the threshold to each other), and the copy of each "
                       f"group to keep (--keep), into FOLDER/curation/{DUPLICATES.table} (one row per member) and "
                       "duplicate_groups.parquet (one per group); prints a summary and the nearest-neighbour "
                       "histogram.")
    p.set_defaults(handler=run_dedup)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine at or above which two images are near duplicates (default: the folder's calibration, "
                        f"curation/{CALIBRATION.summary}, measured now if there is none: see `byol-embed calibrate`; "
                        f"{DEFAULT_THRESHOLD} where the model or the input cannot be read again)")
    add_calibration_options(p)
    p.add_argument("--k", type=int, default=16, help="neighbours per image in the kNN graph (default 16)")
    p.add_argument("--keep", default="representative", choices=KEEP_RULES,
                   help="which member of each group to keep (the rest are the removal list): representative (the "
                        "group's centre), first (in the folder's order), largest (most pixels), sharpest (highest "
                        "sharpness statistic), oldest (earliest modification time in the input's listing) "
                        "(default representative)")
    p.add_argument("--write-lists", action="store_true",
                   help="also write curation/keep.txt (what stays: the kept copy of each group and every unique "
                        "image) and remove.txt (the rest of each group), one id a line")

    p = sub.add_parser("outliers", parents=[base, shown, knn], help="the most unusual images, and the broken ones",
                       description="Images with no picture in them (flat, noise: their quality flags) first; then "
                       "score = 1 - mean cosine to the k nearest neighbours (the image's own near duplicates left "
                       f"out) with its percentile, into FOLDER/curation/{OUTLIERS.table}, most unusual first; error "
                       "rows are listed as broken images.")
    p.set_defaults(handler=run_outliers)
    p.add_argument("--k", type=int, default=10, help="neighbours averaged (default 10)")
    p.add_argument("--threshold", type=float, default=None,
                   help="neighbours at or above this cosine are duplicates and left out (default: the folder's "
                        f"calibrated threshold, else {DEFAULT_THRESHOLD})")

    p = sub.add_parser("shared", parents=[base, shown, knn], help="pairs of images that share a part without being "
                       "near-duplicates (a folder embedded with run --regions)", description=shared.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=run_shared)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine of two regions at or above which two images share a part (default: calibrated on "
                        "the folder's random pairs, see above)")
    p.add_argument("--duplicate-threshold", type=float, default=None,
                   help="pairs whose image vectors (--layer) are at or above this cosine are near-duplicates as "
                        "wholes and left to dedup (default: the folder's calibration; without one, only pairs where "
                        "half of either image's regions match are left out)")
    p.add_argument("--mutual", type=int, default=shared.DEFAULT_MUTUAL,
                   help="two regions are candidates when each is among the other's this many nearest regions of "
                        f"other images (default {shared.DEFAULT_MUTUAL})")
    p.add_argument("--precision", type=float, default=shared.DEFAULT_PRECISION,
                   help=f"the precision the calibrated threshold is chosen for (default {shared.DEFAULT_PRECISION})")
    p.add_argument("--sample", type=int, default=shared.DEFAULT_SAMPLE,
                   help=f"composites made for the calibration (default {shared.DEFAULT_SAMPLE})")

    p = sub.add_parser("spectrum", parents=[parent(add_folder, add_storage, add_json)],
                       help="the model's feature quality on this folder without labels: RankMe and the normalized "
                       "outputs' spread, per embedded layer", description=spectrum.__doc__.split("\n\n")[0] + " "
                       "Computed on a sample of the folder's stored vectors (each L2-normalized), per layer; reads "
                       "only, writes nothing.")
    p.set_defaults(handler=run_spectrum)
    p.add_argument("--sample", type=int, default=10_000,
                   help="vectors per layer, drawn at random (RankMe needs at least the dimension) (default 10000)")

    p = sub.add_parser("calibrate", parents=[base, parent(add_layer)], help="measure this folder's near-duplicate "
                       "threshold", description=calibration.__doc__.split("\n\n", 1)[1].split("Written to")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=run_calibrate)
    add_calibration_options(p)
    p.add_argument("--k", type=int, default=16, help="nearest images of the folder compared with each copy "
                                                     "(default 16)")

    p = sub.add_parser("quality", parents=[base, parent(add_progress)],
                       help="dark, overexposed, blurry, low-information, noisy, odd-size and odd-aspect images",
                       description="Flags each image's quality extremes with a reason, from the statistics `run` "
                       "stored (or measured now by reading the images of an older folder). Writes "
                       f"FOLDER/curation/{QUALITY.table} and {QUALITY.summary}.")
    p.set_defaults(handler=run_quality)
    for name, value in DEFAULT_QUALITY.items():
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, dest="q_" + name,
                       help=f"threshold (default {value}): " + QUALITY_HELP[name])
    p.add_argument("--no-recompute", action="store_true",
                   help="leave rows without statistics unflagged instead of reading their images again")

    p = sub.add_parser("labels", parents=[base, shown, knn], help="images whose neighbours disagree with their label",
                       description="Scores every labelled image by how strongly its k nearest neighbours disagree "
                       "with its label, with the label they suggest; the class pairs the embedding confuses; each "
                       f"class's outliers. Writes FOLDER/curation/{LABELS.table} and {LABELS.summary}.")
    p.set_defaults(handler=run_labels)
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help=f"{FORMS} (default: the source recorded by `run --labels`)")
    p.add_argument("--k", type=int, default=16, help="neighbours voting (default 16, dedup's kNN graph)")

    p = sub.add_parser("select", parents=[base, shown], help="a subset worth labelling: diverse, typical or balanced",
                       description=select.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=run_select)
    p.add_argument("-n", type=int, required=True, dest="count", help="images to select")
    p.add_argument("--strategy", default="diverse", choices=STRATEGIES,
                   help="diverse: k-center greedy (covers the set); typical: the densest images; balanced: diverse "
                        "within each label or map cluster (default diverse)")
    p.add_argument("--min-distance", type=float, default=0.0, metavar="D",
                   help="diverse: stop once every image is within D of the selection; typical: picks at least D "
                        "apart (euclidean between unit vectors, sqrt(2 - 2 cos); diverse measures it on their first 64 "
                        "principal components; default 0: off)")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help=f"balanced: the groups ({FORMS}; default: the folder's labels, else the map's clusters)")
    p.add_argument("--k", type=int, default=10, help="typical: neighbours of the density (default 10)")

    p = sub.add_parser("map", parents=[base, shown], help="2-D coordinates and k-means clusters, for the /ui Map tab",
                       description=map_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=run_map)
    p.add_argument("--clusters", type=int, default=None,
                   help="k-means clusters (default: about sqrt(n / 4), between 2 and 64)")
    p.add_argument("--landmarks", type=int, default=LANDMARKS,
                   help=f"points laid out by t-SNE; the rest placed by their nearest ones (default {LANDMARKS})")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help="labels to score the clusters against (NMI) and to colour the map by (default: the folder's, "
                        "if any)")

    both = parent(add_storage, add_lock_options, add_json, add_layer, add_progress, add_knn)
    p = sub.add_parser("leaks", parents=[both],
                       help="exact and near duplicates of one folder's images (B) in another (A)",
                       description="Leaks across sets: the images of EMB_B (e.g. the test split) that are exact (same "
                       "bytes) or near (cosine >= --threshold) duplicates of images in EMB_A (e.g. the training "
                       f"split), by a blockwise kNN of B against A. Writes EMB_B/curation/{LEAKS.table} and "
                       f"EMB_B/curation/{LEAKS.lists[0]} (B's ids with no duplicate in A). The two folders must share "
                       "the model, layer and preprocessing.")
    p.set_defaults(handler=run_leaks)
    p.add_argument("folder_a", metavar="EMB_A", help="the folder to check against (e.g. the training split)")
    p.add_argument("folder", metavar="EMB_B", help="the folder checked, and where the results go (e.g. the test "
                                                   "split)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine at or above which an image of B is a near duplicate of one of A (default: B's "
                        "calibrated threshold, measured now if there is none; both share the model)")
    p.add_argument("--k", type=int, default=4, help="neighbours in A fetched per image of B (default 4)")


def folder_model(folder: Store) -> FolderModel | None:
    """The folder's own model, for a calibration (None for imported vectors: no model made them)."""
    manifest = Manifest.load(folder)
    return None if is_imported(manifest) else FolderModel(manifest)


def threshold_line(summary: dict[str, Any]) -> str:
    chosen = summary["threshold_from"]
    if chosen["source"] == "--threshold":
        return f"threshold {summary['threshold']} (--threshold)"
    if chosen["source"] == "default":
        return f"threshold {summary['threshold']} (the fixed default: {chosen['why']})"
    line = (f"threshold {summary['threshold']} ({chosen['source']}: on copies of this folder's images, precision "
            f"{chosen['precision']}, recall {chosen['recall']})")
    return line + ("\nwarning: " + chosen["warning"] if "warning" in chosen else "")


def run_dedup(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        summary = dedup(folder, layer=args.layer, threshold=args.threshold, k=args.k, keep=args.keep,
                        write_lists=args.write_lists, exact_limit=args.exact_limit, nprobe=args.nprobe,
                        model=folder_model(folder), precision=args.precision, sample=args.sample,
                        progress=not args.no_progress)

    def lines(s: dict[str, Any]) -> list[str]:
        out = [f"{s['groups']} duplicate groups holding {s['in_groups']} of {s['embedded']} embedded images "
               f"({s['exact_copies']} exact copies); {s['removable']} could go, keeping one per group by "
               f"--keep {s['keep']} (cosine >= {s['threshold']} on {s['layer']}, {s['search']['index']}, "
               f"{s['seconds']} s) -> {written(args.folder, DUPLICATES.table)}", threshold_line(s)]
        if s["keep_fallbacks"]:
            out.append(f"  {s['keep_fallbacks']} groups kept their first member: their members lack what "
                       f"--keep {s['keep']} compares")
        out += ["nearest-neighbour cosine (each image's closest other image):", format_histogram(s["histogram"])]
        if args.write_lists:
            out.append(f"lists: {written(args.folder, 'keep.txt')}, {written(args.folder, 'remove.txt')}")
        return out

    return report(args, summary, lines)


def run_outliers(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        summary = outliers(folder, layer=args.layer, k=args.k, threshold=args.threshold,
                           exact_limit=args.exact_limit, nprobe=args.nprobe, progress=not args.no_progress)
    return report(args, summary, lambda s: [
        f"scored {s['embedded']} images on {s['layer']} (k={s['k']}); {s['no_content']} with no content, "
        f"{s['broken']} broken -> {written(args.folder, OUTLIERS.table)}",
        *(f"{rank:>3}  {item['score']:.4f}  {item['id']}" + (f"  ({', '.join(item['reasons'])})" if item["reasons"]
                                                             else "") for rank, item in enumerate(s["top"], 1)),
        *(f"  broken: {item_id}" for item_id in s["broken_ids"])])


def run_shared(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        manifest = Manifest.load(folder)
        model = None
        if args.threshold is None and manifest.regions:
            model = FolderModel(manifest, maps=(manifest.regions["layer"],), store=folder)
        summary = shared.shared_parts(folder, threshold=args.threshold, mutual=args.mutual, layer=args.layer,
                                      duplicate_threshold=args.duplicate_threshold, model=model,
                                      precision=args.precision, sample=args.sample, exact_limit=args.exact_limit,
                                      nprobe=args.nprobe, progress=not args.no_progress)
    return report(args, summary, lambda s: [
        f"{s['pairs']} pairs of images share a part ({s['images_in_pairs']} of {s['images']} images; regions of "
        f"{s['layer']}, mutual nearest, at cosine >= {s['threshold']}: {s['calibration']['rule']}; near-duplicates "
        f"as wholes left out) -> {written(args.folder, SHARED_PARTS.table)}",
        *(["warning: " + s["calibration"]["warning"]] if "warning" in s["calibration"] else []),
        *(f"{rank:>3}  {p['similarity']:.4f}  {p['id']}  {p['id_b']}  (whole images {p['whole']:.3f})"
          for rank, p in enumerate(s["top"], 1))])


def run_spectrum(args: argparse.Namespace) -> int:
    import numpy as np

    if args.sample < 2:
        raise CurationError(f"--sample must be >= 2, got {args.sample}")
    store = Store(args.folder, args.storage_options)
    manifest = Manifest.load(store)
    layers = {}
    for layer in manifest.layers:
        vectors = load_rows(store, manifest, layer).vectors
        if len(vectors) > args.sample:
            vectors = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), args.sample, replace=False))]
        if len(vectors) < 2:
            raise CurationError(f"{layer}: {len(vectors)} embedded vectors; RankMe needs at least 2")
        layers[layer] = spectrum.label_free(vectors)
    summary = {"folder": args.folder, "model": manifest.model_id, "weights_sha256": manifest.weights_sha256,
               "generation": manifest.generation, "layers": layers}
    return report(args, summary, lambda s: [
        f"{s['model']} on {args.folder} (generation {s['generation']}), without labels:",
        *(f"  {layer:<9} RankMe {v['rankme']:>8.2f} of {min(v['samples'], v['dim'])} ({100 * v['rankme_share']:.1f} %)"
          f"   normalized std {v['std']:.4f} (spread evenly: {v['std_ideal']:.4f}; collapsed: 0)"
          f"   {v['samples']} vectors" for layer, v in s["layers"].items())])


def run_calibrate(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        manifest = Manifest.load(folder)
        model = folder_model(folder)
        if model is None:
            raise CurationError("this folder's vectors were imported: no model made them, so no copy "
                                            "of an image can be embedded to measure a threshold; dedup uses the "
                                            f"fixed {DEFAULT_THRESHOLD}, or pass --threshold")
        layer = manifest.pick_layer(args.layer)
        rows = load_rows(folder, manifest, layer)
        entry = calibrate(folder, manifest, rows, layer=layer, precision=args.precision, sample=args.sample,
                          k=args.k, model=model)
    return report(args, entry, lambda e: [
        f"threshold {e['threshold']} on {e['layer']}: precision {e['precision']}, recall {e['recall']} on "
        f"{e['copies']} copies of {e['sample']} images ({e['seconds']} s) -> {written(args.folder, CALIBRATION.summary)}",
        f"  copies' cosine to their original: {e['positives']}",
        f"  nearest distinct images' cosine:   {e['negatives']}",
        "  recall by copy: " + ", ".join(f"{k} {v}" for k, v in e["recall_by_transform"].items()),
        *(["warning: " + e["warning"]] if "warning" in e else [])])


def run_quality(args: argparse.Namespace) -> int:
    thresholds = {name: getattr(args, "q_" + name) for name in DEFAULT_QUALITY
                  if getattr(args, "q_" + name) is not None}
    with locked(args) as folder:
        summary = quality(folder, thresholds=thresholds, recompute=not args.no_recompute,
                          progress=not args.no_progress)
        summary["map_joined"] = rejoin(folder)
    return report(args, summary, lambda s: [
        f"{s['flagged']} of {s['images']} images flagged ({s['measured']} measured, {s['recomputed']} read again) "
        f"-> {written(args.folder, QUALITY.table)}" + ("; the map's points show the new flags" if s["map_joined"]
                                                         else ""),
        *(f"  {reason:<16} {count:>8}" + (f"   e.g. {', '.join(s['examples'][reason][:3])}"
                                          if s["examples"][reason] else "") for reason, count in s["reasons"].items())])


def run_labels(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        summary = labels(folder, spec=args.labels, layer=args.layer, k=args.k, exact_limit=args.exact_limit,
                         nprobe=args.nprobe, progress=not args.no_progress)
        summary["map_joined"] = rejoin(folder)
    return report(args, summary, lambda s: [
        f"{s['labelled']} labelled images in {s['classes']} classes ({s['labels']}); {s['disagreeing']} whose "
        f"neighbours suggest another label ({s['seconds']} s) -> {written(args.folder, LABELS.table)}",
        "most likely mislabelled:",
        *(f"  {item['score']:.3f}  {item['id']}  {item['label']} -> {item['suggested']}" for item in s["top"]),
        "classes most confused:",
        *(f"  {pair['a']} / {pair['b']}: {100 * pair['share']:.1f} % of their neighbours' votes cross"
          for pair in s["confused_pairs"][:5])])


def run_select(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        summary = select.select(folder, count=args.count, strategy=args.strategy, layer=args.layer,
                                min_distance=args.min_distance, labels_spec=args.labels, k=args.k,
                                progress=not args.no_progress)

    def lines(s: dict[str, Any]) -> list[str]:
        radius = f", coverage radius {s['coverage_radius']}" if s["coverage_radius"] is not None else ""
        out = [f"{s['selected']} of {s['embedded']} images selected ({s['strategy']}{radius}, {s['seconds']} s) -> "
               f"{written(args.folder, SELECTION.table)}"]
        return out + ([f"  stopped early: {s['stopped']}"] if "stopped" in s else [])

    return report(args, summary, lines)


def run_map(args: argparse.Namespace) -> int:
    with locked(args) as folder:
        summary = build_map(folder, layer=args.layer, clusters=args.clusters, landmarks=args.landmarks,
                            labels_spec=args.labels, progress=not args.no_progress)
    nmi = f"; NMI against the labels {summary['nmi']['value']}" if "nmi" in summary else ""
    return report(args, summary, lambda s: [
        f"map of {s['embedded']} images, {s['clusters']} clusters ({s['method']}, {s['seconds']} s){nmi} -> "
        f"{written(args.folder, MAP.table)} ({s['sample']} points for the page)"])


def run_leaks(args: argparse.Namespace) -> int:
    with locked(args) as folder:  # the results go into B
        summary = leaks(args.folder_a, folder, layer=args.layer, threshold=args.threshold, k=args.k,
                        exact_limit=args.exact_limit, nprobe=args.nprobe, model=folder_model(folder),
                        progress=not args.no_progress, storage_options=args.storage_options)
    return report(args, summary, lambda s: [
        f"{s['leaks']} of {s['images_b']} images of {args.folder} are in {args.folder_a} ({s['exact']} exact copies, "
        f"{s['near']} near duplicates at cosine >= {s['threshold']} on {s['layer']}; "
        f"{100 * s['leaked_fraction']:.1f} %), {s['seconds']} s -> {written(args.folder, LEAKS.table)}; "
        f"{s['clean']} clean ids -> {written(args.folder, LEAKS.lists[0])}"])
