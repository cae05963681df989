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
import posixpath
import re
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

from hub.errors import HubError
from hub.storage import object_version

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
LIST_SUFFIXES = (".txt", ".lst", ".csv")
GROUPS_KEPT = 4  # Parquet row groups of images kept in memory per reader (shared by its threads)


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


def _info_digest(ids: list[str], infos: list[dict]) -> str:
    """The digest of a remote listing: each object's id, size and version (ETag or modification time)."""
    digest = hashlib.sha256()
    for item_id, info in zip(ids, infos):
        digest.update(f"{item_id}\0{info.get('size')}\0{object_version(info)}\n".encode())
    return digest.hexdigest()


class _Remote:
    """Reading through an fsspec filesystem (``fs`` None: local disk)."""

    fs = None

    def _url(self, path) -> str:
        return self.fs.unstrip_protocol(path) if self.fs is not None else str(Path(path).resolve())

    @staticmethod
    def _read_error(err: BaseException, url: str) -> OSError:
        """What a failed remote read is: a missing or forbidden object as it is (that row's error), storage that
        cannot be reached as a :class:`hub.storage.StorageError` (the job stops), anything else an ``OSError``."""
        from hub.storage import explain

        if isinstance(err, (FileNotFoundError, PermissionError)):
            return err
        return explain(err, url) or OSError(f"{type(err).__name__}: {err}")

    def _results(self, paths: list, values: list) -> list[bytes | OSError]:
        """fsspec's per-path results (``on_error="return"``) as bytes or :meth:`_read_error`."""
        return [bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else self._read_error(v, self._url(p))
                for p, v in zip(paths, values)]

    def _cat(self, path, start: int | None = None, end: int | None = None) -> bytes:
        """One remote read (the whole object, or ``start:end``)."""
        try:
            return self.fs.cat_file(path, start=start, end=end)
        except Exception as err:
            raise self._read_error(err, self._url(path)) from None


class FileSource(_Remote, ImageSource):
    """Image files; ``ids`` default to the paths as given. ``fs``: the fsspec filesystem of remote ``paths``."""

    kind = "files"

    def __init__(self, paths: list, ids: list[str] | None = None, fs=None, fingerprint: str | None = None) -> None:
        self.paths = paths
        self.ids = ids if ids is not None else [str(p) for p in paths]
        self.fs, self._fingerprint = fs, fingerprint

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        if self.fs is None:
            return self.paths[index].read_bytes()
        return self._cat(self.paths[index])

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        if self.fs is None:
            return super().read_many(indices)
        paths = [self.paths[i] for i in indices]
        # cat_ranges, not cat: a name with [ or * in it is a name, never a glob
        return self._results(paths, self.fs.cat_ranges(paths, None, None, on_error="return"))

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return self._url(self.paths[index])

    def fingerprint(self) -> str:
        return self._fingerprint or _stat_digest(self.paths, self.ids)


def _tar_members(path, fs) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of a tar's image members. Remote tars are read once, front to back, in large
    blocks (only the headers matter, but a tar has no table of contents)."""
    if fs is None:
        with tarfile.open(path) as tar:
            return [(m.name, m.offset_data, m.size) for m in tar if m.isfile() and is_image(m.name)]
    with fs.open(path, "rb", block_size=16 << 20, cache_type="readahead") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile() and is_image(m.name)]


class TarSource(_Remote, ImageSource):
    """Image members of ``.tar`` shards, indexed once and read by (shard, offset, size).

    The id of a member is ``<tar file name>/<key>`` where the key is the member's name without its extension
    (WebDataset's ``__key__``); a key with two image members keeps the extension to stay unique. Remote shards
    (``fs``) are indexed in parallel and each image is one ranged read.
    """

    kind = "tar"

    def __init__(self, shards: list, fs=None, infos: list[dict] | None = None) -> None:
        self.shards, self.fs, self.infos = shards, fs, infos
        self.index: list[tuple[int, int, int]] = []
        self.names: list[str] = []
        if fs is None:
            listed = [_tar_members(shard, None) for shard in shards]
        else:
            from concurrent.futures import ThreadPoolExecutor

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
        self._handles: dict[int, io.BufferedReader] = {}

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> bytes:
        shard, offset, size = self.index[index]
        if self.fs is not None:
            return self._cat(self.shards[shard], offset, offset + size)
        handle = self._handles.get(shard)
        if handle is None:  # one handle per shard per worker process
            handle = self._handles[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        handle.seek(offset)
        return handle.read(size)

    def read_many(self, indices: list[int]) -> list[bytes | OSError]:
        if self.fs is None:
            return super().read_many(indices)
        entries = [self.index[i] for i in indices]
        paths = [self.shards[s] for s, _, _ in entries]
        values = self.fs.cat_ranges(paths, [o for _, o, _ in entries], [o + n for _, o, n in entries], on_error="return")
        return self._results(paths, values)

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        return f"{self._url(self.shards[self.index[index][0]])}/{self.names[index]}"

    def fingerprint(self) -> str:
        names = [_name(s) for s in self.shards]
        digest = _info_digest(names, self.infos) if self.fs is not None else _stat_digest(self.shards, names)
        return digest + f":{len(self)}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}


def _name(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


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


class ParquetImageSource(_Remote, ImageSource):
    """Images stored inside Parquet files: a Hugging Face ``Image`` column (struct<bytes, path>, as the Hub's
    image datasets are stored) or a plain binary column.

    Indexed once by (file, row group, row): a read loads one row group's image column, kept per thread until
    another row group is asked for, so no worker ever holds a whole file (remote files, ``fs``: only the column
    chunks of that row group are fetched). Ids are ``--id-column``'s values, else ``<file name>/<row>``.
    """

    kind = "parquet-images"

    def __init__(self, files: list, image_column: str | None = None, id_column: str | None = None, fs=None,
                 infos: list[dict] | None = None) -> None:
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

        source = self.files[f] if self.fs is None else self.fs.open(self.files[f], "rb")
        parquet = pq.ParquetFile(source, metadata=self._metadata.get(f))
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
            return self._cat(beside) if self.fs is not None else Path(beside).read_bytes()
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
            from hub.storage import StorageError

            failure = self._read_error(err, self._url(self.files[f])) if self.fs is not None else None
            if isinstance(failure, StorageError):
                raise failure from None
            raise OSError(f"row group {group} of {_name(self.files[f])} cannot be read: {err}") from None
        column = table.column(0).combine_chunks()
        if self.how == "struct":
            paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else None
            return column.field("bytes").to_pylist(), paths
        return column.to_pylist(), None

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def item_path(self, index: int) -> str:
        f, _, _, row = self.index[index]
        return f"{self._url(self.files[f])}#row={row}"

    def fingerprint(self) -> str:
        names = [_name(p) for p in self.files]
        digest = _info_digest(names, self.infos) if self.fs is not None else _stat_digest(self.files, names)
        return digest + f":{self.column}:{len(self)}"

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_groups", "_loading", "_metadata")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


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


def _local_source(spec: str, path_column: str | None, image_column: str | None, id_column: str | None) -> ImageSource:
    path = Path(spec)
    if "{" in spec:  # WebDataset's brace ranges: train-{000000..000099}.tar
        from hub.storage import expand_braces

        files = [Path(p) for p in expand_braces(spec)]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(files)} files {spec!r} names do not exist (first: {missing[0]})")
        return _of_files(spec, files, image_column, id_column)
    if any(ch in spec for ch in "*?["):
        shards = sorted(Path(p) for p in glob.glob(spec))
        if not shards:
            raise DataError(f"no files match {spec!r}")
        return _of_files(spec, shards, image_column, id_column)
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
        for entry in _list_entries(path.read_text()):
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


def inside(parent: str, entry: str) -> str:
    """``entry`` relative to the folder ``parent`` (POSIX), refused where it is absolute, a URL, or climbs out
    with ``..``."""
    if "://" in entry or entry.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", entry):
        raise DataError(f"{entry!r} is absolute; entries name files relative to {_name(parent) or parent!r}")
    joined = posixpath.normpath(f"{parent.rstrip('/')}/{entry}")
    if not joined.startswith(parent.rstrip("/") + "/"):
        raise DataError(f"{entry!r} climbs out of its folder with '..'; entries name files inside it")
    return joined


def _list_entries(text: str) -> list[str]:
    entries = []
    for line in text.splitlines():
        entry = line.strip().split()[0] if line.strip() else ""
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def _of_files(spec: str, files: list, image_column: str | None, id_column: str | None, fs=None,
              infos: list[dict] | None = None) -> ImageSource:
    """A set of files named by a glob or a brace range: all Parquet, or all tar shards."""
    names = [_name(f) for f in files]
    if all(n.endswith(".parquet") for n in names):
        return ParquetImageSource(files, image_column, id_column, fs=fs, infos=infos)
    if all(n.endswith(".tar") for n in names):
        return TarSource(files, fs=fs, infos=infos)
    raise DataError(f"{spec!r} matches files that are neither all .tar shards nor all .parquet files "
                    f"(e.g. {names[0]})")


def _remote_source(spec: str, path_column: str | None, image_column: str | None, id_column: str | None,
                   storage_options: dict | None) -> ImageSource:
    from hub.storage import expand_braces, filesystem, public_url

    specs = expand_braces(spec)
    fs, first = filesystem(specs[0], storage_options)
    shown = public_url(spec)
    if len(specs) > 1:  # one listing per folder, not one request per shard
        paths = [fs._strip_protocol(s) for s in specs]
        listed: dict[str, dict] = {}
        for parent in sorted({p.rsplit("/", 1)[0] for p in paths}):
            listed.update({e["name"]: e for e in fs.ls(parent, detail=True)})
        missing = [p for p in paths if p not in listed]
        if missing:
            raise DataError(f"{len(missing)} of the {len(paths)} objects {shown} names do not exist "
                            f"(first: {fs.unstrip_protocol(missing[0])})")
        return _of_files(shown, paths, image_column, id_column, fs, [listed[p] for p in paths])
    if any(ch in first for ch in "*?["):
        found = fs.glob(first, detail=True)
        if not found:
            raise DataError(f"no objects match {shown}")
        paths = sorted(found)
        return _of_files(shown, paths, image_column, id_column, fs, [found[p] for p in paths])
    try:
        info = fs.info(first)
    except FileNotFoundError:
        raise DataError(f"{shown} does not exist; give a folder, a .txt list, .tar shards or .parquet files") from None
    name = _name(first)
    if info.get("type") == "directory":
        root = first.rstrip("/")
        found = fs.find(root, detail=True)
        top = {p: e for p, e in found.items() if p.rsplit("/", 1)[0] == root}
        tars = sorted(p for p in top if p.endswith(".tar"))
        if tars:
            return TarSource(tars, fs=fs, infos=[top[p] for p in tars])
        parquets = sorted(p for p in top if p.endswith(".parquet"))
        images = sorted(p for p in found if is_image(p))
        if parquets and not any(is_image(p) for p in top):
            return ParquetImageSource(parquets, image_column, id_column, fs=fs, infos=[top[p] for p in parquets])
        if not images:
            raise DataError(f"{shown} holds no images, .tar shards or .parquet files")
        ids = [p[len(root) + 1:] for p in images]
        return FileSource(images, ids, fs=fs, fingerprint=_info_digest(ids, [found[p] for p in images]))
    if name.endswith(".tar"):
        return TarSource([first], fs=fs, infos=[info])
    if name.endswith(".parquet"):
        if path_column is None:
            return ParquetImageSource([first], image_column, id_column, fs=fs, infos=[info])
        raise DataError(f"{shown}: a remote Parquet of paths is not read; embed the images' folder, a .txt list, "
                        "or Parquet with the image bytes inside")
    if name.endswith(LIST_SUFFIXES):
        text = fs.cat_file(first).decode("utf-8")
        entries = _list_entries(text)
        parent = first.rsplit("/", 1)[0]
        # a remote list names objects under its own prefix only: the credentials it is read with reach further
        try:
            paths = [inside(parent, e) for e in entries]
        except DataError as err:
            raise DataError(f"{shown}: {err}") from None
        digest = hashlib.sha256(text.encode()).hexdigest()  # the list is the input: its text, not a stat per image
        return FileSource(paths, entries, fs=fs, fingerprint=f"list:{digest}")
    raise DataError(f"cannot read {shown}: expected a folder, a .txt list of images, .tar shards or .parquet files")


def open_source(spec: str | Path, *, path_column: str | None = None, image_column: str | None = None,
                id_column: str | None = None, storage_options: dict | None = None) -> ImageSource:
    """``spec``: a folder (searched recursively, sorted; ids relative to it), a ``.txt`` list of paths
    (relative to the list's folder; ids as listed), ``.tar`` shards (a file, a folder of shards, a glob such
    as ``shards/train-*.tar`` or a brace range ``train-{000000..000099}.tar``), or Parquet: a file, a glob or a
    folder of ``.parquet`` files with the image bytes inside (a Hugging Face ``Image`` column or a binary one,
    found or named by ``image_column``; ids from ``id_column`` or ``<file>/<row>``), or a local file with a path
    column (``path_column``, default ``path``).

    Each of these may be an fsspec URL as well (``s3://bucket/images/``, ``gs://...``, ``az://...``,
    ``hf://datasets/org/name/data/*.parquet``), reached with ``storage_options`` and the provider's standard
    credentials; storage that cannot be reached is a :class:`hub.storage.StorageError` saying why."""
    from hub.storage import is_url, raise_explained

    spec = str(spec)
    if not is_url(spec):
        return _local_source(spec.removeprefix("file://"), path_column, image_column, id_column)
    try:
        return _remote_source(spec, path_column, image_column, id_column, storage_options)
    except DataError:
        raise
    except Exception as err:
        raise_explained(err, spec)
