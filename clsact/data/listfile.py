"""Parse ImageNet list files (``relative/path.JPEG label`` per line) safely."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from clsact.errors import DataError
from clsact.storage.s3session import S3Settings


@dataclass(frozen=True)
class Sample:
    """One labelled image, its path relative to the data root (POSIX separators).

    In a packed dataset (:mod:`clsact.data.shards`) it also has the shard holding it and
    its byte range there.
    """

    path: str
    label: int
    shard: str | None = None
    offset: int = 0
    size: int = 0

    @property
    def key(self) -> str | tuple[str, int, int, str]:
        """What a reader needs to fetch it: the path, or (shard, offset, size, path)."""
        return (self.shard, self.offset, self.size, self.path) if self.shard else self.path


def safe_relpath(raw: str) -> str | None:
    """The normalised relative path, or None when it is absolute or escapes the root."""
    p = raw.replace("\\", "/")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":"):
        return None
    norm = posixpath.normpath(p)
    if norm == "." or norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        return None
    return norm


def parse_lines(lines: list[str], source: str) -> list[Sample]:
    """Parse list-file lines; blank lines and ``#`` comments are skipped.

    A path may contain spaces (the label is the last field).

    Raises:
        DataError: a line lacks a label, has a non-integer or negative label, or names a path
            that is absolute or escapes the data root; or no samples were found.
    """
    samples = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise DataError(f"{source}:{number}: expected 'relative/path.JPEG label', got {text!r}")
        raw_path, raw_label = fields
        try:
            label = int(raw_label)
        except ValueError:
            raise DataError(f"{source}:{number}: label {raw_label!r} is not an integer") from None
        if label < 0:
            raise DataError(f"{source}:{number}: label {label} is negative")
        rel = safe_relpath(raw_path)
        if rel is None:
            raise DataError(f"{source}:{number}: path {raw_path!r} is absolute or leaves the data "
                            "directory; list files name images relative to data_dir")
        samples.append(Sample(rel, label))
    if not samples:
        raise DataError(f"{source}: no samples (expected lines 'relative/path.JPEG label')")
    return samples


def read_list(data_dir: str | os.PathLike[str], list_name: str,
              s3: S3Settings | None = None) -> list[Sample]:
    """Read ``list_name`` into samples. It is relative to ``data_dir``, or an absolute path,
    or a URI; ``data_dir`` is a local path or an ``s3://`` URI (read with ``s3``).

    Raises:
        DataError: the list file is missing or unreadable, or see :func:`parse_lines`.
        StorageError: the location is malformed or the store cannot be reached.
    """
    from clsact.storage import is_uri, open_store

    if is_uri(list_name) or posixpath.isabs(list_name):
        parent, name = posixpath.split(list_name.rstrip("/"))
        store = open_store(parent, "list file", s3)
    else:
        store, name = open_store(data_dir, "Global.data_dir", s3), list_name
    where = store.describe(name)
    try:
        text = store.read_bytes(name).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"list file {where} does not exist (set Global.train_list / "
                        "Global.val_list, relative to Global.data_dir)") from None
    except IsADirectoryError:
        raise DataError(f"list file {where} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"list file {where} cannot be read: {exc}") from None
    return parse_lines(text.splitlines(), where)
