"""The commands that make a folder: ``run`` (embed a dataset) and ``import`` (vectors a user already has)."""

from __future__ import annotations

import argparse

from curation.label_sources import parse_spec, save_spec
from curation.regions import REGION_DIMS
from service.embed.cli.common import add_json, add_lock_options, add_progress, add_storage, locked, parent, report
from service.embed.job import REGION_LAYERS, EmbedSettings, run_job
from service.runtime.settings import RuntimeSettings, add_settings_options, settings_overrides
from storage import imported
from storage.folder import KEEP_GENERATIONS
from storage.imported import SHARD_ROWS, import_vectors

# byol-embed run's own default where the server's differs: a dataset job uses a GPU where the torch backend sees one
RUN_DEFAULTS = {"device": "auto"}

INPUT_HELP = ("a folder (recursive, sorted; ids relative to it), a .txt list of paths, WebDataset .tar shards (a file, "
              "a folder or a glob; ids <tar file>/<key>), Parquet with the image bytes inside (a file, a glob or a "
              "folder of .parquet: Hugging Face datasets' Image column or a binary one; ids <file>/<row> or "
              "--id-column), or a .parquet file with a path column. Local paths or URLs (s3://bucket/images/, "
              "'s3://b/shards/train-{000000..000999}.tar', gs://, az://, hf://datasets/ORG/NAME/data/*.parquet)")


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="embed every image of an input into resumable Parquet shards",
                       description="Embed every image of --input into --output/part-NNNNN.parquet shards.",
                       parents=[parent(add_storage, add_lock_options)])
    p.set_defaults(handler=run)
    runtime = p.add_argument_group("model and runtime", "the settings byol-serve has too (each also reads its "
                                   "BYOL_* variable)")
    add_settings_options(runtime, RuntimeSettings, defaults=RUN_DEFAULTS)
    p.add_argument("--input", required=True, help=INPUT_HELP)
    p.add_argument("--path-column", default=None, help="Parquet input: the column of image paths (default: path)")
    p.add_argument("--image-column", default=None,
                   help="Parquet input with the image bytes inside: the Hugging Face Image column (struct<bytes, "
                        "path>) or binary column (default: found; 'image' where there are several)")
    p.add_argument("--id-column", default=None,
                   help="Parquet input with the image bytes inside: the column of ids (default: <file name>/<row>)")
    p.add_argument("--output", required=True,
                   help="output folder (manifest.json, part-NNNNN.parquet, index/): a local path, or a URL such as "
                        "s3://bucket/emb/ (each shard one object, then its done marker: the commit)")
    p.add_argument("--layers", default="avgpool", help="comma-separated: feature1..feature5, avgpool (default avgpool)")
    p.add_argument("--pooling", default="gap", choices=("gap", "mhead"),
                   help="pooling of feature1..feature5 (avgpool is always the global average) (default gap)")
    p.add_argument("--normalize", action="store_true", help="L2-normalize each vector before storing it")
    p.add_argument("--regions", default=None, metavar="LAYER", choices=REGION_LAYERS,
                   help="also store region vectors of LAYER's grid (feature3, feature4 or feature5; feature4 is a "
                        "14x14 grid at 224²) for search inside images: 36 windows an image, each reduced to "
                        f"{REGION_DIMS} int8 codes with its box (the reduction is fitted on a sample of the first "
                        "run's images and kept in the folder); `byol-embed index` then also builds the region index")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored vector type")
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
    add_progress(p)

    p = sub.add_parser("import", help="an embedding folder from vectors you already have (Parquet or NumPy)",
                       description=imported.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       parents=[parent(add_storage, add_lock_options, add_json)])
    p.set_defaults(handler=run_import)
    p.add_argument("vectors", metavar="VECTORS",
                   help="Parquet (a file, a folder of .parquet or a glob; local or a URL) or a NumPy .npy of shape "
                        "(count, dimension)")
    p.add_argument("--output", required=True, help="the embedding folder to make (a path or a URL)")
    p.add_argument("--id-column", default="id", help="Parquet: the column of ids (default id)")
    p.add_argument("--vector-column", default="embedding",
                   help="Parquet: the column of vectors, a list of floats (default embedding)")
    p.add_argument("--ids", default=None, help="NumPy: the ids, a .npy or a .txt of one id a line, in the vectors' order")
    p.add_argument("--input", default=None,
                   help="where the images are (as for `run --input`; each id relative to it): thumbnails, `quality` "
                        "and exact copies read them; without it those say why they cannot run")
    p.add_argument("--layer", default="embedding", help="the name the vectors get in the folder (default embedding)")
    p.add_argument("--shard-size", type=int, default=SHARD_ROWS,
                   help=f"vectors per shard (default {SHARD_ROWS})")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that already holds embeddings")


def run(args: argparse.Namespace) -> int:
    runtime = RuntimeSettings(**settings_overrides(args, RuntimeSettings))
    settings = EmbedSettings(
        runtime=runtime, input=args.input, output=args.output, layers=args.layers, pooling=args.pooling,
        normalize=args.normalize, dtype=args.dtype, batch_size=args.batch_size, shard_size=args.shard_size,
        engine=args.engine, ray_address=args.ray_address, workers=args.workers, path_column=args.path_column,
        image_column=args.image_column, id_column=args.id_column, storage_options=args.storage_options,
        break_lock=args.break_lock, lock_ttl_s=args.lock_ttl, overwrite=args.overwrite, dry_run=args.dry_run,
        keep_generations=args.keep_generations, update_index=not args.no_index_update, regions=args.regions,
        progress=not args.no_progress)
    if args.labels:
        parse_spec(args.labels)
    summary = run_job(settings)
    if args.labels and not args.dry_run and not summary.interrupted:
        with locked(argparse.Namespace(storage_options=args.storage_options, break_lock=False,
                                       lock_ttl=args.lock_ttl), args.output) as folder:
            save_spec(folder, args.labels)
    print(summary.line())
    for kind, ids in summary.changed_ids.items():
        if ids:
            print(f"  {kind}: " + ", ".join(ids) + (" ..." if len(ids) >= 10 else ""))
    for example in summary.error_examples:
        print(f"  error row: {example}")
    return 130 if summary.interrupted else 0


def run_import(args: argparse.Namespace) -> int:
    manifest = import_vectors(args.vectors, args.output, id_column=args.id_column, vector_column=args.vector_column,
                              ids=args.ids, input=args.input, layer=args.layer, shard_rows=args.shard_size,
                              overwrite=args.overwrite, break_lock=args.break_lock, lock_ttl_s=args.lock_ttl,
                              storage_options=args.storage_options)
    summary = {"output": args.output, "vectors": manifest.rows, "layer": args.layer, "dim": manifest.dims[args.layer],
               "shards": len(manifest.parts), "input": manifest.input or None, "generation": manifest.generation}
    return report(args, summary, lambda s: [
        f"imported {s['vectors']} vectors ({s['dim']}-d, as layer {s['layer']}) into {s['output']} in {s['shards']} "
        f"shards" + (f"; images at {s['input']}" if s["input"] else "; no --input: thumbnails, quality and "
                     "calibration cannot run"),
        f"next: byol-embed index {s['output']} && byol-embed dedup {s['output']}"])
