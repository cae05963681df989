"""Where images come from: folders, path lists, WebDataset ``.tar`` shards and Parquet path columns.

Torch-free and shared: the trainer reads its unlabeled data through it, and ``byol-embed`` lists a whole
dataset with it. Every item has a stable ``id`` (the path relative to the input folder or as listed,
``<tar file>/<key>`` for tar shards, the row's value for Parquet input) and a ``path`` (absolute path, or the tar
file and member), and ``read(i)`` returns its encoded bytes. Tar shards are indexed once and read by offset, so
they are random-access (and resumable) like files.

    >>> source = open_source("photos/")          # doctest: +SKIP
    >>> source.item_id(0), len(source.read(0))   # doctest: +SKIP
    ('cats/001.jpg', 48213)
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

from hub.errors import HubError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
LIST_SUFFIXES = (".txt", ".lst", ".csv")


class DataError(HubError):
    """A data source that does not exist, holds no images, or cannot be read."""


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageSource:
    """Random access to encoded images: ``len()``, ``read(i) -> bytes``, ``item_id(i)``, ``item_path(i)``."""

    kind = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> bytes:
        raise NotImplementedError

    def item_id(self, index: int) -> str:
        raise NotImplementedError

    def item_path(self, index: int) -> str:
        raise NotImplementedError

    def positions(self) -> dict[str, int]:
        """id -> index: to read items again by the ids a job recorded."""
        return {self.item_id(i): i for i in range(len(self))}

    def fingerprint(self) -> str:
        """A digest of what the source lists (ids, sizes, modification times): it changes when the input does."""
        raise NotImplementedError


def _stat_digest(paths: list[Path], ids: list[str]) -> str:
    digest = hashlib.sha256()
    for item_id, path in zip(ids, paths):
        try:
            st = path.stat()
            digest.update(f"{item_id}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{item_id}\0missing\n".encode())
    return digest.hexdigest()


class FileSource(ImageSource):
    """Image files; ``ids`` default to the paths as given."""

    kind = "files"

    def __init__(self, paths: list[Path], ids: list[str] | None = None) -> None:
        self.paths = paths
        self.ids = ids if ids is not None else [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        return self.paths[index].read_bytes()

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return str(self.paths[index].resolve())

    def fingerprint(self) -> str:
        return _stat_digest(self.paths, self.ids)


class TarSource(ImageSource):
    """Image members of ``.tar`` shards, indexed once and read by (shard, offset, size).

    The id of a member is ``<tar file name>/<key>`` where the key is the member's name without its extension
    (WebDataset's ``__key__``); a key with two image members keeps the extension to stay unique.
    """

    kind = "tar"

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self.index: list[tuple[int, int, int]] = []
        self.names: list[str] = []
        for s, shard in enumerate(shards):
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isfile() and is_image(member.name):
                        self.index.append((s, member.offset_data, member.size))
                        self.names.append(member.name)
        keys = [f"{shards[s].name}/{os.path.splitext(name)[0]}" for (s, _, _), name in zip(self.index, self.names)]
        seen: dict[str, int] = {}
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
        self.ids = [key if seen[key] == 1 else f"{shards[s].name}/{name}"
                    for key, (s, _, _), name in zip(keys, self.index, self.names)]
        self._handles: dict[int, io.BufferedReader] = {}

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> bytes:
        shard, offset, size = self.index[index]
        handle = self._handles.get(shard)
        if handle is None:  # one handle per shard per worker process
            handle = self._handles[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        handle.seek(offset)
        return handle.read(size)

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return f"{self.shards[self.index[index][0]].resolve()}/{self.names[index]}"

    def fingerprint(self) -> str:
        return _stat_digest(self.shards, [s.name for s in self.shards]) + f":{len(self)}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}


def _image_column(schema, name: str, column: str | None) -> tuple[str, str]:
    """The column holding image bytes and how: ``struct`` (Hugging Face ``Image``: struct<bytes, path>) or
    ``binary``; ``column`` names it, else it is found (one such column, or the one named ``image``)."""
    import pyarrow as pa

    def how(field) -> str | None:
        def binary(t) -> bool:
            return pa.types.is_binary(t) or pa.types.is_large_binary(t)

        t = field.type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and binary(t.field("bytes").type):
            return "struct"
        return "binary" if binary(t) else None

    if column is not None:
        if column not in schema.names:
            raise DataError(f"{name} has no column {column!r}; its columns: {schema.names}")
        kind = how(schema.field(column))
        if kind is None:
            raise DataError(f"{name}: column {column!r} is {schema.field(column).type}, not image bytes (a binary "
                            "column or a Hugging Face Image struct<bytes, path>)")
        return column, kind
    found = [(f.name, how(f)) for f in schema if how(f)]
    if len(found) == 1:
        return found[0]
    named = [c for c in found if c[0] == "image"]
    if named:
        return named[0]
    if not found:
        raise DataError(f"{name} has no column of image bytes (a binary column or a Hugging Face Image "
                        f"struct<bytes, path>); its columns: {schema.names}")
    raise DataError(f"{name} has several image columns {[c[0] for c in found]}; pass --image-column")


class ParquetImageSource(ImageSource):
    """Images stored inside Parquet files: a Hugging Face ``Image`` column (struct<bytes, path>, as the Hub's
    image datasets are stored) or a plain binary column.

    Indexed once by (file, row group, row): a read loads one row group's image column, kept per thread until
    another row group is asked for, so no worker ever holds a whole file. Ids are ``--id-column``'s values, else
    ``<file name>/<row>``.
    """

    kind = "parquet-images"

    def __init__(self, files: list[Path], image_column: str | None = None, id_column: str | None = None) -> None:
        import pyarrow.parquet as pq

        self.files = files
        self.index: list[tuple[int, int, int, int]] = []  # file, row group, row in it, row in the file
        self.ids: list[str] = []
        self.column, self.how = None, None
        for f, path in enumerate(files):
            meta = pq.ParquetFile(path)
            column, how = _image_column(meta.schema_arrow, path.name, image_column)
            if self.column not in (None, column):
                raise DataError(f"{path.name}: its image column is {column!r}, {files[0].name}'s is {self.column!r}")
            self.column, self.how = column, how
            if id_column is not None:
                if id_column not in meta.schema_arrow.names:
                    raise DataError(f"{path.name} has no column {id_column!r}; its columns: {meta.schema_arrow.names}")
                ids = [str(v) for v in pq.read_table(path, columns=[id_column]).column(id_column).to_pylist()]
            else:
                ids = [f"{path.name}/{row}" for row in range(meta.metadata.num_rows)]
            self.ids += ids
            start = 0
            for group in range(meta.num_row_groups):
                rows = meta.metadata.row_group(group).num_rows
                self.index += [(f, group, row, start + row) for row in range(rows)]
                start += rows
        if len(set(self.ids)) != len(self.ids):
            raise DataError(f"--id-column {id_column!r} has repeated values; ids must be unique")
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> bytes:
        import pyarrow.parquet as pq

        f, group, row, _ = self.index[index]
        local = self._local
        if getattr(local, "key", None) != (f, group):
            table = pq.ParquetFile(self.files[f]).read_row_group(group, columns=[self.column])
            column = table.column(0).combine_chunks()
            if self.how == "struct":
                paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else None
                local.values, local.paths = column.field("bytes").to_pylist(), paths
            else:
                local.values, local.paths = column.to_pylist(), None
            local.key = (f, group)
        data = local.values[row]
        if data is None:  # a Hugging Face Image with a path and no bytes: the file beside the Parquet
            path = local.paths[row] if local.paths else None
            if not path:
                raise OSError(f"row {row} of {self.files[f].name} has no image bytes")
            return (self.files[f].parent / path).read_bytes()
        return data

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        f, _, _, row = self.index[index]
        return f"{self.files[f].resolve()}#row={row}"

    def fingerprint(self) -> str:
        return _stat_digest(self.files, [p.name for p in self.files]) + f":{self.column}:{len(self)}"

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _has_image_column(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        _image_column(pq.read_schema(path), path.name, None)
    except DataError:
        return False
    return True


def _parquet_source(path: Path, column: str | None) -> FileSource:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading a Parquet list needs pyarrow (pip install 'byol[embed]')") from None
    schema = pq.read_schema(path)
    strings = [f.name for f in schema if str(f.type) in ("string", "large_string")]
    if column is None:
        if "path" in schema.names:
            column = "path"
        else:
            raise DataError(f"{path.name}: which column holds the image paths? pass --path-column (string "
                            f"columns: {strings})")
    if column not in schema.names:
        raise DataError(f"{path.name} has no column {column!r}; string columns: {strings}")
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    if any(v is None for v in values):
        raise DataError(f"{path.name}: column {column!r} has empty rows")
    paths = [Path(v) if Path(v).is_absolute() else path.parent / v for v in values]
    return FileSource(paths, ids=[str(v) for v in values])


def open_source(spec: str | Path, *, path_column: str | None = None, image_column: str | None = None,
                id_column: str | None = None) -> ImageSource:
    """``spec``: a folder (searched recursively, sorted; ids relative to it), a ``.txt`` list of paths
    (relative to the list's folder; ids as listed), ``.tar`` shards (a file, a folder of shards, or a glob such
    as ``shards/train-*.tar``), or Parquet: a file, a glob or a folder of ``.parquet`` files with the image bytes
    inside (a Hugging Face ``Image`` column or a binary one, found or named by ``image_column``; ids from
    ``id_column`` or ``<file>/<row>``), or a file with a path column (``path_column``, default ``path``)."""
    spec = str(spec)
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        shards = sorted(Path(p) for p in glob.glob(spec))
        if not shards:
            raise DataError(f"no files match {spec!r}")
        if all(p.suffix == ".parquet" for p in shards):
            return ParquetImageSource(shards, image_column, id_column)
        return TarSource(shards)
    if path.is_dir() and not any(path.glob("*.tar")) and any(path.glob("*.parquet")) \
            and not any(is_image(p.name) for p in path.iterdir()):
        return ParquetImageSource(sorted(path.glob("*.parquet")), image_column, id_column)
    if path.is_file() and path.suffix == ".parquet" and path_column is None \
            and (image_column is not None or _has_image_column(path)):
        return ParquetImageSource([path], image_column, id_column)
    if not path.exists():
        raise DataError(f"data path {spec} does not exist; give a folder of images, a .txt list, .tar shards or a "
                        ".parquet file with a path column")
    if path.is_file() and path.suffix == ".tar":
        return TarSource([path])
    if path.is_file() and path.suffix == ".parquet":
        return _parquet_source(path, path_column)
    if path.is_file() and path.suffix in LIST_SUFFIXES:
        paths, ids = [], []
        for line in path.read_text().splitlines():
            entry = line.strip().split()[0] if line.strip() else ""
            if entry and not entry.startswith("#"):
                paths.append((path.parent / entry) if not Path(entry).is_absolute() else Path(entry))
                ids.append(entry)
        return FileSource(paths, ids)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if shards:
            return TarSource(shards)
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p.name))
        return FileSource(files, ids=[p.relative_to(path).as_posix() for p in files])
    raise DataError(f"cannot read {spec}: expected a folder, a .txt list of images, .tar shards or a .parquet file")
