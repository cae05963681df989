"""Where images come from: folders, path lists, WebDataset ``.tar`` shards and Parquet (paths, or the bytes).

Torch-free and shared: the trainer reads its unlabeled data through it, and ``byol-embed`` lists a whole
dataset with it. Every input is resolved once, by one decision over its filesystem's ``info``, ``find``, ``ls``
and ``glob`` (:func:`open_source`), and read through the same filesystem, so an input that works on local disk
works on object storage and the other way round.

Every item has a stable ``id`` (the path relative to the input folder or as listed, ``<tar file>/<key>`` for tar
shards, the row's value for Parquet input) and a ``path`` (absolute path, or the tar file and member), and
``read(i)`` returns its encoded bytes. Tar shards are indexed once and read by offset, so they are random-access
(and resumable) like files.

    >>> source = open_source("photos/")          # doctest: +SKIP
    >>> source.item_id(0), len(source.read(0))   # doctest: +SKIP
    ('cats/001.jpg', 48213)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tarfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage.errors import DataError, StorageError
from storage.location import (
    LocalFileSystem,
    expand_braces,
    explain,
    filesystem,
    object_version,
    on_local_disk,
    public_url,
    raise_explained,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
LIST_SUFFIXES = (".txt", ".lst", ".csv")
GROUPS_KEPT = 4  # Parquet row groups of images kept in memory per reader (shared by its threads)


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

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        """The bytes of several items, an ``OSError`` in place of each that cannot be read (remote sources send
        the requests together)."""
        out: list[bytes | OSError] = []
        for index in indices:
            try:
                out.append(self.read(index))
            except OSError as err:
                out.append(err)
        return out

    def item_version(self, index: int) -> str | None:
        """What the listing says about item ``index`` (size and version of its file, or of the tar or Parquet file
        holding it): equal versions mean the same bytes, so an append run reads no unchanged image. None: the
        listing says nothing (a list of paths is not stat'ed), and the bytes' hash decides."""
        return None

    def item_locator(self, index: int) -> str | None:
        """Where item ``index``'s bytes are, to read them again with one read and no listing
        (:func:`read_located`): the object, the tar member's offset and size, or the Parquet file's row group and
        row. None: not locatable."""
        return None

    def positions(self) -> dict[str, int]:
        """id -> index: to read items again by the ids a job recorded."""
        return {self.item_id(i): i for i in range(len(self))}

    def fingerprint(self) -> str:
        """A digest of what the source lists (ids, sizes, modification times): it changes when the input does."""
        raise NotImplementedError


def _version(info: dict) -> str:
    return f"{info.get('size')}:{object_version(info)}"


def _info_digest(ids: list[str], infos: list[dict]) -> str:
    """The digest of a listing: each file's id, size and version (ETag, or modification time in nanoseconds)."""
    digest = hashlib.sha256()
    for item_id, info in zip(ids, infos):
        digest.update(f"{item_id}\0{info.get('size')}\0{object_version(info)}\n".encode())
    return digest.hexdigest()


class _Reader:
    """Reading through the source's fsspec filesystem (local disk is one)."""

    fs = None

    @property
    def waits_on_network(self) -> bool:
        """Whether a read waits on the network (object storage) rather than on this machine: readers then keep
        many reads in flight on threads of their own."""
        return not on_local_disk(self.fs)

    def _url(self, path) -> str:
        return path if on_local_disk(self.fs) else self.fs.unstrip_protocol(path)

    @staticmethod
    def _read_error(err: BaseException, url: str) -> OSError:
        """What a failed read is: a missing or forbidden file as it is (that row's error), storage that cannot be
        reached as a :class:`storage.errors.StorageError` (the job stops), anything else an ``OSError``."""
        if isinstance(err, (FileNotFoundError, PermissionError)):
            return err
        return explain(err, url) or OSError(f"{type(err).__name__}: {err}")

    def _results(self, paths: list, values: list) -> list[bytes | OSError]:
        """fsspec's per-path results (``on_error="return"``) as bytes or :meth:`_read_error`."""
        return [bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else self._read_error(v, self._url(p))
                for p, v in zip(paths, values)]

    def _cat(self, path, start: int | None = None, end: int | None = None) -> bytes:
        """One read (the whole file, or ``start:end``)."""
        try:
            return self.fs.cat_file(path, start=start, end=end)
        except Exception as err:
            raise self._read_error(err, self._url(path)) from None


class FileSource(_Reader, ImageSource):
    """Image files (``paths`` inside the filesystem ``fs``); ``ids`` default to the paths as given; ``fingerprint``:
    what identifies the input (a listing's digest, or a list's text)."""

    kind = "files"

    def __init__(self, paths: list, ids: list[str] | None = None, fs=None, fingerprint: str | None = None,
                 infos: list[dict] | None = None) -> None:
        self.fs = fs if fs is not None else LocalFileSystem()  # paths on this machine's disk, unless told
        self.paths = [str(p) for p in paths]
        self.ids = ids if ids is not None else self.paths
        if infos is None and fingerprint is None:
            infos = [self.fs.info(p) for p in self.paths]
        self.versions = [_version(info) for info in infos] if infos is not None else None
        self._fingerprint = fingerprint or _info_digest(self.ids, infos)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        return self._cat(self.paths[index])

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        paths = [self.paths[i] for i in indices]
        # cat_ranges, not cat: a name with [ or * in it is a name, never a glob
        return self._results(paths, self.fs.cat_ranges(paths, None, None, on_error="return"))

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return self._url(self.paths[index])

    def item_version(self, index: int) -> str | None:
        return self.versions[index] if self.versions is not None else None

    def item_locator(self, index: int) -> str | None:
        return f"o|{self._url(self.paths[index])}"

    def fingerprint(self) -> str:
        return self._fingerprint


def _tar_members(path, fs) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of a tar's image members. Only the headers matter, but a tar has no table of
    contents: on local disk, where a seek is free, the reader seeks from header to header; elsewhere the tar is
    read once, front to back, in large blocks (a seek would be one more request)."""
    mode = "r:" if on_local_disk(fs) else "r|"
    with fs.open(path, "rb", block_size=16 << 20, cache_type="readahead") as fh, \
            tarfile.open(fileobj=fh, mode=mode) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile() and is_image(m.name)]


class TarSource(_Reader, ImageSource):
    """Image members of ``.tar`` shards, indexed once and read by (shard, offset, size).

    The id of a member is ``<tar file name>/<key>`` where the key is the member's name without its extension
    (WebDataset's ``__key__``); a key with two image members keeps the extension to stay unique. Shards are
    indexed in parallel and each image is one ranged read.
    """

    kind = "tar"

    def __init__(self, shards: list[str], fs, infos: list[dict]) -> None:
        self.shards, self.fs, self.infos = shards, fs, infos
        self.index: list[tuple[int, int, int]] = []
        self.names: list[str] = []
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(shards)))) as pool:
            listed = list(pool.map(lambda s: _tar_members(s, fs), shards))
        for s, members in enumerate(listed):
            for name, offset, size in members:
                self.index.append((s, offset, size))
                self.names.append(name)
        base = [_name(shard) for shard in shards]
        keys = [f"{base[s]}/{os.path.splitext(name)[0]}" for (s, _, _), name in zip(self.index, self.names)]
        seen: dict[str, int] = {}
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
        self.ids = [key if seen[key] == 1 else f"{base[s]}/{name}"
                    for key, (s, _, _), name in zip(keys, self.index, self.names)]

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> bytes:
        shard, offset, size = self.index[index]
        return self._cat(self.shards[shard], offset, offset + size)

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        entries = [self.index[i] for i in indices]
        paths = [self.shards[s] for s, _, _ in entries]
        values = self.fs.cat_ranges(paths, [o for _, o, _ in entries], [o + n for _, o, n in entries], on_error="return")
        return self._results(paths, values)

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return f"{self._url(self.shards[self.index[index][0]])}/{self.names[index]}"

    def item_version(self, index: int) -> str | None:
        shard, offset, size = self.index[index]
        return f"{_version(self.infos[shard])}@{offset}+{size}"

    def item_locator(self, index: int) -> str | None:
        shard, offset, size = self.index[index]
        return f"t|{offset}|{size}|{self._url(self.shards[shard])}"

    def fingerprint(self) -> str:
        return _info_digest([_name(s) for s in self.shards], self.infos) + f":{len(self)}"


def _name(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _how(field) -> str | None:
    """How a Parquet column holds image bytes: ``struct`` (Hugging Face ``Image``: struct<bytes, path>), ``binary``,
    or not at all (None)."""
    import pyarrow as pa

    def binary(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    t = field.type
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and binary(t.field("bytes").type):
        return "struct"
    return "binary" if binary(t) else None


def _image_column(schema, name: str, column: str | None) -> tuple[str, str]:
    """The column holding image bytes and how (:func:`_how`); ``column`` names it, else it is found (one such
    column, or the one named ``image``)."""
    how = _how
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


class ParquetImageSource(_Reader, ImageSource):
    """Images stored inside Parquet files: a Hugging Face ``Image`` column (struct<bytes, path>, as the Hub's
    image datasets are stored) or a plain binary column.

    Indexed once by (file, row group, row): a read loads one row group's image column, kept per thread until
    another row group is asked for, so no worker ever holds a whole file (remote files, ``fs``: only the column
    chunks of that row group are fetched). Ids are ``--id-column``'s values, else ``<file name>/<row>``.
    """

    kind = "parquet-images"

    def __init__(self, files: list[str], image_column: str | None, id_column: str | None, fs,
                 infos: list[dict]) -> None:
        self.files, self.fs, self.infos = files, fs, infos
        self._reset()
        self.index: list[tuple[int, int, int, int]] = []  # file, row group, row in it, row in the file
        self.ids: list[str] = []
        self.column, self.how = None, None
        for f, path in enumerate(files):
            meta = self._parquet(f)
            name = _name(path)
            column, how = _image_column(meta.schema_arrow, name, image_column)
            if self.column not in (None, column):
                raise DataError(f"{name}: its image column is {column!r}, {_name(files[0])}'s is {self.column!r}")
            self.column, self.how = column, how
            if id_column is not None:
                if id_column not in meta.schema_arrow.names:
                    raise DataError(f"{name} has no column {id_column!r}; its columns: {meta.schema_arrow.names}")
                ids = [str(v) for v in meta.read(columns=[id_column]).column(id_column).to_pylist()]
            else:
                ids = [f"{name}/{row}" for row in range(meta.metadata.num_rows)]
            self.ids += ids
            start = 0
            for group in range(meta.num_row_groups):
                rows = meta.metadata.row_group(group).num_rows
                self.index += [(f, group, row, start + row) for row in range(rows)]
                start += rows
        if len(set(self.ids)) != len(self.ids):
            raise DataError(f"--id-column {id_column!r} has repeated values; ids must be unique")

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, int], tuple[list, list | None]] = OrderedDict()
        self._loading: dict[tuple[int, int], threading.Event] = {}
        self._metadata: dict[int, object] = {}

    def _parquet(self, f: int):
        """File ``f``, opened with its footer read once (every row group read after that is one ranged read)."""
        import pyarrow.parquet as pq

        # pyarrow reads local disk natively (it knows fsspec's LocalFileSystem), other stores through fsspec
        parquet = pq.ParquetFile(self.files[f], metadata=self._metadata.get(f), filesystem=self.fs)
        self._metadata.setdefault(f, parquet.metadata)
        return parquet

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> bytes:
        f, group, row, _ = self.index[index]
        values, paths = self._group(f, group)
        data = values[row]
        if data is None:  # a Hugging Face Image with a path and no bytes: the file beside the Parquet
            path = paths[row] if paths else None
            if not path:
                raise OSError(f"row {row} of {_name(self.files[f])} has no image bytes")
            try:  # beside the Parquet file, never elsewhere: a row cannot name /etc/passwd or ../../secrets
                beside = inside(str(self.files[f]).rsplit("/", 1)[0], path)
            except DataError as err:
                raise OSError(f"row {row} of {_name(self.files[f])}: {err}") from None
            return self._cat(beside)
        return data

    def _group(self, f: int, group: int) -> tuple[list, list | None]:
        """One row group's image column, shared by every reading thread: loaded once (the others wait for it),
        the last ``GROUPS_KEPT`` kept."""
        key = (f, group)
        with self._lock:
            hit = self._groups.get(key)
            if hit is not None:
                self._groups.move_to_end(key)
                return hit
            loading = self._loading.get(key)
            owner = loading is None
            if owner:
                loading = self._loading[key] = threading.Event()
        if not owner:
            loading.wait()
            with self._lock:
                hit = self._groups.get(key)
            return hit if hit is not None else self._group(f, group)  # its loader failed: try once more here
        try:
            loaded = self._load(f, group)
            with self._lock:
                self._groups[key] = loaded
                while len(self._groups) > GROUPS_KEPT:
                    self._groups.popitem(last=False)
        finally:
            with self._lock:
                self._loading.pop(key).set()
        return loaded

    def _load(self, f: int, group: int) -> tuple[list, list | None]:
        try:
            table = self._parquet(f).read_row_group(group, columns=[self.column])
        except Exception as err:  # unreachable storage stops the job; a corrupt row group is that row's error
            failure = self._read_error(err, self._url(self.files[f]))
            if isinstance(failure, StorageError):
                raise failure from None
            raise OSError(f"row group {group} of {_name(self.files[f])} cannot be read: {err}") from None
        column = table.column(0).combine_chunks()
        if self.how == "struct":
            paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else None
            return column.field("bytes").to_pylist(), paths
        return column.to_pylist(), None

    def column_values(self, column: str) -> list[str | None]:
        """Another column's values beside the images (labels, say), as text, in the source's order."""
        values: list[str | None] = []
        for f in range(len(self.files)):
            parquet = self._parquet(f)
            if column not in parquet.schema_arrow.names:
                raise DataError(f"{_name(self.files[f])} has no column {column!r}; its columns: "
                                f"{parquet.schema_arrow.names}")
            values += [None if v is None else str(v) for v in parquet.read(columns=[column]).column(column).to_pylist()]
        return values

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        f, _, _, row = self.index[index]
        return f"{self._url(self.files[f])}#row={row}"

    def item_version(self, index: int) -> str | None:
        f, _, _, row = self.index[index]
        return f"{_version(self.infos[f])}#{row}"

    def item_locator(self, index: int) -> str | None:
        f, group, row, _ = self.index[index]
        return f"p|{group}|{row}|{self.how}|{self.column}|{self._url(self.files[f])}"

    def fingerprint(self) -> str:
        return _info_digest([_name(p) for p in self.files], self.infos) + f":{self.column}:{len(self)}"

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_groups", "_loading", "_metadata")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


class SubsetSource(ImageSource):
    """The items ``indices`` of ``source``, in that order: what an append run embeds (the new and changed
    images), read through the source itself."""

    def __init__(self, source: ImageSource, indices: list[int]) -> None:
        self.source, self.indices = source, list(indices)
        self.kind = source.kind

    @property
    def waits_on_network(self) -> bool:
        return getattr(self.source, "waits_on_network", False)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> bytes:
        return self.source.read(self.indices[index])

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        return self.source.read_many([self.indices[i] for i in indices])

    def item_id(self, index: int) -> str:
        return self.source.item_id(self.indices[index])

    def item_path(self, index: int) -> str:
        return self.source.item_path(self.indices[index])

    def item_version(self, index: int) -> str | None:
        return self.source.item_version(self.indices[index])

    def item_locator(self, index: int) -> str | None:
        return self.source.item_locator(self.indices[index])

    def fingerprint(self) -> str:
        return self.source.fingerprint()


def inside(parent: str, entry: str) -> str:
    """``entry`` relative to the folder ``parent`` (POSIX), refused where it is absolute, a URL, or climbs out
    with ``..``."""
    if "://" in entry or entry.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", entry):
        raise DataError(f"{entry!r} is absolute; entries name files relative to {_name(parent) or parent!r}")
    joined = posixpath.normpath(f"{parent.rstrip('/')}/{entry}")
    if not joined.startswith(parent.rstrip("/") + "/"):
        raise DataError(f"{entry!r} climbs out of its folder with '..'; entries name files inside it")
    return joined


def _entry_paths(fs, parent: str, entries: list[str], shown: str) -> list[str]:
    """Where the entries of a list (a ``.txt`` or a Parquet path column) are: relative to the list's folder. On
    local disk an entry may also be an absolute path (files whoever runs the job can read anyway); on object
    storage an entry never leaves the list's prefix (the credentials the list is read with reach further)."""
    if on_local_disk(fs):
        return [e if os.path.isabs(e) else os.path.normpath(os.path.join(parent, e)) for e in entries]
    try:
        return [inside(parent, e) for e in entries]
    except DataError as err:
        raise DataError(f"{shown}: {err}") from None


def _list_entries(text: str) -> list[str]:
    entries = []
    for line in text.splitlines():
        entry = line.strip().split()[0] if line.strip() else ""
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def _image_column_of(fs, path: str) -> bool:
    """Whether a Parquet file holds image bytes (a file with several such columns is an error that says so)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path, filesystem=fs)
    if not any(_how(f) for f in schema):
        return False
    _image_column(schema, _name(path), None)
    return True


def _path_list(fs, path: str, info: dict, column: str | None, shown: str) -> FileSource:
    """A Parquet file with a column of image paths (``--path-column``, default ``path``)."""
    import pyarrow.parquet as pq

    name = _name(path)
    schema = pq.read_schema(path, filesystem=fs)
    strings = [f.name for f in schema if str(f.type) in ("string", "large_string")]
    if column is None:
        if "path" not in schema.names:
            raise DataError(f"{name} has no column of image bytes (a binary column or a Hugging Face Image "
                            "struct<bytes, path>) and no column of image paths named 'path': pass --image-column or "
                            f"--path-column (its columns: {schema.names}; string columns: {strings})")
        column = "path"
    if column not in schema.names:
        raise DataError(f"{name} has no column {column!r}; string columns: {strings}")
    values = pq.read_table(path, columns=[column], filesystem=fs).column(column).to_pylist()
    if any(v is None for v in values):
        raise DataError(f"{name}: column {column!r} has empty rows")
    entries = [str(v) for v in values]
    paths = _entry_paths(fs, path.rsplit("/", 1)[0], entries, shown)
    return FileSource(paths, entries, fs, fingerprint=f"paths:{column}:" + _info_digest([name], [info]))


def _text_list(fs, path: str, shown: str) -> FileSource:
    """A ``.txt`` (``.lst``, ``.csv``) list of image paths, one per line (``#`` comments)."""
    text = fs.cat_file(path).decode("utf-8")
    entries = _list_entries(text)
    paths = _entry_paths(fs, path.rsplit("/", 1)[0], entries, shown)
    digest = hashlib.sha256(text.encode()).hexdigest()  # the list is the input: its text, not a stat per image
    return FileSource(paths, entries, fs, fingerprint=f"list:{digest}")


def _of_files(shown: str, files: list[str], infos: list[dict], fs, image_column: str | None,
              id_column: str | None) -> ImageSource:
    """A set of files named by a glob or a brace range: all Parquet, or all tar shards."""
    names = [_name(f) for f in files]
    if all(n.endswith(".parquet") for n in names):
        return ParquetImageSource(files, image_column, id_column, fs, infos)
    if all(n.endswith(".tar") for n in names):
        return TarSource(files, fs, infos)
    raise DataError(f"{shown!r} matches files that are neither all .tar shards nor all .parquet files "
                    f"(e.g. {names[0]})")


def _folder(fs, root: str, shown: str, image_column: str | None, id_column: str | None) -> ImageSource:
    """A folder: its ``.tar`` shards; else its ``.parquet`` files, when no image is beside them; else every image
    under it (searched recursively, sorted; ids relative to it)."""
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    top = {p: e for p, e in found.items() if p.rsplit("/", 1)[0] == root}
    tars = sorted(p for p in top if p.endswith(".tar"))
    if tars:
        return TarSource(tars, fs, [top[p] for p in tars])
    parquets = sorted(p for p in top if p.endswith(".parquet"))
    if parquets and not any(is_image(p) for p in top):
        return ParquetImageSource(parquets, image_column, id_column, fs, [top[p] for p in parquets])
    images = sorted(p for p in found if is_image(p))
    if not images:
        raise DataError(f"{shown} holds no images, .tar shards or .parquet files")
    ids = [p[len(root) + 1:] for p in images]
    return FileSource(images, ids, fs, infos=[found[p] for p in images])


def _resolve(spec: str, path_column: str | None, image_column: str | None, id_column: str | None,
             storage_options: dict | None) -> ImageSource:
    specs = expand_braces(spec)
    fs, first = filesystem(specs[0], storage_options)
    shown = public_url(spec)
    if len(specs) > 1:  # WebDataset's brace ranges, train-{000000..000099}.tar: one listing per folder
        paths = [fs._strip_protocol(s) for s in specs]  # the filesystem's own paths (absolute ones on disk)
        listed: dict[str, dict] = {}
        for parent in sorted({p.rsplit("/", 1)[0] for p in paths}):
            try:
                listed.update({e["name"]: e for e in fs.ls(parent, detail=True)})
            except FileNotFoundError:
                pass
        missing = [p for p in paths if p not in listed]
        if missing:
            raise DataError(f"{len(missing)} of the {len(paths)} files {shown} names do not exist "
                            f"(first: {public_url(fs.unstrip_protocol(missing[0]))})")
        return _of_files(shown, paths, [listed[p] for p in paths], fs, image_column, id_column)
    if any(ch in first for ch in "*?["):
        found = fs.glob(first, detail=True)
        if not found:
            raise DataError(f"no files match {shown}")
        paths = sorted(found)
        return _of_files(shown, paths, [found[p] for p in paths], fs, image_column, id_column)
    try:
        info = fs.info(first)
    except FileNotFoundError:
        raise DataError(f"data path {shown} does not exist; give a folder of images, a .txt list, .tar shards or "
                        ".parquet files (with the images inside, or a path column)") from None
    name = _name(first)
    if info.get("type") == "directory":
        return _folder(fs, first, shown, image_column, id_column)
    if name.endswith(".tar"):
        return TarSource([first], fs, [info])
    if name.endswith(".parquet"):
        if path_column is None and (image_column is not None or _image_column_of(fs, first)):
            return ParquetImageSource([first], image_column, id_column, fs, [info])
        return _path_list(fs, first, info, path_column, shown)
    if name.endswith(LIST_SUFFIXES):
        return _text_list(fs, first, shown)
    raise DataError(f"cannot read {shown}: expected a folder, a .txt list of images, .tar shards or .parquet files")


def open_source(spec: str | Path, *, path_column: str | None = None, image_column: str | None = None,
                id_column: str | None = None, storage_options: dict | None = None) -> ImageSource:
    """``spec``: a folder (searched recursively, sorted; ids relative to it), a ``.txt`` list of paths
    (relative to the list's folder; ids as listed), ``.tar`` shards (a file, a folder of shards, a glob such
    as ``shards/train-*.tar`` or a brace range ``train-{000000..000099}.tar``), or Parquet: a file, a glob or a
    folder of ``.parquet`` files with the image bytes inside (a Hugging Face ``Image`` column or a binary one,
    found or named by ``image_column``; ids from ``id_column`` or ``<file>/<row>``), or a file with a path
    column (``path_column``, default ``path``).

    Each of these may be a local path or an fsspec URL (``s3://bucket/images/``, ``gs://...``, ``az://...``,
    ``hf://datasets/org/name/data/*.parquet``), reached with ``storage_options`` and the provider's standard
    credentials; storage that cannot be reached is a :class:`storage.errors.StorageError` saying why."""
    spec = str(spec)
    try:
        return _resolve(spec, path_column, image_column, id_column, storage_options)
    except (DataError, StorageError):
        raise
    except Exception as err:
        raise_explained(err, spec)


def read_located(locator: str, storage_options: dict | None = None) -> bytes:
    """The bytes an :meth:`ImageSource.item_locator` points at, with one read (a ranged one for a tar member; one
    row group's image column for a Parquet row), never a listing. Raises ``OSError`` (``FileNotFoundError`` where
    the object is gone) or :class:`DataError` for a locator this version cannot read."""
    kind, _, rest = locator.partition("|")
    if kind == "o":
        fs, path = filesystem(rest, storage_options)
        return _Located(fs)._cat(path)
    if kind == "t":
        offset, size, url = rest.split("|", 2)
        fs, path = filesystem(url, storage_options)
        return _Located(fs)._cat(path, int(offset), int(offset) + int(size))
    if kind == "p":
        import pyarrow.parquet as pq

        group, row, how, column, url = rest.split("|", 4)
        fs, path = filesystem(url, storage_options)
        try:
            chunk = pq.ParquetFile(path, filesystem=fs).read_row_group(int(group), columns=[column]).column(0)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise _Located(fs)._read_error(err, url) from None
        value = chunk[int(row)]
        if how == "struct":
            data = value["bytes"].as_py()
            if data is None and value.type.get_field_index("path") >= 0 and value["path"].as_py():
                beside = inside(path.rsplit("/", 1)[0], value["path"].as_py())
                return _Located(fs)._cat(beside)
        else:
            data = value.as_py()
        if data is None:
            raise OSError(f"row {row} of row group {group} of {_name(path)} has no image bytes")
        return data
    raise DataError(f"unknown image locator {locator[:40]!r}")


class _Located(_Reader):
    """A reader over one filesystem, for :func:`read_located`."""

    def __init__(self, fs) -> None:
        self.fs = fs
