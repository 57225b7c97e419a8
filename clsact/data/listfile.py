"""Parse ImageNet list files (``relative/path.JPEG label`` per line) safely."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from clsact.errors import DataError


@dataclass(frozen=True)
class Sample:
    """One labelled image, its path relative to the data root (POSIX separators)."""

    path: str
    label: int


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


def read_list(data_dir: str | Path, list_name: str) -> list[Sample]:
    """Read ``list_name`` (relative to ``data_dir``, or absolute) into samples.

    Raises:
        DataError: the list file is missing or unreadable, or see :func:`parse_lines`.
    """
    path = Path(list_name) if Path(list_name).is_absolute() else Path(data_dir) / list_name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"list file {path} does not exist (set Global.train_list / "
                        "Global.val_list, relative to Global.data_dir)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"list file {path} cannot be read: {exc}") from None
    return parse_lines(text.splitlines(), str(path))
