"""Where bytes come from and where results go: local paths and ``s3://`` URIs behind one
small interface (:class:`~clsact.storage.base.Store`).

* :func:`open_store` gives the Store of a location (``LocalStore`` or ``S3Store``);
* :func:`input_dir` gives a local directory holding a model's files (downloads a scratch
  copy from S3; a local source is used read-only as is);
* :mod:`clsact.storage.publish` publishes a run atomically (manifest + ``_SUCCESS``) and
  verifies it.
"""

from __future__ import annotations

import os
from pathlib import Path

from clsact.errors import StorageError
from clsact.storage.base import AlreadyExists, Store, VersionConflict
from clsact.storage.local import LocalStore
from clsact.storage.s3 import S3Store
from clsact.storage.s3session import S3Settings
from clsact.storage.uri import check_location, is_uri, parse_s3

__all__ = ["AlreadyExists", "LocalStore", "S3Settings", "S3Store", "Store", "check_location",
           "VersionConflict", "input_dir", "is_uri", "open_store"]


def open_store(location: str | os.PathLike[str], what: str,
               s3: S3Settings | None = None) -> Store:
    """The Store rooted at ``location`` (a local path or ``s3://bucket/prefix``, reached with
    ``s3``: default :class:`S3Settings`, i.e. the environment's endpoint).

    Raises:
        StorageError: the location is malformed or uses an unsupported scheme.
    """
    location = os.fspath(location)
    check_location(location, what)
    if is_uri(location):
        return S3Store(parse_s3(location, what), s3 or S3Settings())
    return LocalStore(location)


def input_dir(location: str, what: str, files: list[str], scratch: Path,
              s3: S3Settings | None = None) -> Path:
    """A local directory holding ``files`` of ``location``, for reading only.

    A local directory is returned as is; from S3 the files are downloaded into ``scratch``
    (the source is never modified).

    Raises:
        StorageError: the location is malformed, unreachable, or not a directory; or one of
            ``files`` is missing there.
    """
    store = open_store(location, what, s3)
    if isinstance(store, LocalStore):
        if not store.root.is_dir():
            raise StorageError(f"{what} {location} is not an existing directory")
        return store.root
    scratch.mkdir(parents=True, exist_ok=True)
    for name in files:
        try:
            store.get_file(name, scratch / name)
        except FileNotFoundError:
            raise StorageError(f"{what} {location}: no object {store.describe(name)}") from None
    return scratch
