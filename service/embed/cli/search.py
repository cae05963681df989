"""The index and its queries: ``index`` (build a FAISS index, or bring it to the folder's generation) and
``search`` (nearest neighbours of an image or of an id)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curation.regions import parse_box
from hub.preprocess import decode_image
from service.embed.cli.common import add_lock_options, add_storage, locked, parent
from service.embed.errors import EmbedJobError
from service.embed.index import GROWTH_LIMIT, LoadedIndex, build_index, has_index, update_index
from service.embed.model import FolderModel
from service.embed.region_index import (
    REGION_INDEX,
    LoadedRegionIndex,
    build_region_index,
    has_region_index,
    update_region_index,
)
from storage.folder import Manifest
from storage.imported import is_imported
from storage.location import join


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="build a FAISS index over one layer of an output folder, or bring it to the "
                                     "folder's generation", parents=[parent(add_storage, add_lock_options)])
    p.set_defaults(handler=index)
    p.add_argument("folder", help="output folder of `byol-embed run` or `import` (a path or a URL)")
    p.add_argument("--layer", default=None,
                   help="the embedded layer to index (default: avgpool, else the folder's only layer)")
    p.add_argument("--factory", default=None,
                   help="FAISS index_factory string: Flat (exact, default for a new index) or e.g. 'IVF4096,PQ64', "
                        "'HNSW32' for large sets (trained on a sample; IVF needs ~39 x lists vectors); inner product "
                        "over L2-normalized vectors (default: the existing index's)")
    p.add_argument("--train-size", type=int, default=0, help="training sample size (default: automatic)")
    p.add_argument("--no-regions", action="store_true",
                   help="leave the region index alone (by default, where the folder has regions, `index` also builds "
                        "the region index, or brings it to the folder's generation)")
    p.add_argument("--rebuild", action="store_true",
                   help="build the index anew even where the existing one could follow the folder in place (by "
                        "default an index of the same layer and factory is updated: rows of gone and changed images "
                        "removed, new ones added; IVF retrained only once the set has grown past "
                        f"{GROWTH_LIMIT:g}x what it was trained on)")

    p = sub.add_parser("search", help="nearest neighbours of an image, or of an image already in the set",
                       parents=[parent(add_storage)])
    p.set_defaults(handler=search)
    p.add_argument("folder", help="output folder with an index (`byol-embed index`); a URL's index is copied once "
                                  "into a local cache")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file: embedded with the manifest's model and settings")
    query.add_argument("--id", dest="item_id", help="an id in the set (its own row is left out of the results)")
    p.add_argument("--regions", action="store_true",
                   help="search inside images: the images that hold the query part (--box on --image, else the "
                        "whole --image) in one of their regions, each with the box that matched (needs a folder "
                        "embedded with `run --regions` and its region index)")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                   help="with --regions: the part of --image to look for, in pixels, or in fractions of the image's "
                        "width and height when all four are at most 1 (default: the whole image)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query (default: FAISS's; region "
                                                            "index: 64)")
    p.add_argument("--json", action="store_true",
                   help='print {"results": [{"id", "path", "score"}, ...]}; with --regions each result also has '
                        '"box": [x0, y0, x1, y1] in that image\'s pixels')


def index(args: argparse.Namespace) -> int:
    regions = None
    with locked(args) as folder:
        old = json.loads(folder.read_text("index/index.json")) if has_index(folder) else None
        layer = args.layer or (old["layer"] if old else None)
        same = old is not None and (old["layer"], old["factory"]) == (layer, args.factory or old["factory"])
        if same and not args.rebuild:
            meta = update_index(folder, train_size=args.train_size)
            action = meta["action"]
        else:
            factory = args.factory or "Flat"
            meta = build_index(folder, layer=layer, factory=factory, train_size=args.train_size)
            action = ("built" if old is None else "rebuilt (--rebuild)" if same else
                      f"rebuilt (it indexed {old['layer']} with {old['factory']}; asked: {meta['layer']} with "
                      f"{factory})")
        if Manifest.load(folder).regions and not args.no_regions:
            regions = (update_region_index(folder) if has_region_index(folder) and not args.rebuild else
                       {**build_region_index(folder, progress=sys.stderr.isatty()), "action": "built"})
    print(f"index {action}: {meta['count']} vectors of {meta['layer']} ({meta['dim']}-d, {meta['factory']}, "
          f"cosine), generation {meta.get('generation')} -> {join(args.folder, 'index')}")
    if regions is not None:
        print(f"region index {regions['action']}: {regions['regions']} regions of {regions['images']} images "
              f"({regions['layer']}, {regions['windows']} windows an image, {regions['dim']}-d, {regions['factory']}), "
              f"generation {regions.get('generation')} -> {join(args.folder, REGION_INDEX)}")
    return 0


def search(args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise EmbedJobError(f"-k must be positive, got {args.k}")
    if args.box is not None and not args.regions:
        raise EmbedJobError("--box names a part to look for inside images: add --regions")
    if args.regions:
        return search_regions(args)
    loaded = LoadedIndex.open(args.folder, nprobe=args.nprobe, storage_options=args.storage_options)
    if args.item_id is not None:
        results = loaded.search(loaded.vector_of(args.item_id), args.k, exclude=args.item_id)
    else:
        if is_imported(loaded.manifest):
            raise EmbedJobError("this folder's vectors were imported: no model made them, so an image cannot be "
                                "embedded like them; query by --id")
        image = decode_image(Path(args.image).read_bytes())
        results = loaded.search(FolderModel(loaded.manifest).embed([image], loaded.meta["layer"]), args.k)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        for rank, r in enumerate(results, 1):
            print(f"{rank:>3}  {r['score']:.4f}  {r['id']}  {r['path']}")
    return 0


def search_regions(args: argparse.Namespace) -> int:
    if args.image is None:
        raise EmbedJobError("--regions looks for a part of --image (a query by --id compares whole images)")
    try:
        box = parse_box(args.box)
    except ValueError as err:
        raise EmbedJobError(f"--{err}") from None
    loaded = LoadedRegionIndex.open(args.folder, nprobe=args.nprobe, storage_options=args.storage_options)
    image = decode_image(Path(args.image).read_bytes())
    model = FolderModel(loaded.manifest, maps=(loaded.layer,))
    try:
        parts = model.region_parts(image, box)
    except ValueError as err:
        raise EmbedJobError(f"--box: {err}") from None
    results = loaded.search(parts, args.k)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        for rank, r in enumerate(results, 1):
            box_text = ",".join(f"{v:.0f}" for v in r["box"])
            print(f"{rank:>3}  {r['score']:.4f}  {r['id']}  box {box_text}  {r['path']}")
    return 0
