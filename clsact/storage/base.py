"""The storage interface every backend implements (local directories, S3 prefixes).

A :class:`Store` is rooted at a location; every method takes a path relative to that root
with ``/`` separators. Stores are picklable, so loader worker processes receive them.

Errors: a missing file/object raises :class:`FileNotFoundError` (a data loader counts it as a
bad sample); any other failure raises :class:`~clsact.errors.StorageError` with a one-line
message naming the location, or :class:`OSError` for local I/O faults.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from clsact.errors import StorageError


class AlreadyExists(StorageError):
    """An exclusive write found the target already there."""


class VersionConflict(StorageError):
    """A compare-and-swap write found another version than the one it was based on."""


class Store(ABC):
    """A directory-like location that can be read from and published to."""

    @abstractmethod
    def describe(self, rel: str = "") -> str:
        """The user-facing name (path or URI) of ``rel`` under this store."""

    @abstractmethod
    def child(self, rel: str) -> Store:
        """The store rooted at ``rel`` under this one."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """The whole content of ``rel``. Raises FileNotFoundError, OSError, StorageError."""

    @abstractmethod
    def read_range(self, rel: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``rel`` from offset ``start``. Raises like :meth:`read_bytes`."""

    def iter_many(self, rels: list[str]) -> Iterator[bytes | OSError]:
        """The contents of ``rels`` in order; a missing/unreadable one yields its OSError.

        Backends with network latency fetch ahead in parallel (bounded) while the caller
        consumes earlier items. Raises StorageError for non-recoverable faults.
        """
        for rel in rels:
            try:
                yield self.read_bytes(rel)
            except OSError as exc:
                yield exc

    @abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists (as a file/object). Raises StorageError."""

    @abstractmethod
    def list(self, rel: str = "") -> list[tuple[str, int]]:
        """Every file under ``rel`` (recursive) as (path relative to the store, size)."""

    @abstractmethod
    def iter_chunks(self, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Stream ``rel``'s content. Raises like :meth:`read_bytes`."""

    @abstractmethod
    def get_file(self, rel: str, dest: Path) -> None:
        """Copy ``rel`` to the local file ``dest``. Raises like :meth:`read_bytes`."""

    @abstractmethod
    def put_file(self, src: Path, rel: str) -> None:
        """Store the local file ``src`` as ``rel`` (replacing it atomically). Raises
        StorageError."""

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` as ``rel``; with ``exclusive`` only if ``rel`` does not exist yet.

        Raises:
            AlreadyExists: ``exclusive`` and ``rel`` exists.
            StorageError: the write failed.
        """

    @abstractmethod
    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        """The content of ``rel`` and a token naming this version of it (for
        :meth:`replace_if`). Raises like :meth:`read_bytes`."""

    @abstractmethod
    def replace_if(self, rel: str, data: bytes, version: str | None) -> None:
        """Compare-and-swap: store ``data`` as ``rel`` only if ``rel`` is still at
        ``version`` (from :meth:`read_versioned`), or, with ``version`` None, does not exist.

        Raises:
            VersionConflict: ``rel`` changed (or appeared, or vanished) since ``version``.
            StorageError: the write failed.
        """

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove ``rel`` if it exists. Raises StorageError."""

    @abstractmethod
    def check_writable(self) -> None:
        """Fail early when results could not be published here. Raises StorageError."""
