"""Local directories as a :class:`~clsact.storage.base.Store`."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from clsact.errors import StorageError
from clsact.storage.base import AlreadyExists, Store, VersionConflict


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class LocalStore(Store):
    """Files under a root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, rel: str) -> Path:
        """The local path of ``rel``.

        Raises:
            StorageError: ``rel`` is absolute or climbs out of the root (``..``): a store
                never reads or writes outside its directory.
        """
        if not rel:
            return self.root
        root = os.path.normpath(self.root)
        full = os.path.normpath(os.path.join(root, rel))
        if os.path.isabs(rel) or not (full == root or full.startswith(root.rstrip(os.sep)
                                                                      + os.sep)):
            raise StorageError(f"{rel!r} is outside {self.root}: paths in a store must stay "
                               "inside it")
        return self.root / rel

    def describe(self, rel: str = "") -> str:
        return str(self.path(rel))

    def child(self, rel: str) -> LocalStore:
        return LocalStore(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as fh:
            return fh.read()

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        with open(self.path(rel), "rb") as fh:
            fh.seek(start)
            data = fh.read(length)
        if len(data) != length:
            raise OSError(f"{self.describe(rel)} is truncated (wanted bytes {start}-"
                          f"{start + length - 1})")
        return data

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def list(self, rel: str = "") -> list[tuple[str, int]]:
        base = self.path(rel)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = Path(dirpath) / name
                out.append((full.relative_to(self.root).as_posix(), full.stat().st_size))
        return sorted(out)

    def iter_chunks(self, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with open(self.path(rel), "rb") as fh:
            while data := fh.read(chunk):
                yield data

    def get_file(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(rel), dest)

    def _tmp_beside(self, target: Path) -> Path:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write to {target.parent}: {_reason(exc)}") from None
        os.close(fd)
        return Path(tmp)

    def put_file(self, src: Path, rel: str) -> None:
        target = self.path(rel)
        tmp = self._tmp_beside(target)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {target}: {_reason(exc)}") from None

    def put_bytes(self, rel: str, data: bytes, *, exclusive: bool = False) -> None:
        target = self.path(rel)
        tmp = self._tmp_beside(target)
        try:
            tmp.write_bytes(data)
            if exclusive:
                os.link(tmp, target)  # atomic; fails when the target exists
                tmp.unlink()
            else:
                os.replace(tmp, target)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise AlreadyExists(f"{target} already exists") from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {target}: {_reason(exc)}") from None

    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        """The content and its sha256 (the version token: equal content, equal version)."""
        data = self.read_bytes(rel)
        return data, hashlib.sha256(data).hexdigest()

    def replace_if(self, rel: str, data: bytes, version: str | None) -> None:
        """Compare-and-swap under an exclusive ``flock`` on ``.<name>.lock`` beside ``rel``
        (every writer through this method takes it), then an atomic rename."""
        target = self.path(rel)
        lock = target.parent / f".{target.name}.lock"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot lock {target}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current: str | None = self.read_versioned(rel)[1]
            except FileNotFoundError:
                current = None
            if current != version:
                raise VersionConflict(f"{target} changed since it was read")
            self.put_bytes(rel, data)
        finally:
            os.close(fd)  # releases the lock

    def delete(self, rel: str) -> None:
        """Remove ``rel`` and the directories it leaves empty below the root (as on S3,
        where a "directory" exists only while objects are in it)."""
        target = self.path(rel)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {target}: {_reason(exc)}") from None
        parent = target.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (or gone): stop
                break
            parent = parent.parent

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.root} cannot be created: {_reason(exc)}") from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")
