"""``byol-embed``: embed a whole dataset into Parquet shards, index it with FAISS, search it.

    byol-embed run --model org/byol-r50-ep200 --input /data/images --output emb/ --layers avgpool,feature5
    byol-embed run ... --engine ray --ray-address HOST:PORT --workers 8        # on an existing Ray cluster
    byol-embed run ... --input 's3://bucket/shards/train-{000000..000999}.tar' --output s3://bucket/emb/
    byol-embed index emb/ --layer avgpool [--factory "IVF4096,PQ64"]
    byol-embed search emb/ --image query.jpg -k 10 [--json]
    byol-embed search emb/ --id cats/001.jpg -k 10                            # near-duplicates of a set image
    byol-embed calibrate emb/ [--precision 0.95]                              # this model's duplicate threshold
    byol-embed dedup emb/ [--threshold T] [--write-lists]                     # exact + near-duplicate groups
    byol-embed outliers emb/ [--k 10]                                         # the most unusual and broken images
    byol-embed leaks emb_train/ emb_test/ [--threshold T]                     # test images that are in train
    byol-embed quality emb/                                                   # dark, blurry, low-information, ...
    byol-embed labels emb/ --labels folders|column:NAME|labels.csv            # likely wrong labels
    byol-embed select emb/ -n 1000 --strategy diverse|typical|balanced        # a subset worth labelling
    byol-embed map emb/ [--clusters 32]                                       # 2-D map + k-means clusters

Inputs and outputs may be fsspec URLs (s3://, gs://, az://, hf://datasets/...): credentials come the provider's
standard way (AWS_* variables, ~/.aws, an instance role), other options with --storage-option KEY=VALUE.
Rerunning the same `run` command resumes (finished shards are kept). Run it again after the input changed and it
appends: only new images and those whose bytes changed are embedded, rows of images that are gone are dropped, and
the change is committed as a new generation of the folder (readers see the old one or the new one, never a mix;
--dry-run shows the plan). Other settings are refused with what differs (--overwrite starts over). Ctrl-C stops
at a shard boundary. On the ONNX backend no torch is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hub.errors import HubError
from hub.preprocess import decode_image
from service.embed.calibrate import DEFAULT_PRECISION, DEFAULT_SAMPLE, calibrate
from service.embed.curate import DEFAULT_THRESHOLD, EXACT_LIMIT, dedup, format_histogram, outliers
from service.embed.errors import EmbedJobError
from service.embed.index import GROWTH_LIMIT, LoadedIndex, build_index, has_index, update_index
from service.embed.job import EmbedSettings, run_job
from service.embed.labels import labels as score_labels
from service.embed.labels import parse_spec, save_spec
from service.embed.leaks import leaks
from service.embed.projection import LANDMARKS, build_map
from service.embed.quality import DEFAULT_THRESHOLDS as DEFAULT_QUALITY
from service.embed.quality import quality
from service.embed.select import STRATEGIES, select
from service.runtime.settings import RuntimeSettings
from storage.errors import DataLayerError
from storage.folder import KEEP_GENERATIONS
from storage.location import add_storage_option, join
from storage.lock import LOCK_TTL_S, folder_lock
from storage.store import as_store


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="embed every image of an input into resumable Parquet shards",
                       description="Embed every image of --input into --output/part-NNNNN.parquet shards.")
    p.add_argument("--model", required=True, help="model folder or Hub repo id (org/name)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the Hub; use its cache only")
    p.add_argument("--input", required=True,
                   help="a folder (recursive, sorted; ids relative to it), a .txt list of paths, WebDataset .tar "
                        "shards (a file, a folder or a glob; ids <tar file>/<key>), Parquet with the image bytes "
                        "inside (a file, a glob or a folder of .parquet: Hugging Face datasets' Image column or a "
                        "binary one; ids <file>/<row> or --id-column), or a .parquet file with a path column. "
                        "Local paths or URLs (s3://bucket/images/, 's3://b/shards/train-{000000..000999}.tar', "
                        "gs://, az://, hf://datasets/ORG/NAME/data/*.parquet)")
    p.add_argument("--path-column", default=None, help="Parquet input: the column of image paths (default: path)")
    p.add_argument("--image-column", default=None,
                   help="Parquet input with the image bytes inside: the Hugging Face Image column (struct<bytes, "
                        "path>) or binary column (default: found; 'image' where there are several)")
    p.add_argument("--id-column", default=None,
                   help="Parquet input with the image bytes inside: the column of ids (default: <file name>/<row>)")
    p.add_argument("--output", required=True,
                   help="output folder (manifest.json, part-NNNNN.parquet, index/): a local path, or a URL such as "
                        "s3://bucket/emb/ (each shard one object, then its done marker: the commit)")
    add_storage_option(p)
    add_lock_options(p)
    p.add_argument("--layers", default="avgpool", help="comma-separated: feature1..feature5, avgpool (default avgpool)")
    p.add_argument("--pooling", default="gap", choices=("gap", "mhead"),
                   help="pooling of feature1..feature5 (avgpool is always the global average) (default gap)")
    p.add_argument("--normalize", action="store_true", help="L2-normalize each vector before storing it")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored vector type")
    p.add_argument("--backend", default="onnx", choices=("onnx", "torch"),
                   help="onnx: ONNX Runtime, no torch needed (a folder without model.onnx is exported once and "
                        "cached when torch is installed); torch: PyTorch, on CUDA GPUs where there are (default onnx)")
    p.add_argument("--device", default="auto", help="auto (CUDA for --backend torch where available), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="images per inference batch (default 64)")
    p.add_argument("--shard-size", type=int, default=10_000,
                   help="images per shard: the unit of work, of resume and of parallelism (default 10000)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this machine; ray: an actor pool on a Ray cluster (default local)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join: auto, HOST:PORT, or none to start a local one (default: local)")
    p.add_argument("--workers", type=int, default=0,
                   help="means threads for the local engine (read + decode threads; default: the CPU count) and actors "
                        "for the ray engine (backend actors; default: one per GPU, else one per two CPUs)")
    p.add_argument("--threads", type=int, default=0, help="inference threads per backend (default: automatic)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="images larger than this become error rows, checked before decoding (default 40000000)")
    p.add_argument("--overwrite", action="store_true", help="start over in a folder made with other settings")
    p.add_argument("--dry-run", action="store_true",
                   help="say what the run would do (images to add, to embed again because their bytes changed, rows "
                        "to drop for images that are gone) and write nothing")
    p.add_argument("--keep-generations", type=int, default=KEEP_GENERATIONS, metavar="N",
                   help="generations whose shards stay after a commit, so that a reader N-1 generations behind still "
                        f"finds its shards (default {KEEP_GENERATIONS})")
    p.add_argument("--no-index-update", action="store_true",
                   help="leave the folder's index (if any) at its generation; by default it follows the new "
                        "generation (in place where its type allows, else rebuilt)")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help="record the images' labels with the folder, for `byol-embed labels`, `select --strategy "
                        "balanced` and the map: folders (each id's parent folder), column:NAME (a column of the "
                        "Parquet input) or FILE.csv (id,label; kept in the folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_lock_options(p: argparse.ArgumentParser) -> None:
    """The folder's lock: one writer at a time (run, index, dedup, outliers)."""
    p.add_argument("--break-lock", action="store_true",
                   help="object storage: take over the folder's lock from a run that is dead (a lock whose run is "
                        "gone from this host and container, or not renewed for its lease, is taken over without "
                        "it); the run that held it stops before its next commit")
    p.add_argument("--lock-ttl", type=float, default=LOCK_TTL_S, metavar="SECONDS",
                   help=f"object storage: the lock's lease, renewed every quarter of it; a run that cannot renew "
                        f"it for this long stops, and another may take the folder (default {LOCK_TTL_S:g})")


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="build a FAISS index over one layer of an output folder, or bring it to the "
                                     "folder's generation")
    p.add_argument("folder", help="output folder of `byol-embed run` (a path or a URL)")
    p.add_argument("--layer", default="avgpool", help="the embedded layer to index (default avgpool)")
    add_storage_option(p)
    add_lock_options(p)
    p.add_argument("--factory", default=None,
                   help="FAISS index_factory string: Flat (exact, default for a new index) or e.g. 'IVF4096,PQ64', "
                        "'HNSW32' for large sets (trained on a sample; IVF needs ~39 x lists vectors); inner product "
                        "over L2-normalized vectors (default: the existing index's)")
    p.add_argument("--train-size", type=int, default=0, help="training sample size (default: automatic)")
    p.add_argument("--rebuild", action="store_true",
                   help="build the index anew even where the existing one could follow the folder in place (by "
                        "default an index of the same layer and factory is updated: rows of gone and changed images "
                        "removed, new ones added; IVF retrained only once the set has grown past "
                        f"{GROWTH_LIMIT:g}x what it was trained on)")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="nearest neighbours of an image, or of an image already in the set")
    p.add_argument("folder", help="output folder with an index (`byol-embed index`); a URL's index is copied once "
                                  "into a local cache")
    add_storage_option(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file: embedded with the manifest's model and settings")
    query.add_argument("--id", dest="item_id", help="an id in the set (its own row is left out of the results)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query (default: FAISS's)")
    p.add_argument("--json", action="store_true", help='print {"results": [{"id", "path", "score"}, ...]}')


def _add_curation(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("folder", help="output folder of `byol-embed run` (results go to FOLDER/curation/)")
    common.add_argument("--layer", default="avgpool", help="the embedded layer to compare on (default avgpool)")
    common.add_argument("--exact-limit", type=int, default=EXACT_LIMIT,
                        help=f"exact kNN (FAISS Flat) up to this many vectors, an IVF index beyond (default {EXACT_LIMIT})")
    common.add_argument("--nprobe", type=int, default=None,
                        help="IVF lists probed per query beyond --exact-limit (default 16)")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_storage_option(common)
    add_lock_options(common)
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("dedup", parents=[common], help="exact and near-duplicate groups",
                       description="Exact duplicates (same bytes) and near-duplicate groups (a kNN graph at cosine "
                       ">= --threshold, every member >= the threshold to its group's representative) into "
                       "FOLDER/curation/duplicates.parquet; prints a summary and the nearest-neighbour histogram.")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine at or above which two images are near duplicates (default: the folder's calibration, "
                        "curation/calibration.json, measured now if there is none: see `byol-embed calibrate`; "
                        f"{DEFAULT_THRESHOLD} where the model or the input cannot be read again)")
    add_calibration_options(p)
    p.add_argument("--k", type=int, default=16, help="neighbours per image in the kNN graph (default 16)")
    p.add_argument("--write-lists", action="store_true",
                   help="also write curation/keep.txt (representatives and unique images) and remove.txt (the rest "
                        "of each group), one id a line")
    p = sub.add_parser("outliers", parents=[common], help="the most unusual images, and the broken ones",
                       description="Score = 1 - mean cosine to the k nearest neighbours (the image's own near "
                       "duplicates left out) with its percentile, into FOLDER/curation/outliers.parquet, most "
                       "unusual first; error rows are listed as broken images.")
    p.add_argument("--k", type=int, default=10, help="neighbours averaged (default 10)")
    p.add_argument("--threshold", type=float, default=None,
                   help="neighbours at or above this cosine are duplicates and left out (default: the folder's "
                        f"calibrated threshold, else {DEFAULT_THRESHOLD})")
    p = sub.add_parser("calibrate", parents=[common], help="measure this folder's near-duplicate threshold",
                       description=calibrate_doc())
    add_calibration_options(p)
    p.add_argument("--k", type=int, default=16, help="nearest images of the folder compared with each copy "
                                                     "(default 16)")
    p = sub.add_parser("labels", parents=[common], help="images whose neighbours disagree with their label",
                       description="Scores every labelled image by how strongly its k nearest neighbours disagree "
                       "with its label, with the label they suggest; the class pairs the embedding confuses; each "
                       "class's outliers. Writes FOLDER/curation/labels.parquet and labels.json.")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help="folders | column:NAME | FILE.csv (default: the source recorded by `run --labels`)")
    p.add_argument("--k", type=int, default=16, help="neighbours voting (default 16, dedup's kNN graph)")
    p = sub.add_parser("select", parents=[common], help="a subset worth labelling: diverse, typical or balanced",
                       description=select_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, required=True, dest="count", help="images to select")
    p.add_argument("--strategy", default="diverse", choices=STRATEGIES,
                   help="diverse: k-center greedy (covers the set); typical: the densest images; balanced: diverse "
                        "within each label or map cluster (default diverse)")
    p.add_argument("--min-distance", type=float, default=0.0, metavar="D",
                   help="diverse: stop once every image is within D of the selection; typical: picks at least D "
                        "apart (euclidean between unit vectors, sqrt(2 - 2 cos); diverse measures it on their first 64 "
                        "principal components; default 0: off)")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help="balanced: the groups (folders | column:NAME | FILE.csv; default: the folder's labels, else "
                        "the map's clusters)")
    p.add_argument("--k", type=int, default=10, help="typical: neighbours of the density (default 10)")
    p = sub.add_parser("map", parents=[common], help="2-D coordinates and k-means clusters, for the /ui Map tab",
                       description=map_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=None,
                   help="k-means clusters (default: about sqrt(n / 4), between 2 and 64)")
    p.add_argument("--landmarks", type=int, default=LANDMARKS,
                   help=f"points laid out by t-SNE; the rest placed by their nearest ones (default {LANDMARKS})")
    p.add_argument("--labels", default=None, metavar="SOURCE",
                   help="labels to score the clusters against (NMI; default: the folder's, if any)")
    p = sub.add_parser("quality", parents=[common], help="dark, overexposed, blurry, low-information, noisy, odd-size "
                                                         "and odd-aspect images",
                       description="Flags each image's quality extremes with a reason, from the statistics `run` "
                       "stored (or measured now by reading the images of an older folder). Writes "
                       "FOLDER/curation/quality.parquet and quality.json. --layer is not used.")
    for name, value in DEFAULT_QUALITY.items():
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, dest="q_" + name,
                       help=f"threshold (default {value}): " + QUALITY_HELP[name])
    p.add_argument("--no-recompute", action="store_true",
                   help="leave rows without statistics unflagged instead of reading their images again")


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


def calibrate_doc() -> str:
    from service.embed import calibrate

    return calibrate.__doc__.split("\n\n", 1)[1].split("Written to")[0].strip()


def select_doc() -> str:
    from service.embed import select

    return select.__doc__


def map_doc() -> str:
    from service.embed import projection

    return projection.__doc__


def _add_leaks(sub) -> None:
    p = sub.add_parser("leaks", help="exact and near duplicates of one folder's images (B) in another (A)",
                       description="Leaks across sets: the images of EMB_B (e.g. the test split) that are exact (same "
                       "bytes) or near (cosine >= --threshold) duplicates of images in EMB_A (e.g. the training "
                       "split), by a blockwise kNN of B against A. Writes EMB_B/curation/leaks.parquet (id, id_a, "
                       "similarity, kind) and EMB_B/curation/leaks_clean.txt (B's ids with no duplicate in A). The "
                       "two folders must share the model, layer and preprocessing.")
    p.add_argument("folder_a", metavar="EMB_A", help="the folder to check against (e.g. the training split)")
    p.add_argument("folder_b", metavar="EMB_B", help="the folder checked, and where the results go (e.g. the test "
                                                     "split)")
    p.add_argument("--layer", default="avgpool", help="the embedded layer to compare on (default avgpool)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine at or above which an image of B is a near duplicate of one of A (default: B's "
                        "calibrated threshold, measured now if there is none; both share the model)")
    p.add_argument("--k", type=int, default=4, help="neighbours in A fetched per image of B (default 4)")
    p.add_argument("--exact-limit", type=int, default=EXACT_LIMIT,
                   help=f"exact kNN over A up to this many vectors, an IVF index beyond (default {EXACT_LIMIT})")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query beyond --exact-limit "
                                                            "(default 16)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_storage_option(p)
    add_lock_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol-embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_index(sub)
    _add_search(sub)
    _add_curation(sub)
    _add_leaks(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    runtime = RuntimeSettings(model=args.model, revision=args.revision, local_files_only=args.local_files_only,
                              backend=args.backend, device=args.device, threads=args.threads,
                              max_pixels=args.max_pixels)
    settings = EmbedSettings(
        runtime=runtime, input=args.input, output=args.output, layers=args.layers, pooling=args.pooling,
        normalize=args.normalize, dtype=args.dtype, batch_size=args.batch_size, shard_size=args.shard_size,
        engine=args.engine, ray_address=args.ray_address, workers=args.workers, path_column=args.path_column,
        image_column=args.image_column, id_column=args.id_column, storage_options=args.storage_options,
        break_lock=args.break_lock, lock_ttl_s=args.lock_ttl, overwrite=args.overwrite, dry_run=args.dry_run,
        keep_generations=args.keep_generations, update_index=not args.no_index_update,
        progress=not args.no_progress)
    if args.labels:
        parse_spec(args.labels)
    summary = run_job(settings)
    if args.labels and not args.dry_run and not summary.interrupted:
        with _locked(argparse.Namespace(folder=args.output, storage_options=args.storage_options,
                                        break_lock=False, lock_ttl=args.lock_ttl)) as folder:
            save_spec(folder, args.labels)
    print(summary.line())
    for kind, ids in summary.changed_ids.items():
        if ids:
            print(f"  {kind}: " + ", ".join(ids) + (" ..." if len(ids) >= 10 else ""))
    for example in summary.error_examples:
        print(f"  error row: {example}")
    return 130 if summary.interrupted else 0


@contextlib.contextmanager
def _locked(args: argparse.Namespace):
    """The folder of ``index``, ``dedup`` and ``outliers``, held under its lock (a run, or another of these, on
    the same folder is refused; on object storage every write is fenced)."""
    folder = as_store(args.folder, args.storage_options)
    with folder_lock(folder, break_lock=args.break_lock, ttl_s=args.lock_ttl):
        yield folder


def _index(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        old = json.loads(folder.read_text("index/index.json")) if has_index(folder) else None
        same = old is not None and (old["layer"], old["factory"]) == (args.layer, args.factory or old["factory"])
        if same and not args.rebuild:
            meta = update_index(folder, train_size=args.train_size)
            action = meta["action"]
        else:
            factory = args.factory or "Flat"
            meta = build_index(folder, layer=args.layer, factory=factory, train_size=args.train_size)
            action = ("built" if old is None else "rebuilt (--rebuild)" if same else
                      f"rebuilt (it indexed {old['layer']} with {old['factory']}; asked: {args.layer} with {factory})")
    print(f"index {action}: {meta['count']} vectors of {meta['layer']} ({meta['dim']}-d, {meta['factory']}, "
          f"cosine), generation {meta.get('generation')} -> {join(args.folder, 'index')}")
    return 0


def embed_query(manifest, image: bytes, layer: str):
    """Embed one image exactly as the manifest's run did (model, revision, preprocessing, pooling)."""
    from service.embed.model import FolderModel

    return FolderModel(manifest).embed([decode_image(image)], layer)


def _search(args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise EmbedJobError(f"-k must be positive, got {args.k}")
    index = LoadedIndex.open(args.folder, nprobe=args.nprobe, storage_options=args.storage_options)
    if args.item_id is not None:
        results = index.search(index.vector_of(args.item_id), args.k, exclude=args.item_id)
    else:
        results = index.search(embed_query(index.manifest, Path(args.image).read_bytes(), index.meta["layer"]), args.k)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        for rank, r in enumerate(results, 1):
            print(f"{rank:>3}  {r['score']:.4f}  {r['id']}  {r['path']}")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        summary = dedup(folder, layer=args.layer, threshold=args.threshold, k=args.k, write_lists=args.write_lists,
                        exact_limit=args.exact_limit, nprobe=args.nprobe, precision=args.precision,
                        sample=args.sample, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    out = join(args.folder, "curation")
    print(f"{summary['groups']} duplicate groups holding {summary['in_groups']} of {summary['embedded']} embedded "
          f"images ({summary['exact_copies']} exact copies); {summary['removable']} could go, keeping one per "
          f"group (cosine >= {summary['threshold']} on {summary['layer']}, {summary['search']['index']}, "
          f"{summary['seconds']} s) -> {join(out, 'duplicates.parquet')}")
    print(_threshold_line(summary))
    print("nearest-neighbour cosine (each image's closest other image):")
    print(format_histogram(summary["histogram"]))
    if args.write_lists:
        print(f"lists: {join(out, 'keep.txt')}, {join(out, 'remove.txt')}")
    return 0


def _threshold_line(summary: dict) -> str:
    chosen = summary["threshold_from"]
    if chosen["source"] == "--threshold":
        return f"threshold {summary['threshold']} (--threshold)"
    if chosen["source"] == "default":
        return f"threshold {summary['threshold']} (the fixed default: {chosen['why']})"
    line = (f"threshold {summary['threshold']} ({chosen['source']}: on copies of this folder's images, precision "
            f"{chosen['precision']}, recall {chosen['recall']})")
    return line + ("\nwarning: " + chosen["warning"] if "warning" in chosen else "")


def _calibrate(args: argparse.Namespace) -> int:
    from storage.folder import Manifest, load_rows

    with _locked(args) as folder:
        manifest = Manifest.load(folder)
        rows = load_rows(folder, manifest, args.layer)
        entry = calibrate(folder, manifest, rows, layer=args.layer, precision=args.precision, sample=args.sample,
                          k=args.k)
    if args.json:
        print(json.dumps(entry))
        return 0
    print(f"threshold {entry['threshold']} on {entry['layer']}: precision {entry['precision']}, recall "
          f"{entry['recall']} on {entry['copies']} copies of {entry['sample']} images ({entry['seconds']} s) -> "
          f"{join(args.folder, 'curation/calibration.json')}")
    print(f"  copies' cosine to their original: {entry['positives']}")
    print(f"  nearest distinct images' cosine:   {entry['negatives']}")
    print("  recall by copy: " + ", ".join(f"{k} {v}" for k, v in entry["recall_by_transform"].items()))
    if "warning" in entry:
        print("warning: " + entry["warning"])
    return 0


def _quality(args: argparse.Namespace) -> int:
    thresholds = {name: getattr(args, "q_" + name) for name in DEFAULT_QUALITY
                  if getattr(args, "q_" + name) is not None}
    with _locked(args) as folder:
        summary = quality(folder, thresholds=thresholds, recompute=not args.no_recompute,
                          progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['flagged']} of {summary['images']} images flagged ({summary['measured']} measured, "
          f"{summary['recomputed']} read again) -> {join(args.folder, 'curation/quality.parquet')}")
    for reason, count in summary["reasons"].items():
        examples = ", ".join(summary["examples"][reason][:3])
        print(f"  {reason:<16} {count:>8}" + (f"   e.g. {examples}" if examples else ""))
    return 0


def _labels(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        summary = score_labels(folder, spec=args.labels, layer=args.layer, k=args.k, exact_limit=args.exact_limit,
                               nprobe=args.nprobe, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['labelled']} labelled images in {summary['classes']} classes ({summary['labels']}); "
          f"{summary['disagreeing']} whose neighbours suggest another label ({summary['seconds']} s) -> "
          f"{join(args.folder, 'curation/labels.parquet')}")
    print("most likely mislabelled:")
    for item in summary["top"]:
        print(f"  {item['score']:.3f}  {item['id']}  {item['label']} -> {item['suggested']}")
    print("classes most confused:")
    for pair in summary["confused_pairs"][:5]:
        print(f"  {pair['a']} / {pair['b']}: {100 * pair['share']:.1f} % of their neighbours' votes cross")
    return 0


def _select(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        summary = select(folder, count=args.count, strategy=args.strategy, layer=args.layer,
                         min_distance=args.min_distance, labels_spec=args.labels, k=args.k,
                         progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    radius = f", coverage radius {summary['coverage_radius']}" if summary["coverage_radius"] is not None else ""
    print(f"{summary['selected']} of {summary['embedded']} images selected ({summary['strategy']}{radius}, "
          f"{summary['seconds']} s) -> {join(args.folder, 'curation/selection.parquet')}")
    if "stopped" in summary:
        print(f"  stopped early: {summary['stopped']}")
    return 0


def _map(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        summary = build_map(folder, layer=args.layer, clusters=args.clusters, landmarks=args.landmarks,
                            labels_spec=args.labels, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    nmi = f"; NMI against the labels {summary['nmi']['value']}" if "nmi" in summary else ""
    print(f"map of {summary['embedded']} images, {summary['clusters']} clusters ({summary['method']}, "
          f"{summary['seconds']} s){nmi} -> {join(args.folder, 'curation/map.parquet')}")
    return 0


def _outliers(args: argparse.Namespace) -> int:
    with _locked(args) as folder:
        summary = outliers(folder, layer=args.layer, k=args.k, threshold=args.threshold,
                           exact_limit=args.exact_limit, nprobe=args.nprobe, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"scored {summary['embedded']} images on {summary['layer']} (k={summary['k']}); {summary['broken']} broken "
          f"-> {join(args.folder, 'curation/outliers.parquet')}")
    for rank, item in enumerate(summary["top"], 1):
        print(f"{rank:>3}  {item['score']:.4f}  {item['id']}")
    for item_id in summary["broken_ids"]:
        print(f"  broken: {item_id}")
    return 0


def _leaks(args: argparse.Namespace) -> int:
    folder = as_store(args.folder_b, args.storage_options)
    with folder_lock(folder, break_lock=args.break_lock, ttl_s=args.lock_ttl):  # the results go into B
        summary = leaks(args.folder_a, folder, layer=args.layer, threshold=args.threshold, k=args.k,
                        exact_limit=args.exact_limit, nprobe=args.nprobe, progress=not args.no_progress,
                        storage_options=args.storage_options)
    if args.json:
        print(json.dumps(summary))
        return 0
    out = join(args.folder_b, "curation")
    print(f"{summary['leaks']} of {summary['images_b']} images of {args.folder_b} are in {args.folder_a} "
          f"({summary['exact']} exact copies, {summary['near']} near duplicates at cosine >= {summary['threshold']} "
          f"on {summary['layer']}; {100 * summary['leaked_fraction']:.1f} %), {summary['seconds']} s -> "
          f"{join(out, 'leaks.parquet')}; {summary['clean']} clean ids -> {join(out, 'leaks_clean.txt')}")
    return 0


COMMANDS = {"run": _run, "index": _index, "search": _search, "dedup": _dedup, "outliers": _outliers, "leaks": _leaks,
            "calibrate": _calibrate, "quality": _quality, "labels": _labels, "select": _select, "map": _map}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # this project's debug lines only: a storage client's would show request headers
        for name in ("hub", "service", "storage"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        return COMMANDS[args.command](args)
    except (HubError, DataLayerError, EmbedJobError, OSError) as err:
        print(f"byol-embed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
