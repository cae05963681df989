"""What the ``byol-embed`` commands share: parent parsers (each command takes only the options it uses), the
folder's lock, and one way of printing a result (``--json``, or lines for people)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from curation.neighbours import EXACT_LIMIT
from storage.location import add_storage_option, join
from storage.lock import LOCK_TTL_S, folder_lock
from storage.store import Store, as_store


def parent(*adders: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """A parent parser holding the options that ``adders`` add."""
    p = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(p)
    return p


def add_folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="output folder of `byol-embed run` or `import` (a path or a URL; results go to "
                                  "FOLDER/curation/)")


def add_layer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", default=None,
                   help="the embedded layer to work on (default: avgpool, else the folder's only layer)")


def add_lock_options(p: argparse.ArgumentParser) -> None:
    """The folder's lock: one writer at a time (run, import, index and the curation commands)."""
    p.add_argument("--break-lock", action="store_true",
                   help="object storage: take over the folder's lock from a run that is dead (a lock whose run is "
                        "gone from this host and container, or not renewed for its lease, is taken over without "
                        "it); the run that held it stops before its next commit")
    p.add_argument("--lock-ttl", type=float, default=LOCK_TTL_S, metavar="SECONDS",
                   help=f"object storage: the lock's lease, renewed every quarter of it; a run that cannot renew "
                        f"it for this long stops, and another may take the folder (default {LOCK_TTL_S:g})")


def add_storage(p: argparse.ArgumentParser) -> None:
    add_storage_option(p)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_knn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exact-limit", type=int, default=EXACT_LIMIT,
                   help=f"exact kNN (FAISS Flat) up to this many vectors, an IVF index beyond (default {EXACT_LIMIT})")
    p.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists probed per query beyond --exact-limit (default 16)")


@contextlib.contextmanager
def locked(args: argparse.Namespace, location: str | None = None) -> Iterator[Store]:
    """The folder (``args.folder``, or ``location``) held under its lock: a run, or another command, on the same
    folder is refused; on object storage every write is fenced."""
    folder = as_store(location or args.folder, args.storage_options)
    with folder_lock(folder, break_lock=args.break_lock, ttl_s=args.lock_ttl):
        yield folder


def report(args: argparse.Namespace, summary: dict[str, Any], lines: Callable[[dict[str, Any]], list[str]]) -> int:
    """Print ``summary`` as JSON with ``--json``, else ``lines(summary)`` for people; exit status 0."""
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        print("\n".join(lines(summary)))
    return 0


def written(folder: str, name: str | None) -> str:
    """Where a result file went, for the lines printed."""
    return join(folder, f"curation/{name}") if name else folder
