"""Where data lives: local paths and fsspec URLs (``s3://``, ``gs://``, ``az://``, ``hf://``, ...), reached one way.

Torch-free. ``hub.sources`` lists and reads inputs through it; ``byol-embed`` writes its output folders through
:class:`Store`. Credentials come the provider's standard way (environment variables, its config files such as
``~/.aws/credentials``, instance roles); ``storage_options`` (``--storage-option KEY=VALUE``) carry the rest
(``endpoint_url``, ``anon``, ``profile``, ...) to the fsspec filesystem. Options are never logged and never
written to a manifest, a card or a config.

    >>> store = Store("s3://bucket/emb", {"endpoint_url": "http://127.0.0.1:9000"})   # doctest: +SKIP
    >>> store.write_bytes("part-00000.parquet", data)                                 # doctest: +SKIP

Object stores have no rename: :meth:`Store.write_bytes` writes a whole object (a PUT is all or nothing), and
callers commit with a marker object written after it. :meth:`Store.create` is a conditional create where the store
has one (local files: ``O_EXCL``; S3: ``If-None-Match: *``); elsewhere it is check-then-write
(:attr:`Store.conditional` is False).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hub.errors import HubError

# protocol -> (the fsspec package it needs, this project's extra)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
          "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
          "adl": ("adlfs", "azure")}
CONDITIONAL_CREATE = ("s3", "s3a")  # stores whose create is a real conditional write (S3's If-None-Match: *)
# a store that cannot be reached fails in seconds, never hangs (each can be overridden with --storage-option)
# (and listings are never cached: a resumed run or a server must see the objects other processes wrote)
S3_DEFAULTS = {"use_listings_cache": False, "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                 "retries": {"max_attempts": 3, "mode": "standard"}}}


class StorageError(HubError, OSError):
    """Storage that cannot be reached, read or written: the message says which URL and what to change."""


def is_url(spec: str | Path) -> bool:
    """True for a URL that fsspec reaches (``s3://...``); local paths and ``file://`` URLs are not."""
    text = str(spec)
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text)) and not text.startswith("file://")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def public_url(url: str) -> str:
    """The URL without any ``user:password@`` part (what may be logged or recorded)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _value(text: str) -> Any:
    try:
        return json.loads(text)  # true/false/null/numbers/JSON objects
    except ValueError:
        return text


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "config_kwargs.read_timeout=30", "anon=true"]`` -> nested options.
    Values are JSON where they parse as JSON (true, 30, {"a": 1}), else strings; dots nest keys."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"--storage-option {item!r}: expected KEY=VALUE (e.g. endpoint_url=http://host:9000, "
                               "anon=true, config_kwargs.read_timeout=30)")
        *parents, last = key.strip().split(".")
        target = options
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise StorageError(f"--storage-option {item!r}: {part} is already a value, not a group")
        target[last] = _value(text)
    return options


class _StorageOptions(argparse.Action):
    """``--storage-option KEY=VALUE``, repeatable, gathered into one nested dict as argparse reads them."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        items = [*getattr(namespace, self.dest + "_items", []), value]
        setattr(namespace, self.dest + "_items", items)
        try:
            setattr(namespace, self.dest, parse_storage_options(items))
        except StorageError as err:
            parser.error(str(err))


def add_storage_option(parser: argparse.ArgumentParser, what: str = "URLs") -> None:
    """The one ``--storage-option`` of every command (``args.storage_options``: a dict, empty by default)."""
    parser.add_argument("--storage-option", dest="storage_options", action=_StorageOptions, default={},
                        metavar="KEY=VALUE",
                        help=f"an fsspec option for {what} (repeat): endpoint_url=http://host:9000 (S3-compatible "
                             "stores), anon=true (public buckets), profile=NAME, config_kwargs.read_timeout=30; "
                             "values are JSON where they parse [env BYOL_STORAGE_OPTIONS, a JSON object]. "
                             "Credentials come the provider's standard way (AWS_* variables, ~/.aws, an instance "
                             "role): never pass secrets here, they would show in the process list. Never logged "
                             "nor written to any output")


def env_storage_options() -> dict[str, Any]:
    """``BYOL_STORAGE_OPTIONS`` (a JSON object): options for processes started for a job (servers, workers)."""
    text = os.environ.get("BYOL_STORAGE_OPTIONS", "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise StorageError("BYOL_STORAGE_OPTIONS is not a JSON object") from None
    if not isinstance(value, dict):
        raise StorageError("BYOL_STORAGE_OPTIONS must be a JSON object of fsspec storage options")
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def filesystem(url: str, options: dict[str, Any] | None = None):
    """``(fsspec filesystem, path inside it)`` for ``url``; a missing fsspec package is an error naming the extra."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec comes with huggingface-hub
        raise StorageError("reading URLs needs fsspec (pip install fsspec)") from None
    protocol = protocol_of(url)
    opts = _merge(env_storage_options(), options or {})
    if protocol in ("s3", "s3a"):
        opts = _merge(S3_DEFAULTS, opts)
    try:
        fsspec.get_filesystem_class(protocol)
        return url_to_fs(url, **opts)
    except ImportError as err:
        package, extra = EXTRAS.get(protocol, (None, None))
        if extra:
            raise StorageError(f"{protocol}:// URLs need {package}: pip install 'byol[{extra}]'") from None
        raise StorageError(f"{protocol}:// URLs need a package fsspec names: {err}") from None
    except ValueError as err:
        if "protocol" in str(err).lower():
            raise StorageError(f"unknown storage protocol {protocol}:// in {public_url(url)}; known: file paths, "
                               "s3://, gs://, az://, hf:// and the other fsspec protocols") from None
        raise StorageError(f"{public_url(url)}: {err}") from None
    except TypeError as err:
        raise StorageError(f"{public_url(url)}: a storage option is not accepted by {protocol}:// ({err})") from None


def explain(err: BaseException, url: str) -> StorageError | None:
    """A :class:`StorageError` that says what went wrong reaching ``url`` (credentials, endpoint, bucket), or None
    for an error that is not about storage."""
    url = public_url(url)
    name = type(err).__name__
    text = str(err)
    if isinstance(err, StorageError):
        return err
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") \
            or "Unable to locate credentials" in text:
        return StorageError(f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                            "AWS_PROFILE, ~/.aws/credentials, an instance role), or pass --storage-option anon=true "
                            "for a public bucket")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerTimeoutError", "ConnectError", "ConnectTimeout") \
            or isinstance(err, (ConnectionError, TimeoutError)):
        return StorageError(f"cannot reach the storage endpoint for {url} ({name}: {text}); check "
                            "--storage-option endpoint_url=... (or AWS_ENDPOINT_URL) and the network")
    if name in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return StorageError(f"the credentials for {url} were refused ({text}); check AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY or the profile")
    if isinstance(err, PermissionError):
        return StorageError(f"access denied to {url} ({text}); check the credentials' permissions")
    if isinstance(err, FileNotFoundError) and "bucket" in text.lower():
        return StorageError(f"the bucket of {url} does not exist ({text}); create it or check the URL")
    if isinstance(err, FileNotFoundError):
        return StorageError(f"{url} does not exist")
    return None


def raise_explained(err: BaseException, url: str) -> NoReturn:
    explained = explain(err, url)
    if explained is not None and explained is not err:
        raise explained from None
    raise err


def object_version(info: dict[str, Any]) -> str:
    """An object's version tag from an fsspec listing or ``info``: its ETag (or the store's like), else its
    modification time; it changes when the object does."""
    for key in ("ETag", "etag", "md5Hash", "blob_id", "last_commit", "mtime", "LastModified", "last_modified"):
        if info.get(key):
            return str(info[key]).strip('"')
    return ""


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name.lstrip("/") if name else url


def expand_braces(spec: str) -> list[str]:
    """WebDataset's brace notation: ``train-{000000..000009}.tar`` (a zero-padded range) and ``{a,b}`` (a list),
    several braces multiply. A spec without braces is returned as it is."""
    match = re.search(r"\{([^{}]*)\}", spec)
    if not match:
        return [spec]
    body = match.group(1)
    head, tail = spec[:match.start()], spec[match.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.groups()
        if int(hi) < int(lo):
            raise StorageError(f"brace range {{{body}}} in {spec!r} runs backwards")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise StorageError(f"cannot expand {{{body}}} in {spec!r}: expected {{000..999}} or {{a,b,c}}")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


class Store:
    """A folder on local disk or object storage, with the few operations an output folder needs.

    ``location`` is a path or URL; names are relative to it (``part-00000.parquet``, ``index/faiss.index``).
    """

    def __init__(self, location: str | Path, options: dict[str, Any] | None = None) -> None:
        self.location = str(location)
        self.options = options or {}
        self.remote = is_url(self.location)
        if self.remote:
            self.fs, root = filesystem(self.location, self.options)
            self.root = root.rstrip("/")
            self.protocol = protocol_of(self.location)
        else:
            self.location = str(Path(self.location.removeprefix("file://")).absolute())
            self.fs, self.root, self.protocol = None, self.location, "file"
        # called with the name before every write or removal in the folder (a lock's fencing check: a writer
        # that lost its lease stops before its next commit); not carried to other processes
        self.fence: Callable[[str], None] | None = None

    @property
    def conditional(self) -> bool:
        """Whether :meth:`create` is a real conditional write (two writers can never both win)."""
        return not self.remote or self.protocol in CONDITIONAL_CREATE

    def __repr__(self) -> str:
        return f"Store({public_url(self.location)!r})"

    def __str__(self) -> str:
        return public_url(self.location)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])

    def url(self, name: str = "") -> str:
        return public_url(join(self.location, name)) if self.remote else str(self.local_path(name))

    def path(self, name: str = "") -> str:
        """The path of ``name`` inside the filesystem (what fsspec or pyarrow is given)."""
        return join(self.root, name) if self.remote else str(self.local_path(name))

    def local_path(self, name: str = "") -> Path:
        if self.remote:
            raise StorageError(f"{self} is not on local disk")
        return Path(self.root) / name if name else Path(self.root)

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
        if self.remote:
            bucket = self.root.split("/", 1)[0]
            try:
                self.fs.ls(bucket, detail=False)
            except Exception as err:
                raise_explained(err, self.location)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return self.local_path(name).exists()
        return self._call(self.fs.exists, self.path(name))

    def read_bytes(self, name: str) -> bytes:
        if not self.remote:
            return self.local_path(name).read_bytes()
        return self._call(self.fs.cat_file, self.path(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def names(self, pattern: str) -> list[str]:
        """Names matching a glob ``pattern`` (one level, e.g. ``part-*.done``), sorted."""
        if not self.remote:
            return sorted(p.name for p in self.local_path().glob(pattern))
        found = self._call(self.fs.glob, self.path(pattern))
        return sorted(p.rsplit("/", 1)[-1] for p in found)

    def info(self, name: str) -> dict[str, Any]:
        """Size and a version tag (ETag, or mtime on disk) of ``name``."""
        if not self.remote:
            st = self.local_path(name).stat()
            return {"size": st.st_size, "version": str(st.st_mtime_ns)}
        info = self._call(self.fs.info, self.path(name))
        return {"size": int(info.get("size") or 0), "version": object_version(info)}

    def open(self, name: str, mode: str = "rb"):
        if not self.remote:
            return open(self.local_path(name), mode)  # noqa: SIM115
        return self._call(self.fs.open, self.path(name), mode)

    def download(self, name: str, local: str | Path) -> None:
        if not self.remote:
            import shutil

            shutil.copyfile(self.local_path(name), local)
        else:
            self._call(self.fs.get_file, self.path(name), str(local))

    # --- writes --------------------------------------------------------------------------------------------
    def _fenced(self, name: str) -> None:
        if self.fence is not None:
            self.fence(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` whole: an atomic rename on disk, a single object (all or nothing) on object storage."""
        self._fenced(name)
        if not self.remote:
            from hub.files import atomic_write_bytes

            atomic_write_bytes(self.local_path(name), data)
        else:
            self._call(self.fs.pipe_file, self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def upload(self, local: str | Path, name: str) -> None:
        """Copy a local file to ``name`` whole (a rename on the same disk; an upload to object storage)."""
        self._fenced(name)
        if not self.remote:
            import shutil

            from hub.files import atomic_write

            atomic_write(self.local_path(name), lambda tmp: shutil.copyfile(local, tmp))
        else:
            self._call(self.fs.put_file, str(local), self.path(name))

    def create(self, name: str, data: bytes) -> str | None:
        """Write ``name`` only if it does not exist: its version tag, or None when it exists. Conditional where the
        store allows it (:attr:`conditional`), else check-then-write."""
        if not self.remote:
            path = self.local_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(path, "xb") as fh:
                    fh.write(data)
            except FileExistsError:
                return None
            return str(path.stat().st_mtime_ns)
        if self.conditional:
            try:
                out = self._call(self.fs.pipe_file, self.path(name), data, mode="create")
            except FileExistsError:
                return None
            return _etag(out) or self.version(name)
        if self.exists(name):
            return None
        self.write_bytes(name, data)
        return self.version(name)

    def version(self, name: str) -> str | None:
        """The version tag of ``name`` now (its ETag), or None when it does not exist."""
        try:
            return self.info(name)["version"]
        except FileNotFoundError:
            return None

    def replace_if(self, name: str, data: bytes, version: str) -> str | None:
        """Overwrite ``name`` only while it is still at ``version`` (S3's ``If-Match``): the new version tag, or
        None when another writer changed or removed it first. Object storage with :attr:`conditional` only."""
        if not (self.remote and self.conditional):
            raise ValueError(f"{self.protocol}: no conditional overwrite")
        try:
            out = self._call(self.fs.pipe_file, self.path(name), data, IfMatch=_quoted(version))
        except FileNotFoundError:
            return None
        except OSError as err:
            if _precondition_failed(err):
                return None
            raise
        return _etag(out) or self.version(name)

    def remove_if(self, name: str, version: str) -> bool:
        """Remove ``name`` only while it is still at ``version``; False when another writer changed it first."""
        if not (self.remote and self.conditional):
            raise ValueError(f"{self.protocol}: no conditional delete")
        bucket, _, key = self.path(name).partition("/")
        try:
            self._call(self.fs.call_s3, "delete_object", Bucket=bucket, Key=key, IfMatch=_quoted(version))
        except FileNotFoundError:
            return False
        except Exception as err:
            if _precondition_failed(err):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.path(name))
        return True

    def remove(self, name: str) -> None:
        self._fenced(name)
        if not self.remote:
            self.local_path(name).unlink(missing_ok=True)
            return
        try:
            self._call(self.fs.rm_file, self.path(name))
        except FileNotFoundError:
            pass

    def remove_tree(self, name: str) -> None:
        self._fenced(name)
        if not self.remote:
            import shutil

            shutil.rmtree(self.local_path(name), ignore_errors=True)
            return
        try:
            self._call(self.fs.rm, self.path(name), recursive=True)
        except FileNotFoundError:
            pass

    def mkdir(self) -> None:
        if not self.remote:
            self.local_path().mkdir(parents=True, exist_ok=True)


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
