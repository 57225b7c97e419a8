"""The batch loader: decodes in parallel worker processes, in a deterministic order.

* Order: a pure function of (number of samples, epoch, seed, rank, world size) —
  :func:`shard_indices` — so every rank can compute its own disjoint shard.
* Workers: a pool of spawned processes (they import numpy and OpenCV only) decode whole
  batches; the main process keeps ``2 x workers`` batches in flight and yields them in order.
* Bad images (missing, unreadable, not decodable): skipped, counted, logged with their path.
  When more than ``max_bad_fraction`` of one pass's samples are bad, the pass fails with a
  :class:`~clsact.errors.DataError` naming the first bad file, so a broken dataset never
  trains or evaluates silently on a fraction of itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from clsact.data.listfile import Sample
from clsact.data.transforms import TransformSpec, preprocess
from clsact.errors import DataError

log = logging.getLogger(__name__)
MAX_LOGGED_BAD = 20


@dataclass
class Batch:
    """Preprocessed images (N, 3, H, W) float32, labels (N,) int64, the bad samples skipped,
    and (when asked for) the sha256 of each good sample's bytes by sample index."""

    images: np.ndarray
    labels: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)
    digests: list[tuple[int, str]] = field(default_factory=list)


def shard_indices(
    n: int, *, epoch: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, even: bool,
    block: int = 1,
) -> np.ndarray:
    """The sample indices rank ``rank`` of ``world`` reads in ``epoch``.

    Shards are disjoint and, together, cover every sample once per epoch. With ``even`` (for
    training, where ranks must run the same number of steps) every rank gets the same count
    and the remainder, different each shuffled epoch, is left out.

    ``block > 1`` (packed datasets): samples are dealt in blocks of ``block`` consecutive
    indices — the block order reshuffled per epoch, the order within each block too — so a
    batch is one contiguous byte range of a shard.

    Raises:
        ValueError: ``rank`` is not in ``[0, world)``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    rng = np.random.default_rng([seed, epoch])
    if block <= 1:
        order = rng.permutation(n) if shuffle else np.arange(n)
        if even:
            order = order[: (n // world) * world]
        return order[rank::world]
    starts = np.arange(0, n, block)
    if shuffle:  # full blocks reshuffled; a partial last block stays last (batches align)
        full = len(starts) - (1 if n % block else 0)
        starts = np.concatenate([starts[:full][rng.permutation(full)], starts[full:]])
    mine = starts[rank::world]
    parts = []
    for s in mine:
        idx = np.arange(s, min(s + block, n))
        parts.append(rng.permutation(idx) if shuffle else idx)
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if even:
        sizes = [sum(min(block, n - s) for s in starts[r::world]) for r in range(world)]
        order = order[: min(sizes)]
    return order


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for one sample's augmentation in one epoch."""
    return np.random.default_rng([seed, epoch, index])


def load_batch(
    reader, spec: TransformSpec, items: list[tuple[int, str, int]], seed: int, epoch: int,
    digest: bool = False,
) -> Batch:
    """Read and preprocess ``items`` (index, key, label); runs in a worker process. With
    ``digest``, also the sha256 of each good image's bytes (the validation set's fingerprint).

    ``reader`` is a :class:`~clsact.storage.base.Store` (keys are paths: its ``iter_many``
    fetches ahead, in parallel for object storage, while earlier images decode) or a
    :class:`~clsact.data.shards.ShardReader` (keys locate members of a shard).

    Raises:
        StorageError: the store failed beyond its retries (credentials, outage); a missing
            or corrupt image is not an error here but recorded in ``Batch.bad``.
    """
    images, labels, bad, digests = [], [], [], []
    contents = reader.iter_many([key for _, key, _ in items])
    for (index, key, label), data in zip(items, contents, strict=True):
        try:
            if isinstance(data, OSError):
                raise data
            rng = sample_rng(seed, epoch, index) if spec.train else None
            images.append(preprocess(spec, data, rng))
            labels.append(label)
            if digest:
                digests.append((index, hashlib.sha256(data).hexdigest()))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            bad.append((reader.describe(key), reason))
    shape = (0, 3, spec.img_size, spec.img_size)
    arr = np.stack(images) if images else np.zeros(shape, dtype=np.float32)
    return Batch(arr, np.asarray(labels, dtype=np.int64), bad, digests)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


class BatchLoader:
    """Iterable over :class:`Batch` for one list file; each iteration is one epoch.

    Calling :meth:`epoch` with an explicit number gives a reproducible pass; iterating the
    loader itself runs epochs 0, 1, 2, ... (the per-epoch reshuffle).
    """

    def __init__(
        self,
        reader,
        samples: list[Sample],
        spec: TransformSpec,
        *,
        batch_size: int,
        num_workers: int,
        shuffle: bool,
        seed: int = 0,
        max_bad_fraction: float = 0.001,
        rank: int = 0,
        world: int = 1,
        block: int = 1,
        name: str = "data",
    ) -> None:
        self.reader = reader
        self.samples = samples
        self.spec = spec
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.rank = rank
        self.world = world
        self.block = block
        self.name = name
        self.bad_total = 0
        self.passes = 0
        # yield batches whose every image was bad (empty) instead of skipping them: ranks
        # that must take the same number of steps stand in for them (clsact.act)
        self.keep_empty = False
        # when a dict: every pass adds {sample index: sha256 of its bytes} for good samples
        self.record_digests: dict[int, str] | None = None
        self._next_epoch = 0
        self._next_start = 0
        self._pool: ProcessPoolExecutor | None = None

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``."""
        return shard_indices(len(self.samples), epoch=epoch, seed=self.seed, shuffle=self.shuffle,
                             rank=self.rank, world=self.world, even=self.shuffle,
                             block=self.block)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(len(self.indices(0)) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self._next_epoch, self._next_start
        self._next_epoch, self._next_start = epoch + 1, 0
        return self.epoch(epoch, start)

    def continue_at(self, epoch: int, batch: int = 0) -> None:
        """Make the next iteration run ``epoch`` from its batch ``batch`` (resuming)."""
        self._next_epoch, self._next_start = epoch, batch

    def _chunks(self, epoch: int) -> list[list[tuple[int, str, int]]]:
        order = self.indices(epoch)
        items = [(int(i), self.samples[i].key, self.samples[i].label) for i in order]
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def _pool_get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=ctx,
                                             initializer=_init_worker)
        return self._pool

    def _batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        chunks = self._chunks(epoch)[start:]
        digest = self.record_digests is not None
        if self.num_workers == 0:
            for chunk in chunks:
                yield load_batch(self.reader, self.spec, chunk, self.seed, epoch, digest)
            return
        pool = self._pool_get()
        pending: deque[Future] = deque()
        todo = iter(chunks)
        depth = 2 * self.num_workers
        try:
            for chunk in todo:
                pending.append(pool.submit(load_batch, self.reader, self.spec, chunk, self.seed,
                                           epoch, digest))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch (from batch ``start``); bad samples are skipped and
        counted, and a batch left empty is skipped unless :attr:`keep_empty`.

        Raises:
            DataError: more than ``max_bad_fraction`` of this pass's samples were bad.
        """
        total = len(self.indices(epoch))
        limit = math.floor(self.max_bad_fraction * total)
        bad_pass: list[tuple[str, str]] = []
        for batch in self._batches(epoch, start):
            if self.record_digests is not None:
                self.record_digests.update(batch.digests)
            for path, reason in batch.bad:
                if self.bad_total < MAX_LOGGED_BAD:
                    log.warning("skipping unreadable image %s: %s", path, reason)
                self.bad_total += 1
                bad_pass.append((path, reason))
            if len(bad_pass) > limit:
                path, reason = bad_pass[0]
                raise DataError(
                    f"{len(bad_pass)} of {total} images in the {self.name} set are unreadable "
                    f"(more than Global.max_bad_fraction={self.max_bad_fraction}); first: "
                    f"{path}: {reason}. Fix or remove them from the list file, or raise "
                    "Global.max_bad_fraction"
                )
            if len(batch.labels) or self.keep_empty:
                yield batch
        self.passes += 1

    def worker_pids(self) -> list[int]:
        """The process ids of the decode workers running now (none before the first pass)."""
        return list(self._pool._processes) if self._pool is not None else []

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
