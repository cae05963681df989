"""The results contract: every file a curation command writes for others to read, declared once.

A :class:`Result` gives a result's table (Parquet in ``EMB/curation/``), its columns with their types and meaning,
the kinds a row may have, the order of its rows, its summary (JSON, with the folder's generation it was made
from), the plain lists beside it, and how it is known to be stale. :func:`write_result` is the one writer and
:class:`ResultReader` the one reader. The CLI names the files it wrote from these declarations, the server's
response models take their kinds from them, and ``docs/reference/results.md`` is generated from them
(``python -m curation.results``; a test keeps the page current).

Tables are written in row groups of ``PAGE_ROWS`` rows, in the order the page shows them, so a page of rows is
one or two row groups read, never the whole table: a server pages a million rows in bounded memory.

The declarations need nothing but the standard library (a server without the search extra imports them); the
writer and the reader need pyarrow (the search extra), imported where they run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.folder import CURATION, QUALITY_STATS
from storage.store import Store, as_store

PAGE_ROWS = 2048  # rows per row group: a page of up to 500 rows reads one or two of them
MAP_SAMPLE = 100_000  # points the page's map draws at most (a canvas draws 100 k smoothly)


ARROW_TYPES = ("string", "float32", "int64", "int32", "bool", "list<string>", "list<float32>")


def arrow_type(name: str):
    """The pyarrow type of a declared column type (one of ``ARROW_TYPES``)."""
    import pyarrow as pa  # the search extra

    if name == "list<string>":
        return pa.list_(pa.string())
    if name == "list<float32>":
        return pa.list_(pa.float32())
    return {"string": pa.string(), "float32": pa.float32(), "int64": pa.int64(), "int32": pa.int32(),
            "bool": pa.bool_()}[name]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of ARROW_TYPES
    description: str
    optional: bool = False  # may be missing from files written before it existed (read as nulls)

    @property
    def arrow(self):
        return arrow_type(self.type)


@dataclass(frozen=True)
class Result:
    """One result of one command: where it lives, what it holds, and when it no longer holds."""

    name: str  # the key, and the server's route /curation/<name> where it has one
    command: str  # the byol-embed command that writes it
    description: str
    table: str | None  # Parquet file name in curation/ (None: the summary alone)
    summary: str  # JSON file name in curation/: what was done, and on which generation
    columns: tuple[Column, ...] = ()
    kinds: tuple[str, ...] = ()  # the values the `kind` column may take
    order: str = ""  # the rows' order, in words
    lists: tuple[str, ...] = ()  # plain files beside it, one id a line
    generation_key: str | None = "generation"  # the summary's field of the generation it was made from (None: none)
    # how it is known to be stale, beyond its generation (the calibration: other weights)
    stale_when: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = field(default=None, compare=False)

    @property
    def schema(self):
        """The table's ``pyarrow.Schema``, each column's description in its field metadata."""
        import pyarrow as pa  # the search extra

        return pa.schema([pa.field(c.name, c.arrow, metadata={"description": c.description}) for c in self.columns])

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def again(self, location: str) -> str:
        """The command that makes this result again."""
        if self.command == "leaks":
            return f"byol-embed leaks OTHER_FOLDER {location}"
        return f"byol-embed {self.command} {location}"

    def stale(self, summary: dict[str, Any], folder: dict[str, Any], location: str) -> str | None:
        """Why a result whose summary is ``summary`` no longer describes the folder (``folder``: its ``generation``
        and ``weights_sha256``), or None while it does."""
        if self.stale_when is not None:
            why = self.stale_when(summary, folder)
            if why:
                return why
        made = summary.get(self.generation_key) if self.generation_key else None
        if made is not None and folder.get("generation") is not None and made < folder["generation"]:
            return (f"made from generation {made}; the folder is at generation {folder['generation']} (run "
                    f"`{self.again(location)}` again)")
        return None


def _other_weights(summary: dict[str, Any], folder: dict[str, Any]) -> str | None:
    weights = folder.get("weights_sha256")
    measured = {entry.get("weights_sha256") for entry in summary.values() if isinstance(entry, dict)}
    if weights and measured and weights not in measured:
        return "measured with other weights than the folder's model; it is not used (run `byol-embed calibrate`)"
    return None


def _c(name: str, type_: str, description: str, optional: bool = False) -> Column:
    return Column(name, type_, description, optional)


STR, F32, I64, I32, BOOL, STRINGS, FLOATS = "string", "float32", "int64", "int32", "bool", "list<string>", "list<float32>"
ID = _c("id", STR, "the image's id in the folder")
PATH = _c("path", STR, "where the image was read from")

DUPLICATES = Result(
    "duplicates", "dedup", "every member of every exact or near-duplicate group", "duplicates.parquet",
    "duplicates.json",
    (_c("group", I64, "the group's number (0, 1, ...)"), ID, PATH,
     _c("representative", STR, "the group's centre: the member with the most near-duplicate edges"),
     _c("similarity", F32, "cosine to the representative (1 for exact copies)"),
     _c("kind", STR, "exact: the same bytes as another member; near: similar pixels"),
     _c("remove", BOOL, "true for every member but the one kept (dedup --keep)", optional=True)),
    kinds=("exact", "near"), order="by group, the representative first, then by row in the folder",
    lists=("keep.txt", "remove.txt"))
DUPLICATE_GROUPS = Result(
    "duplicate_groups", "dedup", "one row per duplicate group, for paging the groups", "duplicate_groups.parquet",
    "duplicates.json",
    (_c("group", I64, "the group's number"), _c("representative", STR, "the group's centre"),
     _c("kept", STR, "the member kept by the --keep rule"), _c("size", I64, "members"),
     _c("exact", I64, "members that are byte copies of another member"),
     _c("first", I64, "the row of its first member in duplicates.parquet")),
    order="by group")
NN_SIMILARITY = Result("nn_similarity", "dedup", "the histogram of each image's nearest-neighbour cosine",
                       None, "nn_similarity.json")
OUTLIERS = Result(
    "outliers", "outliers", "every image scored by how unusual it is, and the broken ones", "outliers.parquet",
    "outliers.json",
    (ID, PATH, _c("score", F32, "1 - mean cosine to the k nearest non-duplicates (null: broken)"),
     _c("percentile", F32, "100: the most unusual"), _c("rank", I64, "1: shown first (null: broken)"),
     _c("kind", STR, "embedded; no content (its pixels hold no picture: flat, noise); broken (could not be "
                     "embedded)"),
     _c("reasons", STRINGS, "the quality flags that make it 'no content'", optional=True),
     _c("error", STR, "why a broken image could not be embedded")),
    kinds=("no content", "embedded", "broken"), order="no content first, then by score, most unusual first; broken "
                                                    "last")
LEAKS = Result(
    "leaks", "leaks", "images of this folder (B) that are copies of images of another (A)", "leaks.parquet",
    "leaks.json",
    (ID, PATH, _c("id_a", STR, "the image of A it is a copy of"), _c("path_a", STR, "where A's image was read"),
     _c("similarity", F32, "cosine to A's image (1 for exact copies)"),
     _c("kind", STR, "exact (the same bytes) or near"),
     _c("locator_a", STR, "where A's image's bytes are (for its thumbnail)", optional=True)),
    kinds=("exact", "near"), order="exact first, then by similarity", lists=("leaks_clean.txt",))
CALIBRATION = Result("calibration", "calibrate", "the near-duplicate threshold measured on the folder's own images, "
                     "per layer", None, "calibration.json", generation_key=None, stale_when=_other_weights)
QUALITY = Result(
    "quality", "quality", "each image's statistics and quality flags", "quality.parquet", "quality.json",
    (ID, PATH, *(_c(name, F32, f"the image's {name} (see the quality command)") for name in QUALITY_STATS),
     _c("reasons", STRINGS, "the flags: dark, overexposed, blurry, low information, noise, odd size, odd "
                                  "aspect"),
     _c("flagged", BOOL, "any reason")),
    order="the folder's order")
LABELS = Result(
    "labels", "labels", "labelled images whose neighbours suggest another label", "labels.parquet", "labels.json",
    (ID, PATH, _c("label", STR, "the given label (null: none)"), _c("suggested", STR, "the neighbours' label"),
     _c("score", F32, "how strongly the neighbours disagree, 0..1"), _c("rank", I64, "1: the most likely wrong"),
     _c("class_outlier", F32, "1 - cosine to the class's mean direction"),
     _c("class_outlier_percentile", F32, "100: the most unusual of its class")),
    order="by score, most likely wrong first")
SELECTION = Result(
    "selection", "select", "a subset worth labelling, in the order picked", "selection.parquet", "selection.json",
    (ID, PATH, _c("order", I64, "1: picked first"),
     _c("distance", F32, "diverse, balanced: distance to the earlier picks when picked", optional=True),
     _c("density", F32, "typical: mean cosine to its k nearest neighbours", optional=True),
     _c("group", STR, "balanced: its label or map cluster")),
    order="the order picked")
MAP = Result(
    "map", "map", "every image's 2-D coordinates and k-means cluster", "map.parquet", "map.json",
    (ID, PATH, _c("x", F32, "in [-1, 1]"), _c("y", F32, "in [-1, 1]"), _c("cluster", I32, "k-means cluster")),
    order="the folder's order")
MAP_POINTS = Result(
    "map_sample", "map", f"the points the page draws: all up to {MAP_SAMPLE:,}, else an even sample, with the "
    "labels and quality flags joined", "map_sample.parquet", "map.json",
    (ID, _c("x", F32, "in [-1, 1]"), _c("y", F32, "in [-1, 1]"), _c("cluster", I32, "k-means cluster"),
     _c("label", STR, "the folder's label, if it has labels"),
     _c("flag", STR, "its quality reasons, comma-separated (byol-embed quality), if any")),
    order="the folder's order")

SHARED_PARTS = Result(
    "shared_parts", "shared", "pairs of images that share a part (a logo, a watermark, a product) without being "
    "near-duplicates as wholes (a folder embedded with run --regions)", "shared_parts.parquet", "shared_parts.json",
    (ID, PATH, _c("id_b", STR, "the other image of the pair"), _c("path_b", STR, "where it was read from"),
     _c("similarity", F32, "cosine of the best pair of regions"),
     _c("box", FLOATS, "the part in the first image: x0, y0, x1, y1 in its pixels"),
     _c("box_b", FLOATS, "the part in the other image"),
     _c("whole", F32, "cosine of the two images as wholes (below the duplicate threshold)"),
     _c("kind", STR, "shared part")),
    kinds=("shared part",), order="by similarity, highest first")

RESULTS: dict[str, Result] = {r.name: r for r in (DUPLICATES, DUPLICATE_GROUPS, NN_SIMILARITY, OUTLIERS, LEAKS,
                                                    CALIBRATION, QUALITY, LABELS, SELECTION, MAP, MAP_POINTS,
                                                    SHARED_PARTS)}


def result(name: str | Result) -> Result:
    return name if isinstance(name, Result) else RESULTS[name]


def curation_store(folder: str | Path | Store) -> Store:
    return as_store(folder).child(CURATION)


def as_table(declared: Result, columns: dict[str, Any] | Any) -> Any:
    """``columns`` as a table of the declared schema: every declared column present (an optional one missing is
    nulls), cast to its type, no other column, and every ``kind`` one of the declared kinds."""
    import pyarrow as pa  # the search extra

    if isinstance(columns, pa.Table):
        columns = {name: columns.column(name) for name in columns.column_names}
    unknown = set(columns) - {c.name for c in declared.columns}
    if unknown:
        raise ValueError(f"{declared.name}: columns {sorted(unknown)} are not declared in curation/results.py")
    n = next((len(v) for v in columns.values() if v is not None), 0)
    arrays = []
    for c in declared.columns:
        if c.name not in columns and not c.optional:
            raise ValueError(f"{declared.name}: column {c.name!r} is missing")
        value = columns.get(c.name)
        if value is None:  # an optional column not written, or a column the folder has no values for
            arrays.append(pa.nulls(n, c.arrow))
            continue
        arrays.append(value.cast(c.arrow) if isinstance(value, (pa.Array, pa.ChunkedArray))
                      else pa.array(value, c.arrow, from_pandas=True))  # NaN: null
    table = pa.Table.from_arrays(arrays, schema=declared.schema)
    if declared.kinds and table.num_rows:
        seen = set(table.column("kind").unique().to_pylist())
        if not seen <= set(declared.kinds):
            raise ValueError(f"{declared.name}: kinds {sorted(seen - set(declared.kinds))} are not declared")
    return table


def write_result(folder: str | Path | Store, name: str | Result, columns: dict[str, Any] | Any | None,
                 summary: dict[str, Any] | None) -> None:
    """Write a result whole: its table (``columns``: a dict of arrays or a ``pyarrow.Table``; in row groups of
    ``PAGE_ROWS``, one object on object storage, an atomic rename on disk), then its summary (a reader that finds
    the summary finds the table it describes)."""
    import pyarrow as pa  # the search extra
    import pyarrow.parquet as pq

    declared = result(name)
    out = curation_store(folder)
    if declared.table is not None and columns is not None:
        table = as_table(declared, columns)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=PAGE_ROWS)
        out.write_bytes(declared.table, sink.getvalue().to_pybytes())
    if summary is not None:
        out.write_text(declared.summary, json.dumps({"result": declared.name, **summary}, indent=1) + "\n")


def write_list(folder: str | Path | Store, name: str, ids: list[str]) -> None:
    """One of a result's plain lists (one id a line)."""
    curation_store(folder).write_text(name, "".join(i + "\n" for i in ids))


class ResultReader:
    """One result of a folder (local or remote), read a page at a time.

    ``page(offset, limit)`` reads only the row groups that hold those rows; ``read()`` the whole table (the
    commands' own use, and the map's bounded sample); ``summary()`` its JSON. Columns a file of an older version
    lacks come back as nulls."""

    def __init__(self, folder: str | Path | Store, name: str | Result) -> None:
        self.declared = result(name)
        self.store = curation_store(folder)
        self._parquet = None  # opened once per reader: its footer parsed once however many pages are read

    @property
    def exists(self) -> bool:
        name = self.declared.table or self.declared.summary
        return self.store.exists(name)

    def summary(self) -> dict[str, Any]:
        """The summary; {} where there is none (or it cannot be parsed)."""
        try:
            return json.loads(self.store.read_text(self.declared.summary))
        except (FileNotFoundError, OSError, ValueError):
            return {}

    def _file(self):
        import pyarrow.parquet as pq  # the search extra

        if self.declared.table is None:
            raise ValueError(f"{self.declared.name} has no table")
        if self._parquet is None:
            try:
                self._parquet = pq.ParquetFile(self.store.path(self.declared.table), filesystem=self.store.fs)
            except (FileNotFoundError, IsADirectoryError):
                raise FileNotFoundError(f"{self.store}/{self.declared.table}") from None
        return self._parquet

    def count(self) -> int:
        return self._file().metadata.num_rows

    def page(self, offset: int, limit: int, columns: list[str] | None = None) -> tuple[Any, int]:
        """Rows ``[offset, offset + limit)`` and the table's row count, reading only the row groups that hold
        them."""
        parquet = self._file()
        meta = parquet.metadata
        total = meta.num_rows
        if offset >= total or limit <= 0:
            return self._complete(parquet.schema_arrow.empty_table(), columns), total
        groups, start, skip = [], 0, 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            if start + rows > offset and start < offset + limit:
                if not groups:
                    skip = offset - start
                groups.append(g)
            start += rows
            if start >= offset + limit:
                break
        names = self._present(parquet, columns)
        table = parquet.read_row_groups(groups, columns=names).slice(skip, limit)
        return self._complete(table, columns), total

    def read(self, columns: list[str] | None = None) -> Any:
        parquet = self._file()
        return self._complete(parquet.read(columns=self._present(parquet, columns)), columns)

    def row_groups(self, columns: list[str]) -> Any:
        """The table a row group at a time (an iterator of tables): a whole column streamed in bounded memory."""
        parquet = self._file()
        names = self._present(parquet, columns)
        for group in range(parquet.metadata.num_row_groups):
            yield self._complete(parquet.read_row_group(group, columns=names), columns)

    def lookup(self, column: str, value: str, columns: list[str]) -> dict[str, Any] | None:
        """The first row whose ``column`` equals ``value`` (a filtered read: the whole column in Arrow, transient,
        never as Python objects)."""
        import pyarrow.compute as pc  # the search extra

        parquet = self._file()
        names = self._present(parquet, [column, *columns])
        table = parquet.read(columns=names)
        hits = pc.indices_nonzero(pc.equal(table.column(column), value))
        if len(hits) == 0:
            return None
        row = self._complete(table.slice(hits[0].as_py(), 1), [column, *columns])
        return {name: row.column(name)[0].as_py() for name in row.column_names}

    def _present(self, parquet: Any, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        have = set(parquet.schema_arrow.names)
        return [c for c in columns if c in have]

    def _complete(self, table: Any, columns: list[str] | None) -> Any:
        """Declared columns that an older file lacks, as nulls."""
        import pyarrow as pa  # the search extra

        wanted = columns or [c.name for c in self.declared.columns]
        for name in wanted:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, self.declared.column(name).arrow))
        return table.select(wanted)


def reference() -> str:
    """The reference page of every result (docs/reference/results.md)."""
    lines = ["# Curation results", "",
             "Generated from `curation/results.py` (`python -m curation.results > docs/reference/results.md`): "
             "every file the curation commands write into `EMB/curation/`, with its columns. Each table is Parquet, "
             f"written in row groups of {PAGE_ROWS} rows in the order the page shows them; each summary is JSON and "
             "records the folder's generation it was made from (a later generation makes the result stale: the "
             "page and `GET /curation` say so).", ""]
    for r in RESULTS.values():
        lines += [f"## `{r.name}`", "", f"{r.description[0].upper()}{r.description[1:]}. Written by "
                  f"`byol-embed {r.command}`.", ""]
        files = ([f"`{r.table}`"] if r.table else []) + [f"`{r.summary}` (summary)"] + [f"`{n}`" for n in r.lists]
        lines += [f"- files: {', '.join(files)}"]
        if r.order:
            lines += [f"- order: {r.order}"]
        if r.kinds:
            lines += [f"- kinds: {', '.join(f'`{k}`' for k in r.kinds)}"]
        if r.columns:
            lines += ["", "| column | type | meaning |", "|---|---|---|"]
            lines += [f"| `{c.name}` | {c.type} | {c.description}{' (newer files only)' if c.optional else ''} |"
                      for c in r.columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(reference())
