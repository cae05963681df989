"""``byol-embed``: embed a whole dataset into Parquet shards, index it with FAISS, search it, curate it.

    byol-embed run --model org/byol-r50-ep200 --input /data/images --output emb/ --layers avgpool,feature5
    byol-embed run ... --engine ray --ray-address HOST:PORT --workers 8        # on an existing Ray cluster
    byol-embed run ... --input 's3://bucket/shards/train-{000000..000999}.tar' --output s3://bucket/emb/
    byol-embed import vectors.parquet --output emb/ [--input /data/images]    # vectors you already have
    byol-embed index emb/ --layer avgpool [--factory "IVF4096,PQ64"]
    byol-embed search emb/ --image query.jpg -k 10 [--json]
    byol-embed search emb/ --id cats/001.jpg -k 10                            # near-duplicates of a set image
    byol-embed calibrate emb/ [--precision 0.95]                              # this model's duplicate threshold
    byol-embed dedup emb/ [--keep largest] [--write-lists]                    # exact + near-duplicate groups
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
at a shard boundary. On the ONNX backend no torch is imported. Each command's --help explains its options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from curation.errors import CurationError
from hub.errors import HubError
from service.embed.cli import curation, run, search
from service.embed.errors import EmbedJobError
from storage.errors import DataLayerError

GROUPS = (run, search, curation)  # each adds its commands, every one with its handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol-embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # this project's debug lines only: a storage client's would show request headers
        for name in ("curation", "hub", "service", "storage"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        return args.handler(args)
    except (HubError, DataLayerError, EmbedJobError, CurationError, OSError) as err:
        print(f"byol-embed: error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:  # a runtime setting of the wrong type (--max-pixels x)
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())
        print(f"byol-embed: error: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
