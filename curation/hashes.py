"""Exact copies: the sha256 of each image's bytes, which ``byol-embed run`` records; folders written before it did
get them by reading their images again."""

from __future__ import annotations

import hashlib

from storage.folder import Manifest, Rows, open_input
from storage.store import Store


def fill_missing_hashes(rows: Rows, store: Store, manifest: Manifest) -> int:
    """Hash the embedded rows that have no sha256 by reading their images again from the folder's input (rows
    whose image is gone stay without one); returns how many were missing. A folder of imported vectors without
    images has none to read: exact copies are then found by their vectors alone."""
    missing = [i for i, d in enumerate(rows.sha256) if d is None and rows.errors[i] is None]
    if not missing or not manifest.input:
        return 0
    source, position = open_input(store, manifest)
    for i in missing:
        j = position.get(rows.ids[i])
        if j is None:
            continue
        try:
            rows.sha256[i] = hashlib.sha256(source.read(j)).hexdigest()
        except OSError:
            pass
    return len(missing)


def groups_by_hash(digests: list[str | None]) -> list[list[int]]:
    """Positions that share a hash (two or more), each list in order, the lists by their first position."""
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest is not None:
            by_hash.setdefault(digest, []).append(i)
    return sorted((same for same in by_hash.values() if len(same) > 1), key=lambda same: same[0])
