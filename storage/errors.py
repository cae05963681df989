"""The data layer's errors: each message says which location and what to change."""

from __future__ import annotations


class DataLayerError(Exception):
    """Any error of the data layer (the CLIs and the server catch this one)."""


class StorageError(DataLayerError, OSError):
    """Storage that cannot be reached, read or written: the message says which URL and what to change."""


class DataError(DataLayerError):
    """A data source that does not exist, holds no images, or cannot be read."""


class FolderError(DataLayerError):
    """An embedding folder that cannot be used as asked: a mismatched rerun, a locked folder, a missing layer,
    an unfinished run."""


class LostLockError(FolderError):
    """This run no longer holds its folder's lock: it stops before its next commit."""
