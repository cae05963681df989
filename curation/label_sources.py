"""Where a folder's labels come from (``--labels``), and each image's label read from there.

    emb/label_source.json   the folder's label source, as given to ``run --labels`` (folders written before this
                            file existed recorded it as ``emb/labels.json``: still read)
    emb/labels.csv          a CSV given as the source, kept with the folder (so it travels with it)

Sources: ``folders`` (each id's parent folder: ``cats/001.jpg`` is ``cats``), ``column:NAME`` (a column of the
Parquet input, beside the images), or a CSV file of ``id,label`` (a header row with ``id`` and ``label`` columns,
or the first two columns).
"""

from __future__ import annotations

import csv
import io
import json

from curation.errors import CurationError
from storage.folder import Manifest, open_input
from storage.sources import ParquetImageSource
from storage.store import Store, as_store

SOURCE_FILE = "label_source.json"
OLD_SOURCE_FILE = "labels.json"  # the name before label_source.json (it read like curation/labels.json)
CSV_FILE = "labels.csv"
FORMS = "folders | column:NAME | FILE.csv"


def parse_spec(spec: str) -> str:
    """Check a ``--labels`` value's form (the file or column is checked when read)."""
    if spec == "folders" or spec.startswith("column:") and len(spec) > 7 or spec.lower().endswith(".csv"):
        return spec
    raise CurationError(f"--labels {spec!r} is not a label source; accepted: folders (each id's parent folder), "
                        "column:NAME (a column of the Parquet input), or a .csv file of id,label")


def save_spec(store: Store, spec: str) -> None:
    """Record the folder's label source (a CSV's content is kept in the folder, so it travels with it)."""
    spec = parse_spec(spec)
    if spec.lower().endswith(".csv"):
        text = _read_csv_text(spec)
        _parse_csv(text, spec)  # refused now, not at the first `labels`
        store.write_text(CSV_FILE, text)
    store.write_text(SOURCE_FILE, json.dumps({"labels": spec}) + "\n")


def saved_spec(store: Store) -> str | None:
    """The folder's recorded label source, if any."""
    for name in (SOURCE_FILE, OLD_SOURCE_FILE):
        try:
            return json.loads(store.read_text(name))["labels"]
        except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _read_csv_text(spec: str) -> str:
    parent, _, name = spec.replace("\\", "/").rpartition("/")
    try:
        return as_store(parent or ".").read_text(name)
    except FileNotFoundError:
        raise CurationError(f"--labels {spec}: no such file") from None


def _parse_csv(text: str, shown: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise CurationError(f"{shown} is empty; it needs id,label rows")
    header = [h.strip().lower() for h in rows[0]]
    if "id" in header and "label" in header:
        i, j = header.index("id"), header.index("label")
        body = rows[1:]
    else:
        i, j = 0, 1
        body = rows
    out: dict[str, str] = {}
    for line, row in enumerate(body, 2 if body is not rows else 1):
        if not row:
            continue
        if len(row) <= max(i, j):
            raise CurationError(f"{shown} line {line}: {row!r} has no label column (expected id,label)")
        out[row[i].strip()] = row[j].strip()
    return out


def read_labels(store: Store, manifest: Manifest, spec: str | None, ids: list[str]) -> tuple[list[str | None], str]:
    """Each id's label (None where the source has none) and the source used."""
    spec = spec or saved_spec(store)
    if spec is None:
        raise CurationError(f"{store} has no labels: pass --labels {FORMS} (here or to `run`)")
    spec = parse_spec(spec)
    if spec == "folders":
        labels = [i.rsplit("/", 2)[-2] if "/" in i else None for i in ids]
        if all(label is None for label in labels):
            raise CurationError("--labels folders: the ids have no folders (the images sit at the input's top "
                                "level); use column:NAME or a CSV")
        return labels, spec
    if spec.startswith("column:"):
        return _column_labels(store, manifest, spec[7:], ids), spec
    text = store.read_text(CSV_FILE) if saved_spec(store) == spec and store.exists(CSV_FILE) else _read_csv_text(spec)
    table = _parse_csv(text, spec)
    labels = [table.get(i) for i in ids]
    if all(label is None for label in labels):
        raise CurationError(f"{spec}: none of its ids is in the folder (e.g. {next(iter(table), '-')!r} vs "
                            f"{ids[0] if ids else '-'!r})")
    return labels, spec


def _column_labels(store: Store, manifest: Manifest, column: str, ids: list[str]) -> list[str | None]:
    source, _ = open_input(store, manifest)
    if not isinstance(source, ParquetImageSource):
        raise CurationError(f"--labels column:{column} needs a Parquet input with the images inside; this folder's "
                            f"input {manifest.input} is {source.kind}: use folders or a CSV")
    by_id = dict(zip(source.ids, source.column_values(column)))
    return [by_id.get(i) for i in ids]
