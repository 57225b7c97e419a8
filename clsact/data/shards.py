"""Packed datasets: large tar shards plus an index, read with few large sequential reads.

``clsact dataset pack SRC DST`` turns a list-file tree (local or ``s3://``) into, per list
file ``L`` (e.g. ``train_list.txt``)::

    DST/L-shards/000000.tar, 000001.tar, ...   plain tar, members in a seeded shuffled order
    DST/<stem>.shards.json                     the index: shards (samples, bytes, sha256) and
                                               each member's shard, offset, size, label, path

The index is written last (exclusively): it exists only for a complete pack. Point
``Global.train_list`` / ``val_list`` at the ``.shards.json`` files to train from the pack.

``--resize-short N`` stores every image already resized (short side N, never enlarged,
re-encoded as JPEG quality ``--quality``, 95 by default) in a pool of processes: decoding a
256-px image instead of a 500x375 (or a 12 MP) one is the cheaper decode every epoch of every
night pays for once. The index records N; the loader refuses a config whose
``Global.resize_size`` is not N (the evaluation would crop a different view). An image that
does not decode is stored as it is (the loader skips and counts it, as from the tree).

Reading: the loader hands out *blocks* of consecutive members (the pack order is already
shuffled; blocks are reshuffled every epoch, the order inside each too, and dealt to ranks);
a training batch is several blocks (:data:`clsact.data.build.PACKED_BLOCKS_PER_BATCH`), so
batches are made of other images every epoch, and :class:`ShardReader` fetches each block
with one ranged read: a few large sequential reads per batch instead of one request per image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import posixpath
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsact.data.listfile import Sample, read_list, safe_relpath
from clsact.errors import DataError, StorageError
from clsact.storage import AlreadyExists, S3Settings, Store, open_store

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


def resized_jpeg(data: bytes, short: int, quality: int) -> bytes:
    """``data`` re-encoded as a JPEG whose short side is at most ``short`` (PaddleClas'
    rounding, bilinear; never enlarged); the bytes unchanged when they do not decode."""
    import cv2

    from clsact.data.transforms import resize_short

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        return data
    if min(img.shape[:2]) > short:
        img = resize_short(img, short)
    ok, out = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return out.tobytes() if ok else data


def _resize_all(items: list[bytes | OSError], short: int, quality: int) -> list:
    """:func:`resized_jpeg` over a chunk (in a pack worker); errors pass through."""
    import cv2

    cv2.setNumThreads(1)
    return [x if isinstance(x, OSError) else resized_jpeg(x, short, quality) for x in items]


def pack_list(src: Store, list_name: str, dst: Store, *, shard_bytes: int = 256 * 2**20,
              seed: int = 0, overwrite: bool = False, max_missing: int = 0,
              scratch: Path | None = None, resize_short: int | None = None,
              quality: int = 95, workers: int = 1) -> PackStats:
    """Pack the images of one list file of ``src`` into tar shards + an index in ``dst``
    (with ``resize_short``: resized and re-encoded by ``workers`` processes).

    Raises:
        DataError: the list file is bad, or more than ``max_missing`` listed images are
            missing.
        StorageError: the index exists already (and not ``overwrite``), or a store fails.
    """
    start = time.perf_counter()
    samples = read_list(src.describe(), list_name, getattr(src, "conf", None))  # S3Store.conf
    index = index_name(list_name)
    if dst.exists(index) and not overwrite:
        raise StorageError(f"{dst.describe(index)} exists (a finished pack); pass --overwrite "
                           "to pack again")
    order = np.random.default_rng(seed).permutation(len(samples))
    folder = f"{index[: -len(SUFFIX)]}-shards"
    shards: list[dict] = []
    members: list[list] = []
    missing: list[str] = []
    chunks = [[samples[i] for i in order[k:k + 256]] for k in range(0, len(order), 256)]
    with tempfile.TemporaryDirectory(prefix="clsact-pack-", dir=scratch) as tmp, \
            _resizer(resize_short, quality, workers) as resize:
        writer = _ShardWriter(Path(tmp), dst, folder, shard_bytes, shards)
        contents = (list(src.iter_many([s.path for s in chunk])) for chunk in chunks)
        for chunk, datas in zip(chunks, resize(contents), strict=True):
            for sample, data in zip(chunk, datas, strict=True):
                if isinstance(data, OSError) or not data:  # an empty file is no image
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
            "resize_short": resize_short, "quality": quality if resize_short else None,
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


@contextmanager
def _resizer(short: int | None, quality: int, workers: int):
    """A function from an iterator of chunks (lists of bytes) to the chunks resized, in
    order, by a pool of ``workers`` processes (the identity without ``short``)."""
    if not short:
        yield lambda chunks: chunks
        return
    if workers <= 1:
        yield lambda chunks: (_resize_all(c, short, quality) for c in chunks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        # map() would read every chunk ahead: keep 2 x workers in flight instead
        def run(chunks):
            pending: deque = deque()
            for c in chunks:
                pending.append(pool.submit(_resize_all, c, short, quality))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        yield run


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


def read_index(store: Store, name: str, resize_size: int | None = None) -> list[Sample]:
    """The samples of a packed index, in pack order, each with its shard location. With
    ``resize_size`` (the config's ``Global.resize_size``), an index packed with another
    ``--resize-short`` is refused.

    Raises:
        DataError: the index is missing, not a clsact index, inconsistent, or packed for
            another resize size.
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
    packed_at = body.get("resize_short")
    if packed_at and resize_size is not None and packed_at != resize_size:
        raise DataError(f"{where} holds images pre-resized to a short side of {packed_at} px "
                        f"but Global.resize_size is {resize_size}: set Global.resize_size "
                        f"{packed_at}, or pack again with --resize-short {resize_size}")
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
        """The members' bytes in the order of ``keys`` (OSError for a shard that cannot be
        read): one ranged read per stretch of members lying together in a shard (a block of
        a batch, in whatever order), whatever order the keys come in.

        Raises:
            StorageError: the store failed beyond its retries.
        """
        out: list[bytes | OSError | None] = [None] * len(keys)
        for run in _runs(keys):
            shard = keys[run[0]][0]
            lo = keys[run[0]][1]
            hi = max(keys[i][1] + keys[i][2] for i in run)
            try:
                blob = self.store.read_range(shard, lo, hi - lo)
            except OSError as exc:
                for i in run:
                    out[i] = exc
                continue
            for i in run:
                _, off, size, _ = keys[i]
                out[i] = blob[off - lo: off - lo + size]
        yield from out  # type: ignore[misc]


MAX_GAP = 64 * 1024  # bytes between two members still read in one request


def _runs(keys: list) -> list[list[int]]:
    """Indices of ``keys`` grouped into ranged reads: sorted by (shard, offset), a new read
    where the shard changes or the next member starts more than :data:`MAX_GAP` after the
    end of the previous one."""
    runs: list[list[int]] = []
    end = 0
    for i in sorted(range(len(keys)), key=lambda i: (keys[i][0], keys[i][1])):
        shard, off, size, _ = keys[i]
        if runs and keys[runs[-1][0]][0] == shard and off - end <= MAX_GAP:
            runs[-1].append(i)
        else:
            runs.append([i])
        end = max(end, off + size) if len(runs[-1]) > 1 else off + size
    return runs


def pack(src_location: str, dst_location: str, lists: list[str],
         s3: S3Settings | None = None, **kw) -> list[PackStats]:
    """Pack each of ``lists`` (names relative to ``src_location``; stores reached with
    ``s3``); see :func:`pack_list`."""
    src = open_store(src_location, "SRC", s3)
    dst = open_store(dst_location, "DST", s3)
    dst.check_writable()
    return [pack_list(src, name, dst, **kw) for name in lists]
