"""The data layer: where inputs are listed and read and outputs written, at every location, one way.

Torch-free, and below everything else: ``hub``, ``training`` and ``service`` import it; it imports none of them.

- :mod:`storage.location`: a local path or an fsspec URL (``s3://``, ``gs://``, ``az://``, ``hf://``) -> an fsspec
  filesystem and a path in it (local disk is fsspec's ``LocalFileSystem``, one more filesystem); storage options;
  errors that say what to change.
- :mod:`storage.store`: :class:`Store`, a folder at any location, and the small contract (:class:`Committer`)
  that each kind of storage fulfils its own way (local disk: ``O_EXCL``, rename, ``flock``, ``fsync``; S3:
  conditional writes).
- :mod:`storage.files`: the local disk's durable primitives (atomic and durable writes, folders exchanged in
  one rename) and this project's cache folder.
- :mod:`storage.sources`: inputs (folders, lists, ``.tar`` shards with brace ranges, Parquet with paths or with
  the images' bytes), resolved once over ``info``, ``find`` and ``glob``.
- :mod:`storage.folder` and :mod:`storage.lock`: the embedding folder's format (manifest, shards, done markers,
  rows) and its one-writer lock.
"""

from storage.errors import DataError, DataLayerError, FolderError, LostLockError, StorageError
from storage.location import add_storage_option, filesystem, is_url, public_url
from storage.sources import ImageSource, open_source
from storage.store import Store, as_store

__all__ = ["DataError", "DataLayerError", "FolderError", "ImageSource", "LostLockError", "Store", "StorageError",
           "add_storage_option", "as_store", "filesystem", "is_url", "open_source", "public_url"]
