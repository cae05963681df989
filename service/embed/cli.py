"""``byol-embed``: embed a whole dataset into Parquet shards, index it with FAISS, search it.

    byol-embed run --model org/byol-r50-ep200 --input /data/images --output emb/ --layers avgpool,feature5
    byol-embed run ... --engine ray --ray-address HOST:PORT --workers 8        # on an existing Ray cluster
    byol-embed run ... --input 's3://bucket/shards/train-{000000..000999}.tar' --output s3://bucket/emb/
    byol-embed index emb/ --layer avgpool [--factory "IVF4096,PQ64"]
    byol-embed search emb/ --image query.jpg -k 10 [--json]
    byol-embed search emb/ --id cats/001.jpg -k 10                            # near-duplicates of a set image
    byol-embed dedup emb/ [--threshold 0.86] [--write-lists]                  # exact + near-duplicate groups
    byol-embed outliers emb/ [--k 10]                                         # the most unusual and broken images
    byol-embed leaks emb_train/ emb_test/ [--threshold 0.86]                  # test images that are in train

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

import numpy as np

from hub.errors import HubError
from hub.layers import output_name
from hub.preprocess import decode_image, preprocess_one
from service.embed.curate import DEFAULT_THRESHOLD, EXACT_LIMIT, dedup, format_histogram, outliers
from service.embed.errors import EmbedJobError
from service.embed.index import GROWTH_LIMIT, LoadedIndex, build_index, has_index, update_index
from service.embed.job import EmbedSettings, run_job
from service.embed.leaks import leaks
from service.runtime.factory import build_backend, resolve_for_backend
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
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"cosine at or above which two images are near duplicates (default {DEFAULT_THRESHOLD}: "
                        "measured on re-encoded, halved, cropped and brightened copies of real photos, see the README; "
                        "the printed histogram helps to pick one for your data)")
    p.add_argument("--k", type=int, default=16, help="neighbours per image in the kNN graph (default 16)")
    p.add_argument("--write-lists", action="store_true",
                   help="also write curation/keep.txt (representatives and unique images) and remove.txt (the rest "
                        "of each group), one id a line")
    p = sub.add_parser("outliers", parents=[common], help="the most unusual images, and the broken ones",
                       description="Score = 1 - mean cosine to the k nearest neighbours (the image's own near "
                       "duplicates left out) with its percentile, into FOLDER/curation/outliers.parquet, most "
                       "unusual first; error rows are listed as broken images.")
    p.add_argument("--k", type=int, default=10, help="neighbours averaged (default 10)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"neighbours at or above this cosine are duplicates and left out (default {DEFAULT_THRESHOLD})")


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
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"cosine at or above which an image of B is a near duplicate of one of A (default "
                        f"{DEFAULT_THRESHOLD}, dedup's measured threshold)")
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
    summary = run_job(settings)
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
    settings = RuntimeSettings(model=manifest.model_id, revision=None if manifest.revision.startswith("sha256:")
                               else manifest.revision)
    resolved = resolve_for_backend(settings)
    if manifest.made_with_other_weights(resolved.config):
        raise EmbedJobError(f"the model at {manifest.model_id} now has other weights (sha256 "
                            f"{str(resolved.config.weights_sha256)[:12]}) than the set was embedded with "
                            f"({manifest.weights_sha256[:12]})")
    backend = build_backend(resolved, settings)
    pixels = preprocess_one(decode_image(image), resolved.config.preprocessing)[None]
    out = backend.run(np.ascontiguousarray(pixels))
    return out[output_name(layer, manifest.pooling)].reshape(1, -1)


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
                        exact_limit=args.exact_limit, nprobe=args.nprobe, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    out = join(args.folder, "curation")
    print(f"{summary['groups']} duplicate groups holding {summary['in_groups']} of {summary['embedded']} embedded "
          f"images ({summary['exact_copies']} exact copies); {summary['removable']} could go, keeping one per "
          f"group (cosine >= {summary['threshold']} on {summary['layer']}, {summary['search']['index']}, "
          f"{summary['seconds']} s) -> {join(out, 'duplicates.parquet')}")
    print("nearest-neighbour cosine (each image's closest other image):")
    print(format_histogram(summary["histogram"]))
    if args.write_lists:
        print(f"lists: {join(out, 'keep.txt')}, {join(out, 'remove.txt')}")
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


COMMANDS = {"run": _run, "index": _index, "search": _search, "dedup": _dedup, "outliers": _outliers, "leaks": _leaks}


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
