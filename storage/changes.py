"""What changed between an embedding folder's committed generation and its input now: the plan of an append run.

An input image is *unchanged* when the listing says its file is the one recorded (the same size and version:
the modification time on disk, the ETag on object storage), or, where the listing says otherwise or nothing (a
list of paths, a touched file), when its bytes hash to the recorded sha256; it is *changed* otherwise, *added*
when its id is new. Rows of images that are gone or changed are dropped: the shards holding them are written
again without them (no image is decoded for that), or removed when nothing is left. Only the added and changed
images are read and decoded by the run (:class:`Changes.work`).

    >>> changes = plan_changes(store, Manifest.load(store), open_source("photos/"), generation=2)  # doctest: +SKIP
    >>> changes.summary()                                                                         # doctest: +SKIP
    '120 added, 3 changed, 7 dropped, 99870 unchanged (5 files read to compare their bytes)'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from storage.errors import StorageError
from storage.folder import Manifest, read_columns, rewrite_name
from storage.sources import ImageSource
from storage.store import Store

HASH_CHUNK = 32  # files read together to compare their bytes


@dataclass
class Changes:
    work: list[int]  # source positions to embed: the added and changed images, in the input's order
    added: list[str] = field(default_factory=list)  # ids
    changed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    unchanged: int = 0
    compared: int = 0  # files whose bytes were read and hashed to decide
    rewrites: list[dict[str, Any]] = field(default_factory=list)  # [{"from", "name", "drop": [rows]}]
    removed_parts: list[str] = field(default_factory=list)  # shards every row of which is dropped

    @property
    def dropped(self) -> int:
        """Rows the folder loses: those of gone and of changed images."""
        return len(self.gone) + len(self.changed)

    @property
    def empty(self) -> bool:
        return not (self.work or self.gone or self.rewrites or self.removed_parts)

    def digest(self, ids: Callable[[int], str]) -> str:
        """What identifies the plan (a rerun resumes the pending generation only when it plans the same)."""
        text = json.dumps([[ids(i) for i in self.work], self.rewrites, self.removed_parts], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "gone": len(self.gone),
                "dropped": self.dropped, "unchanged": self.unchanged, "compared": self.compared,
                "rewritten_shards": len(self.rewrites), "removed_shards": len(self.removed_parts)}

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.changed)} changed, {len(self.gone)} gone ({self.dropped} rows "
                f"dropped), {self.unchanged} unchanged ({self.compared} files read to compare their bytes); "
                f"{len(self.rewrites)} shards written again without their dropped rows, {len(self.removed_parts)} "
                "removed")


def _hashes(source: ImageSource, positions: list[int], threads: int) -> list[str | None]:
    """The sha256 of the items at ``positions`` (None where one cannot be read: it is embedded again, and its
    error recorded)."""
    chunks = [positions[i:i + HASH_CHUNK] for i in range(0, len(positions), HASH_CHUNK)]

    def digest(chunk: list[int]) -> list[str | None]:
        out: list[str | None] = []
        for value in source.read_many(chunk):
            if isinstance(value, StorageError):
                raise value
            out.append(None if isinstance(value, OSError) else hashlib.sha256(value).hexdigest())
        return out

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as pool:
        return [d for part in pool.map(digest, chunks) for d in part]


def plan_changes(store: Store, committed: Manifest, source: ImageSource, generation: int, *,
                 threads: int = 8) -> Changes:
    """Compare the input ``source`` with the folder's ``committed`` generation; ``generation``: the one to build."""
    table = read_columns(store, committed)
    old_ids = table.column("id").to_pylist()
    old_sha = table.column("sha256").to_pylist()
    old_version = table.column("version").to_pylist()
    part_of = table.column("part").to_numpy()
    row_of = table.column("row").to_numpy()
    position = {item_id: k for k, item_id in enumerate(old_ids)}
    changes = Changes(work=[])
    seen: set[int] = set()
    suspects: list[tuple[int, int]] = []  # (source position, row) whose listing does not vouch for the bytes
    for i in range(len(source)):
        item_id = source.item_id(i)
        k = position.get(item_id)
        if k is None:
            changes.added.append(item_id)
            changes.work.append(i)
            continue
        seen.add(k)
        version = old_version[k]
        if version is not None and version == source.item_version(i):
            changes.unchanged += 1
        else:
            suspects.append((i, k))
    dropped_rows: list[int] = []
    if suspects:
        digests = _hashes(source, [i for i, _ in suspects], threads)
        changes.compared = len(suspects)
        for (i, k), digest in zip(suspects, digests):
            if digest is not None and digest == old_sha[k]:
                changes.unchanged += 1
            else:
                changes.changed.append(old_ids[k])
                changes.work.append(i)
                dropped_rows.append(k)
        changes.work.sort()
    gone = [k for k in range(len(old_ids)) if k not in seen]
    changes.gone = [old_ids[k] for k in gone]
    dropped_rows += gone
    by_part: dict[int, list[int]] = {}
    for k in dropped_rows:
        by_part.setdefault(int(part_of[k]), []).append(int(row_of[k]))
    for number in sorted(by_part):
        part = committed.parts[number]
        drop = sorted(by_part[number])
        if len(drop) >= int(part["rows"]):
            changes.removed_parts.append(part["name"])
        else:
            changes.rewrites.append({"from": part["name"], "name": rewrite_name(len(changes.rewrites), generation),
                                     "drop": drop})
    return changes
