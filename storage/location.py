"""Locations: local paths and fsspec URLs (``s3://``, ``gs://``, ``az://``, ``hf://``, ...), reached one way.

Every location is an fsspec filesystem and a path inside it; a local path is ``LocalFileSystem``'s, like any
other. Credentials come the provider's standard way (environment variables, its config files such as
``~/.aws/credentials``, instance roles); ``storage_options`` (``--storage-option KEY=VALUE``) carry the rest
(``endpoint_url``, ``anon``, ``profile``, ...) to the fsspec filesystem. Options are never logged and never
written to a manifest, a card or a config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations import local as fsspec_local

from storage.errors import StorageError

# protocol -> (the fsspec package it needs, this project's extra)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
          "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
          "adl": ("adlfs", "azure")}
CONDITIONAL_CREATE = ("s3", "s3a")  # stores whose create is a real conditional write (S3's If-None-Match: *)
# a store that cannot be reached fails in seconds, never hangs (each can be overridden with --storage-option)
# (and listings are never cached: a resumed run or a server must see the objects other processes wrote)
S3_DEFAULTS = {"use_listings_cache": False, "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                 "retries": {"max_attempts": 3, "mode": "standard"}}}


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


class LocalFileSystem(fsspec_local.LocalFileSystem):
    """fsspec's ``LocalFileSystem`` whose listings also carry ``mtime_ns`` (the version tag of a file on disk:
    ``mtime`` alone is a float that rounds nanoseconds away). It keeps its parent's name, by which pyarrow knows
    local disk and reads it natively (``filesystem=`` of ``pyarrow.parquet``)."""

    def info(self, path, **kwargs):
        out = super().info(path, **kwargs)
        if out.get("type") == "file":  # a listing's entries carry their stat already (no second system call)
            st = path.stat() if isinstance(path, os.DirEntry) else os.stat(out["name"])
            out["mtime_ns"] = st.st_mtime_ns
        return out

    def cat_file(self, path, start=None, end=None, **kwargs):
        """A file's bytes (``start:end``, negative from its end), read with the built-in ``open``: one image per
        call on the embedding job's hot path, where fsspec's file object costs as much as a small decode."""
        if not str(path).startswith("/"):
            path = self._strip_protocol(path)
        with open(path, "rb") as fh:
            if start is None and end is None:
                return fh.read()
            size = os.fstat(fh.fileno()).st_size
            start = 0 if start is None else (max(0, size + start) if start < 0 else start)
            end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            fh.seek(start)
            return fh.read(max(0, end - start))


def local_path_of(spec: str | Path) -> str:
    """The absolute path of a local location (``file://`` taken off)."""
    return str(Path(str(spec).removeprefix("file://")).absolute())


def shown(spec: str | Path) -> str:
    """What may be shown or recorded of a location: an absolute path, or the URL without credentials."""
    return public_url(str(spec)) if is_url(spec) else local_path_of(spec)


def filesystem(url: str | Path, options: dict[str, Any] | None = None):
    """``(fsspec filesystem, path inside it)`` for a URL or a local path (:class:`LocalFileSystem`: local disk is
    one more filesystem); a missing fsspec package is an error naming the extra. Storage options are for URLs:
    a local path takes none."""
    if not is_url(url):
        return LocalFileSystem(), local_path_of(url)
    url = str(url)
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
    modification time (in nanoseconds on local disk); it changes when the object does."""
    for key in ("ETag", "etag", "md5Hash", "blob_id", "last_commit", "mtime_ns", "mtime", "LastModified",
                "last_modified"):
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


def on_local_disk(fs) -> bool:
    """Whether ``fs`` is this machine's disk."""
    return isinstance(fs, fsspec_local.LocalFileSystem)
