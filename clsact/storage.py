"""Where bytes come from and where results go: the one place that knows about paths and URIs.

Every other module goes through this small interface:

* :func:`is_uri` tells a URI (``scheme://...``) from a local path;
* :func:`local_input_dir` turns a model or data location into a readable local directory;
* :class:`LocalReader` reads files named relative to a root (what loader workers use);
* :func:`publish_dir` moves a finished run's staged outputs to their destination, marker
  file (``metrics.json``) last, so a reader never sees a half-written run.

Only local paths are implemented in this version; ``s3://`` is the next storage backend and
fails with a clear message until then.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from clsact.errors import StorageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations, False for local paths."""
    return bool(_URI.match(location))


def _refuse_uri(location: str, what: str) -> None:
    if is_uri(location):
        scheme = location.split("://", 1)[0]
        raise StorageError(f"{what} {location}: {scheme}:// locations are not supported by this "
                           "clsact version; use a local path")


def local_input_dir(location: str, what: str) -> Path:
    """A local directory holding ``location``'s files, for reading only.

    Raises:
        StorageError: the location is an unsupported URI, or not an existing directory.
    """
    _refuse_uri(location, what)
    path = Path(location)
    if not path.is_dir():
        raise StorageError(f"{what} {location} is not an existing directory")
    return path


def local_output_dir(location: str, what: str) -> Path:
    """A local destination directory for results (created if missing).

    Raises:
        StorageError: the location is an unsupported URI or cannot be created.
    """
    _refuse_uri(location, what)
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{what} {location} cannot be created: {exc.strerror}") from None
    return path


class LocalReader:
    """Reads files named relative to a root directory. Picklable (sent to loader workers)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = str(root)

    def read_bytes(self, relpath: str) -> bytes:
        """The file's bytes. Raises OSError when it is missing or unreadable."""
        with open(os.path.join(self.root, relpath), "rb") as fh:
            return fh.read()

    def describe(self, relpath: str) -> str:
        """A human-readable name of the file, for error messages."""
        return os.path.join(self.root, relpath)


def publish_dir(staging: Path, dest: Path, last: str) -> list[str]:
    """Move every entry of ``staging`` into ``dest``, the entry named ``last`` at the end.

    Existing entries of the same name in ``dest`` are replaced. Returns the names moved.

    Raises:
        StorageError: a move fails (the destination is then incomplete, without ``last``).
    """
    names = sorted(p.name for p in staging.iterdir())
    ordered = [n for n in names if n != last] + ([last] if last in names else [])
    for name in ordered:
        target = dest / name
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging / name, target)
        except OSError as exc:
            raise StorageError(f"publishing {name} to {dest} failed: {exc}") from None
    return ordered
