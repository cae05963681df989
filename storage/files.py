"""The local disk's durable primitives: atomic and durable writes, folders exchanged in one rename, hashing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """This project's cache folder: ``$BYOL_CACHE``, else ``~/.cache/byol`` (ONNX exports, features, demo model)."""
    return Path(os.environ.get("BYOL_CACHE") or Path.home() / ".cache" / "byol")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's: its entries) data to the disk, so that a power cut after a later commit
    cannot lose what the commit refers to."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """``os.replace`` made durable: the data first, then the rename, then the folder entry."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result over ``path`` in one rename, durably.

    The temporary file lives in the same folder (same file system), so the final ``os.replace``
    is atomic: readers see either the old file or the complete new one. The data is on the disk before the
    rename, and the rename before this returns (a done marker written after its shard is never on the disk
    without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a published file must be readable like any other
        durable_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where not available."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(built: str | Path, final: str | Path) -> Path:
    """Move the complete folder ``built`` to ``final`` (the same file system): a reader sees the old folder or the
    new one, never a half-written one, and never no folder at all (the two are exchanged in one atomic step
    where the kernel can; elsewhere the old one is moved aside just before the new one takes its place)."""
    built, final = Path(built), Path(final)
    for path in (*built.rglob("*"), built):
        if path.is_file() or path == built:
            fsync_path(path)  # the new folder's files are on the disk before it becomes the folder
    if final.exists() and _exchange(built, final):
        fsync_path(final.parent)
        shutil.rmtree(built, ignore_errors=True)  # now the old folder
        return final
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(built, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
