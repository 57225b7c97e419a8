"""Packed datasets: large tar shards plus an index, read with few large sequential reads.

``clsact dataset pack SRC DST`` turns a list-file tree (local or ``s3://``) into, per list
file ``L`` (e.g. ``train_list.txt``)::

    DST/L-shards/000000.tar, 000001.tar, ...   plain tar, members in a seeded shuffled order
    DST/<stem>.shards.json                     the index: shards (samples, bytes, sha256) and
                                               each member's shard, offset, size, label, path

The index is written last (exclusively): it exists only for a complete pack. Point
``Global.train_list`` / ``val_list`` at the ``.shards.json`` files to train from the pack.

Reading: the loader hands out *blocks* of consecutive members (one batch each; the pack
order is already shuffled, blocks are reshuffled every epoch and dealt to ranks), and
:class:`ShardReader` fetches each block with one ranged read — sequential I/O instead of one
request per image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsact.data.listfile import Sample, read_list, safe_relpath
from clsact.errors import DataError, StorageError
from clsact.storage import AlreadyExists, Store, open_store

log = logging.getLogger(__name__)
FORMAT = "clsact-shards/1"
SUFFIX = ".shards.json"


def is_index(list_name: str) -> bool:
    """Whether a ``Global.*_list`` value names a packed index."""
    return list_name.endswith(SUFFIX)


def index_name(list_name: str) -> str:
    """``train_list.txt`` -> ``train_list.shards.json``."""
    stem = posixpath.basename(list_name).rsplit(".", 1)[0]
    return f"{stem}{SUFFIX}"


@dataclass
class PackStats:
    """What one :func:`pack_list` wrote."""

    index: str
    samples: int
    shards: int
    bytes: int
    missing: int
    seconds: float


def _tar_member(name: str, data: bytes) -> tuple[bytes, int]:
    """The tar header + padded data of one member, and the data's offset within it."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    head = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict") \
        if len(name.encode()) <= 100 else info.tobuf(format=tarfile.PAX_FORMAT)
    pad = (-len(data)) % tarfile.BLOCKSIZE
    return head + data + b"\0" * pad, len(head)


def pack_list(src: Store, list_name: str, dst: Store, *, shard_bytes: int = 256 * 2**20,
              seed: int = 0, overwrite: bool = False, max_missing: int = 0,
              scratch: Path | None = None) -> PackStats:
    """Pack the images of one list file of ``src`` into tar shards + an index in ``dst``.

    Raises:
        DataError: the list file is bad, or more than ``max_missing`` listed images are
            missing.
        StorageError: the index exists already (and not ``overwrite``), or a store fails.
    """
    start = time.perf_counter()
    samples = read_list(src.describe(), list_name)
    index = index_name(list_name)
    if dst.exists(index) and not overwrite:
        raise StorageError(f"{dst.describe(index)} exists (a finished pack); pass --overwrite "
                           "to pack again")
    order = np.random.default_rng(seed).permutation(len(samples))
    folder = f"{index[: -len(SUFFIX)]}-shards"
    shards: list[dict] = []
    members: list[list] = []
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clsact-pack-", dir=scratch) as tmp:
        writer = _ShardWriter(Path(tmp), dst, folder, shard_bytes, shards)
        for start_i in range(0, len(order), 256):
            chunk = [samples[i] for i in order[start_i:start_i + 256]]
            for sample, data in zip(chunk, src.iter_many([s.path for s in chunk]), strict=True):
                if isinstance(data, OSError):
                    missing.append(src.describe(sample.path))
                    if len(missing) > max_missing:
                        raise DataError(f"{missing[0]}: listed in {list_name} but missing or "
                                        f"unreadable ({len(missing)} so far); fix the list or "
                                        "pass --max-missing N")
                    continue
                shard, offset = writer.add(sample.path, data)
                members.append([shard, offset, len(data), sample.label, sample.path])
        writer.close()
    body = {"format": FORMAT, "source": src.describe(list_name), "seed": seed,
            "samples": len(members), "missing": missing[:100], "shards": shards,
            "members": members}
    data = json.dumps(body, separators=(",", ":")).encode()
    if overwrite:
        dst.put_bytes(index, data)
    else:
        try:
            dst.put_bytes(index, data, exclusive=True)
        except AlreadyExists:
            raise StorageError(f"{dst.describe(index)} was written by another pack "
                               "meanwhile") from None
    total = sum(s["bytes"] for s in shards)
    return PackStats(dst.describe(index), len(members), len(shards), total, len(missing),
                     round(time.perf_counter() - start, 3))


class _ShardWriter:
    """Builds tar shards in a local temp dir and uploads each when it is full."""

    def __init__(self, tmp: Path, dst: Store, folder: str, limit: int, out: list[dict]):
        self.tmp, self.dst, self.folder, self.limit, self.out = tmp, dst, folder, limit, out
        self.fh: io.BufferedWriter | None = None
        self.size = 0
        self.count = 0
        self.digest = hashlib.sha256()

    def _path(self) -> Path:
        return self.tmp / f"{len(self.out):06d}.tar"

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        if self.fh is None:
            self.fh = open(self._path(), "wb")
            self.size, self.count, self.digest = 0, 0, hashlib.sha256()
        blob, head = _tar_member(name, data)
        offset = self.size + head
        self.fh.write(blob)
        self.digest.update(blob)
        self.size += len(blob)
        self.count += 1
        shard = len(self.out)
        if self.size >= self.limit:
            self._finish()
        return shard, offset

    def _finish(self) -> None:
        assert self.fh is not None
        end = b"\0" * (2 * tarfile.BLOCKSIZE)  # tar end-of-archive
        self.fh.write(end)
        self.digest.update(end)
        self.size += len(end)
        self.fh.close()
        path = self._path()
        rel = f"{self.folder}/{path.name}"
        self.dst.put_file(path, rel)
        path.unlink()
        self.out.append({"name": rel, "samples": self.count, "bytes": self.size,
                         "sha256": self.digest.hexdigest()})
        self.fh = None

    def close(self) -> None:
        if self.fh is not None:
            self._finish()


def read_index(store: Store, name: str) -> list[Sample]:
    """The samples of a packed index, in pack order, each with its shard location.

    Raises:
        DataError: the index is missing, not a clsact index, or inconsistent.
    """
    where = store.describe(name)
    try:
        body = json.loads(store.read_bytes(name))
    except FileNotFoundError:
        raise DataError(f"packed index {where} does not exist (run `clsact dataset pack`, "
                        "or point Global.*_list at a list file)") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"packed index {where} cannot be read: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise DataError(f"{where} is not a clsact shard index (format {FORMAT})")
    try:
        shards = [str(s["name"]) for s in body["shards"]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{where}: malformed shard table ({exc})") from None
    for shard in shards:
        if safe_relpath(shard) != shard:
            raise DataError(f"{where}: shard name {shard!r} is not a plain relative path inside "
                            f"{store.describe()}; re-pack the dataset with `clsact dataset pack`")
    try:
        samples = [Sample(path, int(label), shards[shard], int(offset), int(size))
                   for shard, offset, size, label, path in body["members"]]
    except (ValueError, IndexError, TypeError) as exc:
        raise DataError(f"{where}: malformed member table ({exc})") from None
    if not samples:
        raise DataError(f"{where}: no samples")
    return samples


class ShardReader:
    """Reads samples of a packed dataset; picklable (sent to loader workers).

    Keys are ``(shard, offset, size, path)``; consecutive keys of one shard are fetched
    with a single ranged read spanning them.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self, key) -> str:
        """``<shard uri>:<original path>`` for messages."""
        shard, _, _, path = key
        return f"{self.store.describe(shard)}:{path}"

    def iter_many(self, keys: list) -> Iterator[bytes | OSError]:
        """The members' bytes in order (OSError for a shard that cannot be read): one
        ranged read per run of keys in the same shard. (Splitting a run into parallel
        smaller reads measured slower: more requests, and the batch is one block anyway.)

        Raises:
            StorageError: the store failed beyond its retries.
        """
        for run in _runs(keys):
            shard = run[0][0]
            lo = min(k[1] for k in run)
            hi = max(k[1] + k[2] for k in run)
            try:
                blob = self.store.read_range(shard, lo, hi - lo)
            except OSError as exc:
                yield from [exc] * len(run)
                continue
            for _, off, size, _ in run:
                yield blob[off - lo: off - lo + size]


def _runs(keys: list) -> list[list]:
    """``keys`` split into maximal runs of the same shard."""
    runs: list[list] = []
    for key in keys:
        if runs and runs[-1][0][0] == key[0]:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def pack(src_location: str, dst_location: str, lists: list[str], **kw) -> list[PackStats]:
    """Pack each of ``lists`` (names relative to ``src_location``); see :func:`pack_list`."""
    src = open_store(src_location, "SRC")
    dst = open_store(dst_location, "DST")
    dst.check_writable()
    return [pack_list(src, name, dst, **kw) for name in lists]
