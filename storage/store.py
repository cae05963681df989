"""A folder at any location, with the few operations an output folder needs, through one code path.

    >>> store = Store("s3://bucket/emb", {"endpoint_url": "http://127.0.0.1:9000"})   # doctest: +SKIP
    >>> store.write_bytes("part-00000.parquet", data)                                 # doctest: +SKIP

Reads go to the location's fsspec filesystem (local disk is :class:`storage.location.LocalFileSystem`, one more
filesystem). Writes that must be whole, and writes that decide between two writers, go through the location's
:class:`Committer`, a small contract each kind of storage fulfils in its own way:

=====================  ==========================================  ============================================
                       local disk (:class:`LocalDisk`)             object storage (:class:`ObjectStore`)
=====================  ==========================================  ============================================
a whole file           a temporary file, fsync, one rename          one PUT (all or nothing)
``create``             ``O_EXCL``                                   ``If-None-Match: *`` (S3), else check-then-write
``replace_if``         compare and rename under ``flock``           ``If-Match`` (S3)
a whole folder         built aside, exchanged in one rename         whole objects, the one that commits last
a folder's lock        ``flock``, released by the kernel             a lease object with fencing (``storage.lock``)
a local copy to map    the folder itself                            downloaded once per content
=====================  ==========================================  ============================================
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.errors import FolderError, StorageError
from storage.files import atomic_write, atomic_write_bytes, cache_root, replace_dir
from storage.location import (
    CONDITIONAL_CREATE,
    explain,
    filesystem,
    is_url,
    join,
    object_version,
    protocol_of,
    public_url,
    raise_explained,
)

COPIES_KEPT = 3  # local copies of one store's index kept: the served generation, the one before, one loading


class Committer:
    """The contract: how writes become whole at a location, and how two writers are told apart.

    This base is a store with no conditional writes (every fsspec store but S3 and local disk): whole objects,
    ``create`` as check-then-write, no conditional overwrite or delete.
    """

    conditional = False  # create, replace_if and remove_if decide between two writers
    local = False  # the location is this machine's disk (a path that other programs can open)
    lock = "lease"  # the folder lock that fits: "flock" (a kernel lock) or "lease" (storage.lock.LeaseLock)

    def check(self, store: Store) -> None:
        """Reach the store once (the bucket exists, the credentials are accepted)."""
        store.fs.ls(store.root.split("/", 1)[0], detail=False)

    def mkdir(self, path: str) -> None:
        """Folders exist by their objects' names: nothing to make."""

    def write_bytes(self, store: Store, path: str, data: bytes) -> None:
        store.fs.pipe_file(path, data)

    def write_with(self, store: Store, path: str, write: Callable[[str], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="byol-put-") as tmp:
            local = os.path.join(tmp, path.rsplit("/", 1)[-1])
            write(local)
            store.fs.put_file(local, path)

    def upload(self, store: Store, local: str | Path, path: str) -> None:
        store.fs.put_file(str(local), path)

    def create(self, store: Store, path: str, data: bytes) -> str | None:
        if store.fs.exists(path):
            return None
        self.write_bytes(store, path, data)
        return store.version_at(path)

    def replace_if(self, store: Store, path: str, data: bytes, version: str) -> str | None:
        raise ValueError(f"{store.protocol}: no conditional overwrite")

    def remove_if(self, store: Store, path: str, version: str) -> bool:
        raise ValueError(f"{store.protocol}: no conditional delete")

    def publish_folder(self, store: Store, name: str, built: Path, last: str) -> None:
        """Make the complete local folder ``built`` the folder ``name``: here whole objects, the file ``last``
        (the one readers look for first) removed before and written after the others, so a reader never takes
        a half-uploaded folder."""
        store.remove(f"{name}/{last}")
        files = sorted(p for p in built.rglob("*") if p.is_file())
        for path in [p for p in files if p.name != last] + [p for p in files if p.name == last]:
            store.upload(path, f"{name}/{path.relative_to(built).as_posix()}")

    def build_dir(self, store: Store, name: str) -> Path:
        """Where a folder ``name`` is built before :meth:`publish_folder` (a local temporary folder)."""
        return Path(tempfile.mkdtemp(prefix="byol-build-"))

    def local_copy(self, store: Store, names: list[str], key: bytes,
                   versions: dict[str, str | None] | None = None) -> Path:
        """A local folder holding ``names`` (to memory-map): downloaded once per ``key`` (their content) into
        ``$BYOL_CACHE/copies/<store>/<key>/``. ``versions`` (name -> the version the key was made from) are
        checked after the download: a file that changed meanwhile (a publish running during the copy) could pair
        an old file with a new one, so the copy is dropped and :class:`FolderError` says to retry. Of one store's
        copies the newest :data:`COPIES_KEPT` stay; older ones are removed (a process still mapping one keeps
        its pages: Linux frees a removed file once it is unmapped)."""
        group = cache_root() / "copies" / hashlib.sha256(store.url().encode()).hexdigest()[:16]
        final = group / hashlib.sha256(key).hexdigest()[:24]
        if all((final / n).is_file() for n in names):
            os.utime(final)  # the newest in use: kept by the pruning below
            return final
        group.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=group))
        try:
            for name in names:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                store.download(name, tmp / name)
            changed = [n for n, v in (versions or {}).items() if v is not None and store.version(n) != v]
            if changed:
                raise FolderError(f"{store}: {', '.join(changed)} changed while being copied (a publish running); "
                                  "the copy is dropped, retry")
            try:
                os.replace(tmp, final)
            except OSError:  # another process made the same copy first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune_copies(group, keep=COPIES_KEPT)
        return final


def _prune_copies(group: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used copies in ``group`` (downloads in flight are left alone)."""
    copies = sorted((p for p in group.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in copies[keep:]:
        shutil.rmtree(old, ignore_errors=True)


class ObjectStore(Committer):
    """S3 and S3-compatible stores: whole objects, with S3's conditional writes (``If-None-Match``, ``If-Match``)."""

    conditional = True

    def create(self, store: Store, path: str, data: bytes) -> str | None:
        try:
            out = store.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return None
        return _etag(out) or store.version_at(path)

    def replace_if(self, store: Store, path: str, data: bytes, version: str) -> str | None:
        try:
            out = store.fs.pipe_file(path, data, IfMatch=_quoted(version))
        except FileNotFoundError:
            return None
        except OSError as err:
            if _precondition_failed(err):
                return None
            raise
        return _etag(out) or store.version_at(path)

    def remove_if(self, store: Store, path: str, version: str) -> bool:
        bucket, _, key = path.partition("/")
        try:
            store.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=_quoted(version))
        except FileNotFoundError:
            return False
        except Exception as err:
            if _precondition_failed(err):
                return False
            raise
        finally:
            store.fs.invalidate_cache(path)
        return True


class LocalDisk(Committer):
    """This machine's disk: a temporary file made durable then renamed, ``O_EXCL``, ``flock``, folders exchanged
    in one rename."""

    conditional = True
    local = True
    lock = "flock"

    def check(self, store: Store) -> None:
        """Nothing to reach: a missing folder is made on the first write."""

    def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def write_bytes(self, store: Store, path: str, data: bytes) -> None:
        atomic_write_bytes(path, data)

    def write_with(self, store: Store, path: str, write: Callable[[str], None]) -> None:
        atomic_write(path, write)  # streamed to a temporary file beside it (no copy in memory), renamed

    def upload(self, store: Store, local: str | Path, path: str) -> None:
        atomic_write(path, lambda tmp: shutil.copyfile(local, tmp))

    def create(self, store: Store, path: str, data: bytes) -> str | None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            return None
        return store.version_at(path)

    def _serialized(self, path: str):
        """An exclusive ``flock`` on the file's folder: one compare-and-write at a time in it."""
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def replace_if(self, store: Store, path: str, data: bytes, version: str) -> str | None:
        fd = self._serialized(path)
        try:
            if store.version_at(path) != version:
                return None
            atomic_write_bytes(path, data)
            return store.version_at(path)
        finally:
            os.close(fd)  # releases the flock

    def remove_if(self, store: Store, path: str, version: str) -> bool:
        fd = self._serialized(path)
        try:
            if store.version_at(path) != version:
                return False
            os.unlink(path)
            return True
        finally:
            os.close(fd)

    def publish_folder(self, store: Store, name: str, built: Path, last: str) -> None:
        replace_dir(built, store.path(name))  # the old folder and the new one exchanged in one step

    def build_dir(self, store: Store, name: str) -> Path:
        tmp = Path(store.path(f"{name}.tmp-{os.getpid()}"))  # the same disk: the rename is atomic
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def local_copy(self, store: Store, names: list[str], key: bytes,
                   versions: dict[str, str | None] | None = None) -> Path:
        return Path(store.root)


def committer_for(protocol: str) -> Committer:
    if protocol == "file":
        return LocalDisk()
    return ObjectStore() if protocol in CONDITIONAL_CREATE else Committer()


class Store:
    """A folder on local disk or object storage, with the few operations an output folder needs.

    ``location`` is a path or URL; names are relative to it (``part-00000.parquet``, ``index/faiss.index``).
    """

    def __init__(self, location: str | Path, options: dict[str, Any] | None = None) -> None:
        self.options = options or {}
        self.fs, root = filesystem(location, self.options)
        self.root = root.rstrip("/") or "/"
        self.protocol = protocol_of(str(location)) if is_url(location) else "file"
        self.location = str(location) if is_url(location) else self.root
        self.committer = committer_for(self.protocol)
        # called with the name before every write or removal in the folder (a lock's fencing check: a writer
        # that lost its lease stops before its next commit); not carried to other processes
        self.fence: Callable[[str], None] | None = None

    @property
    def conditional(self) -> bool:
        """Whether :meth:`create` is a real conditional write (two writers can never both win)."""
        return self.committer.conditional

    @property
    def is_local(self) -> bool:
        """Whether the folder is on this machine's disk."""
        return self.committer.local

    def __repr__(self) -> str:
        return f"Store({public_url(self.location)!r})"

    def __str__(self) -> str:
        return public_url(self.location)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])

    def url(self, name: str = "") -> str:
        """What may be shown or recorded: a path on disk, a URL without credentials elsewhere."""
        return public_url(join(self.location, name))

    def path(self, name: str = "") -> str:
        """The path of ``name`` inside the filesystem (what fsspec or pyarrow is given)."""
        return join(self.root, name)

    def local_path(self, name: str = "") -> Path:
        """``name`` as a path on this machine's disk; an error for a folder elsewhere."""
        if not self.is_local:
            raise StorageError(f"{self} is not on local disk")
        return Path(self.path(name))

    def child(self, name: str) -> Store:
        """The store of a subfolder; writes there pass this store's fence too (they are the same folder's)."""
        child = Store(join(self.location, name), self.options)
        if self.fence is not None:
            fence = self.fence
            child.fence = lambda inner: fence(f"{name}/{inner}")
        return child

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            explained = explain(err, self.location)
            if explained is None or isinstance(err, FileNotFoundError) and "bucket" not in str(err).lower():
                raise
            raise explained from None

    # --- reads ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Reach the store once (the bucket exists, the credentials are accepted) before a job starts."""
        try:
            self.committer.check(self)
        except Exception as err:
            raise_explained(err, self.location)

    def exists(self, name: str) -> bool:
        return self._call(self.fs.exists, self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self._call(self.fs.cat_file, self.path(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def names(self, pattern: str) -> list[str]:
        """Names matching a glob ``pattern`` (one level, e.g. ``part-*.done``), sorted."""
        found = self._call(self.fs.glob, self.path(pattern))
        return sorted(p.rsplit("/", 1)[-1] for p in found)

    def info(self, name: str) -> dict[str, Any]:
        """Size and a version tag (ETag, or mtime in nanoseconds on disk) of ``name``."""
        info = self._call(self.fs.info, self.path(name))
        return {"size": int(info.get("size") or 0), "version": object_version(info)}

    def version_at(self, path: str) -> str | None:
        """The version tag of the file at ``path`` (inside the filesystem), or None when there is none."""
        try:
            return object_version(self._call(self.fs.info, path))
        except FileNotFoundError:
            return None

    def version(self, name: str) -> str | None:
        """The version tag of ``name`` now (its ETag), or None when it does not exist."""
        return self.version_at(self.path(name))

    def open(self, name: str, mode: str = "rb"):
        return self._call(self.fs.open, self.path(name), mode)

    def download(self, name: str, local: str | Path) -> None:
        self._call(self.fs.get_file, self.path(name), str(local))

    def local_copy(self, names: list[str], key: bytes = b"", versions: dict[str, str | None] | None = None) -> Path:
        """A folder on this machine's disk that holds ``names`` (e.g. an index to memory-map): the folder itself on
        local disk, elsewhere a copy made once per ``key`` (what identifies their content), checked against
        ``versions`` (:meth:`Committer.local_copy`)."""
        return self.committer.local_copy(self, names, key, versions)

    # --- writes --------------------------------------------------------------------------------------------
    def _fenced(self, name: str) -> None:
        if self.fence is not None:
            self.fence(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` whole: an atomic rename on disk, a single object (all or nothing) on object storage."""
        self._fenced(name)
        self._call(self.committer.write_bytes, self, self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_with(self, name: str, write: Callable[[str], None]) -> None:
        """Write ``name`` whole by calling ``write(local_path)`` (e.g. pyarrow writing a Parquet file), streamed to
        a temporary file first: never seen half-written."""
        self._fenced(name)
        self._call(self.committer.write_with, self, self.path(name), write)

    def upload(self, local: str | Path, name: str) -> None:
        """Copy a local file to ``name`` whole (a rename on the same disk; an upload to object storage)."""
        self._fenced(name)
        self._call(self.committer.upload, self, local, self.path(name))

    def publish_folder(self, name: str, build: Callable[[Path], None], last: str) -> None:
        """Build a folder locally with ``build(path)``, then make it the folder ``name`` whole: readers see the old
        one or the new one (``last``: the file readers look for first, committed last where objects are written
        one by one)."""
        self._fenced(name)
        built = self.committer.build_dir(self, name)
        try:
            build(built)
            self._call(self.committer.publish_folder, self, name, built, last)
        finally:
            shutil.rmtree(built, ignore_errors=True)

    def create(self, name: str, data: bytes) -> str | None:
        """Write ``name`` only if it does not exist: its version tag, or None when it exists. Conditional where the
        store allows it (:attr:`conditional`), else check-then-write."""
        return self._call(self.committer.create, self, self.path(name), data)

    def replace_if(self, name: str, data: bytes, version: str) -> str | None:
        """Overwrite ``name`` only while it is still at ``version`` (S3's ``If-Match``): the new version tag, or
        None when another writer changed or removed it first."""
        return self._call(self.committer.replace_if, self, self.path(name), data, version)

    def remove_if(self, name: str, version: str) -> bool:
        """Remove ``name`` only while it is still at ``version``; False when another writer changed it first."""
        return self._call(self.committer.remove_if, self, self.path(name), version)

    def remove(self, name: str) -> None:
        self._fenced(name)
        try:
            self._call(self.fs.rm_file, self.path(name))
        except FileNotFoundError:
            pass

    def remove_tree(self, name: str) -> None:
        self._fenced(name)
        try:
            self._call(self.fs.rm, self.path(name), recursive=True)
        except FileNotFoundError:
            pass

    def mkdir(self) -> None:
        self.committer.mkdir(self.root)


def as_store(folder: str | Path | Store, options: dict[str, Any] | None = None) -> Store:
    return folder if isinstance(folder, Store) else Store(folder, options)


def _etag(put_result: Any) -> str | None:
    """The version tag of a write's result, as :func:`object_version` spells it (no quotes)."""
    return object_version(put_result) or None if isinstance(put_result, dict) else None


def _quoted(version: str) -> str:
    """An ETag as HTTP's ``If-Match`` takes it."""
    return version if version.startswith('"') else f'"{version}"'


def _precondition_failed(err: BaseException) -> bool:
    """S3's 412 PreconditionFailed, as s3fs or botocore raise it."""
    code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
    return code in ("PreconditionFailed", "412") or "pre-conditions you specified did not hold" in str(err)
