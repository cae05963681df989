"""One writer per embedding folder (``run``, ``index``, ``dedup``, ``outliers``), by what its storage does well.

- Local disk: an exclusive ``flock`` on ``folder/.lock`` (:class:`FlockLock`), released by the kernel when the
  process dies, so a killed run's folder is free at once.
- Object storage: a lease object with fencing (:class:`LeaseLock`), written only conditionally.

:func:`folder_lock` picks the one the folder's :class:`storage.store.Committer` names.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from storage.errors import FolderError, LostLockError
from storage.store import Store, as_store

logger = logging.getLogger(__name__)

LOCK = ".lock"
LOCK_TTL_S = 600.0  # the lease: a remote lock not renewed for this long belongs to a dead or stalled run


def folder_lock(folder: str | Path | Store, *, break_lock: bool = False,
                ttl_s: float = LOCK_TTL_S) -> FlockLock | LeaseLock:
    """The lock of ``folder`` (a context manager); entering it fails with a :class:`FolderError` that names the
    holder while another run holds it."""
    if ttl_s <= 0:
        raise FolderError(f"--lock-ttl must be positive, got {ttl_s:g}")
    store = as_store(folder)
    if store.committer.lock == "flock":
        return FlockLock(store)
    return LeaseLock(store, break_lock=break_lock, ttl_s=ttl_s)


class FlockLock:
    """The lock of a folder on local disk: an exclusive ``flock`` on ``folder/.lock``, with the holder's pid in it.
    The kernel holds it for as long as this process lives, so no write needs a fence."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.local_path(LOCK)
        self.handle = None

    def __enter__(self) -> FlockLock:
        self.store.mkdir()
        self.handle = open(self.path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise FolderError(f"another byol-embed run holds {self.path}; wait for it or use another --output") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def _process_identity() -> dict[str, Any]:
    """Who this process is, precisely enough to tell whether a lock's holder still runs: containers on one node
    share a hostname pattern and a boot id, but not a pid namespace."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""

    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_ns = ""
    return {"host": socket.gethostname(), "boot_id": read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns,
            "pid": os.getpid()}


class LeaseLock:
    """The lock of a folder on object storage: a lease object, created with ``If-None-Match: *``, renewed every
    ``ttl_s / 4`` with ``If-Match`` on the version this run wrote last, taken over (a holder that is gone, or
    silent for ``ttl_s``, or ``--break-lock``) with ``If-Match`` on the version that was read, so two contenders can
    never both win. It fences the folder's store: before every write or removal, a run checks that the lock is still
    the version it wrote and that it renewed it within ``ttl_s``; a run that lost it (taken over, or stalled past
    its lease) stops with :class:`LostLockError` before its next commit. Stores without conditional writes say so,
    and take over a lock only with ``--break-lock``.
    """

    def __init__(self, store: Store, *, break_lock: bool = False, ttl_s: float = LOCK_TTL_S) -> None:
        self.store = store
        self.break_lock, self.ttl_s = break_lock, ttl_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None  # the lock object's version this run wrote last
        self.renewed = 0.0  # time.monotonic() of the last renewal
        self.lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> LeaseLock:
        self._acquire()
        self.store.fence = self.check
        return self

    def _body(self) -> bytes:
        return json.dumps({**_process_identity(), "token": self.token, "started": self.started,
                           "heartbeat": time.time(), "ttl_s": self.ttl_s}).encode()

    def _acquire(self) -> None:
        self.started = time.time()
        url = self.store.url(LOCK)
        version = self.store.create(LOCK, self._body())
        if version is None:
            holder, seen = self._holder()
            reason = self._stale(holder)
            if reason is None:
                age = time.time() - float(holder.get("heartbeat", 0))
                raise FolderError(
                    f"another byol-embed run holds {url} (host {holder.get('host')}, pid {holder.get('pid')}, last "
                    f"heartbeat {age:.0f} s ago); wait for it, use another --output, or pass --break-lock if that "
                    f"run is dead (a lock not renewed for its lease, {float(holder.get('ttl_s', self.ttl_s)):.0f} s, "
                    "is taken over by itself)")
            if not self.store.conditional and not self.break_lock:
                raise FolderError(f"{url} looks stale ({reason}), but {self.store.protocol} has no conditional "
                                  "writes, so taking it over could let two runs write at once; pass --break-lock "
                                  "once you know the other run is gone")
            logger.warning("taking over the lock %s: %s", url, reason)
            if self.store.conditional:  # only from the version read: a contender that moved first wins alone
                version = (self.store.replace_if(LOCK, self._body(), seen) if seen is not None
                           else self.store.create(LOCK, self._body()))
            else:
                self.store.write_bytes(LOCK, self._body())
                version = self.store.version(LOCK)
            if version is None:
                raise FolderError(f"another run took the lock {url} at the same moment; retry")
        if not self.store.conditional:
            logger.warning("%s has no conditional writes: the lock on %s is check-then-write, so two runs started "
                           "at the same moment could both proceed", self.store.protocol, url)
        self.version, self.renewed = version, time.monotonic()
        self._beat = threading.Thread(target=self._heartbeat, name="byol-embed-lock", daemon=True)
        self._beat.start()

    def _holder(self) -> tuple[dict[str, Any], str | None]:
        """The lock's content and the version it was read at (the version first: a change in between makes
        the takeover's ``If-Match`` fail, never succeed on content it did not see)."""
        version = self.store.version(LOCK)
        try:
            holder = json.loads(self.store.read_text(LOCK))
        except (FileNotFoundError, ValueError):
            return {}, version
        return (holder if isinstance(holder, dict) else {}), version  # not a lease (a copied local lock file): none

    def _stale(self, holder: dict[str, Any]) -> str | None:
        if self.break_lock:
            return "--break-lock"
        if not holder:
            return "the lock is empty or gone"
        me = _process_identity()
        if all(holder.get(key) == me[key] and me[key] for key in ("host", "boot_id", "pid_ns")):
            try:
                os.kill(int(holder.get("pid", 0)), 0)
            except ProcessLookupError:
                return f"its run (pid {holder.get('pid')} on this host) is no longer running"
            except (PermissionError, ValueError):
                pass
        age = time.time() - float(holder.get("heartbeat", 0))
        ttl = float(holder.get("ttl_s", self.ttl_s))
        if age > ttl:
            return f"not renewed for {age:.0f} s (its lease is {ttl:.0f} s)"
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self.renew()
            if self.lost:
                return

    def renew(self) -> None:
        with self._mutex:
            if self.lost:
                return
            try:
                if self.store.conditional:
                    version = self.store.replace_if(LOCK, self._body(), self.version)
                else:
                    holder, _ = self._holder()
                    version = None
                    if holder.get("token") == self.token:
                        self.store.write_bytes(LOCK, self._body())
                        version = self.store.version(LOCK)
                if version is None:
                    self.lost = "another run took the lock over"
                    logger.error("lost the lock %s: %s; this run stops before its next commit",
                                 self.store.url(LOCK), self.lost)
                    return
                self.version, self.renewed = version, time.monotonic()
            except Exception as err:  # a missed renewal only shortens the lease
                logger.warning("lock renewal failed: %s (the lease ends %.0f s after the last renewal)", err,
                               self.ttl_s)

    def check(self, name: str = "") -> None:
        """The fence, before a write or removal of ``name``: this run still holds the lock."""
        if name == LOCK:
            return
        with self._mutex:  # not in the middle of a renewal (the lock's new version not yet recorded)
            if self.lost is None:
                idle = time.monotonic() - self.renewed
                if idle > self.ttl_s:
                    self.lost = (f"its lease was not renewed for {idle:.0f} s, longer than the lease "
                                 f"({self.ttl_s:.0f} s): another run may hold the folder now")
                elif self.store.conditional and self.store.version(LOCK) != self.version:
                    self.lost = "another run took the lock over"
        if self.lost is not None:
            raise LostLockError(f"this run no longer holds {self.store.url(LOCK)} ({self.lost}); it stopped before "
                                f"writing {name or 'more'}. The run that holds the lock now owns the folder")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.store.fence = None
        with self._mutex:
            if self.lost is None and self.version is not None:
                if self.store.conditional:
                    self.store.remove_if(LOCK, self.version)
                elif self._holder()[0].get("token") == self.token:
                    self.store.remove(LOCK)
