"""The batch loader: decodes in parallel worker processes, in a deterministic order.

* Order: a pure function of (number of samples, epoch, seed, rank, world size) —
  :func:`shard_indices` — so every rank can compute its own disjoint shard.
* Workers: a pool of spawned processes (they import numpy and OpenCV only) decode and crop
  whole batches; the main process keeps ``2 x workers`` batches in flight and yields them in
  order. A worker exits by itself when its parent dies (a SIGKILLed rank leaves no orphans).
* Transport: workers write uint8 HWC crops into shared-memory slots (:mod:`clsact.data.shm`,
  a quarter of the bytes of float32 and no pickling of pixels) and the main process
  normalises each batch once, out of its slot, into float32 NCHW. Where ``/dev/shm`` has no
  room, batches go through the pool's pipes as float32 (``shared_memory=False``, as before),
  after one warning.
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
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from clsact.data import shm
from clsact.data.listfile import Sample
from clsact.data.transforms import TransformSpec, crop, normalize_batch
from clsact.errors import DataError

log = logging.getLogger(__name__)
MAX_LOGGED_BAD = 20
_LOADERS: weakref.WeakSet[BatchLoader] = weakref.WeakSet()  # of this process
# workers exit by themselves when their parent dies (SIGKILL, OOM kill); see _watch_parent
PARENT_WATCH = True
PARENT_POLL_S = 0.5


def abort_all() -> None:
    """Kill every loader's decode workers and remove its shared-memory slots, for a process
    about to ``os._exit`` (the rank watchdog): nothing else would, and orphaned spawn workers
    would outlive it."""
    for loader in list(_LOADERS):
        pool = loader._pool
        for proc in list(getattr(pool, "_processes", {}).values()) if pool else []:
            proc.kill()
    shm.close_all()  # every ring of this process, the loaders' included


@dataclass
class Batch:
    """Preprocessed images (N, 3, H, W) float32, labels (N,) int64, the bad samples skipped,
    and (when asked for) the sha256 of each good sample's bytes by sample index.

    From a worker writing into shared memory, ``images`` is None until the main process
    normalises the ``slot`` (the ring index the uint8 crops are in)."""

    images: np.ndarray | None
    labels: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)
    digests: list[tuple[int, str]] = field(default_factory=list)
    slot: int | None = None
    # Global.decode gpu: the undecoded bytes, with (sample index, description) of each
    raw: list[bytes] | None = None
    raw_items: list[tuple[int, str]] | None = None


def shard_indices(
    n: int, *, epoch: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, even: bool,
    block: int = 1,
) -> np.ndarray:
    """The sample indices rank ``rank`` of ``world`` reads in ``epoch``.

    Shards are disjoint and, together, cover every sample once per epoch. With ``even`` (for
    training, where ranks must run the same number of steps) every rank gets the same count
    and the remainder, different each shuffled epoch, is left out.

    ``block > 1`` (packed datasets): samples are dealt in blocks of ``block`` consecutive
    indices — the block order reshuffled per epoch, the order within each block too — so
    each block is one contiguous byte range of a shard (a batch spans a few blocks, drawn
    anew every epoch).

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
    digest: bool = False, slot: tuple[int, str] | None = None, raw: bool = False,
) -> Batch:
    """Read and preprocess ``items`` (index, key, label); runs in a worker process. With
    ``digest``, also the sha256 of each good image's bytes (the validation set's fingerprint).
    With ``slot`` (ring index, shared-memory name) the uint8 crops go into that slot and the
    batch carries no pixels; otherwise they are normalised here. With ``raw`` nothing is
    decoded: the batch carries the bytes (decoded on the GPU by the main process).

    ``reader`` is a :class:`~clsact.storage.base.Store` (keys are paths: its ``iter_many``
    fetches ahead, in parallel for object storage, while earlier images decode) or a
    :class:`~clsact.data.shards.ShardReader` (keys locate members of a shard).

    Raises:
        StorageError: the store failed beyond its retries (credentials, outage); a missing
            or corrupt image is not an error here but recorded in ``Batch.bad``.
    """
    images, labels, bad, digests = [], [], [], []
    contents = reader.iter_many([key for _, key, _ in items])
    if raw:
        return _raw_batch(reader, items, contents, digest)
    for (index, key, label), data in zip(items, contents, strict=True):
        try:
            if isinstance(data, OSError):
                raise data
            rng = sample_rng(seed, epoch, index) if spec.train else None
            images.append(crop(spec, data, rng))
            labels.append(label)
            if digest:
                digests.append((index, hashlib.sha256(data).hexdigest()))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            bad.append((reader.describe(key), reason))
    out = Batch(None, np.asarray(labels, dtype=np.int64), bad, digests)
    if slot is not None:
        shm.write_slot(slot[1], images)
        out.slot = slot[0]
        return out
    pixels = (np.stack(images) if images
              else np.zeros((0, spec.img_size, spec.img_size, 3), dtype=np.uint8))
    out.images = normalize_batch(pixels, spec.mean, spec.std)
    return out


def _raw_batch(reader, items, contents, digest: bool) -> Batch:
    """The fetched bytes of ``items`` (unreadable ones recorded as bad)."""
    datas, raw_items, labels, bad, digests = [], [], [], [], []
    for (index, key, label), data in zip(items, contents, strict=True):
        if isinstance(data, OSError):
            bad.append((reader.describe(key), data.strerror or str(data)))
            continue
        datas.append(data)
        raw_items.append((index, reader.describe(key)))
        labels.append(label)
        if digest:
            digests.append((index, hashlib.sha256(data).hexdigest()))
    return Batch(None, np.asarray(labels, dtype=np.int64), bad, digests, raw=datas,
                 raw_items=raw_items)


def decode_on_device(batch: Batch, spec: TransformSpec, seed: int, epoch: int) -> Batch:
    """A raw batch decoded and preprocessed on the GPU (:mod:`clsact.data.gpu_decode`),
    brought to host memory as the float32 the program is fed; images nvJPEG and OpenCV
    both reject become bad samples (and leave the fingerprint)."""
    from clsact.data import gpu_decode
    from clsact.process import dynamic_mode

    assert batch.raw is not None and batch.raw_items is not None
    rngs = [sample_rng(seed, epoch, i) if spec.train else None for i, _ in batch.raw_items]
    with dynamic_mode():  # ACT's training loop runs in static mode
        x, kept, failed = gpu_decode.preprocess_batch(batch.raw, spec, rngs)
        images = x.numpy()
    lost = {batch.raw_items[i][0] for i, _ in failed}
    return Batch(images, batch.labels[kept],
                 batch.bad + [(batch.raw_items[i][1], why) for i, why in failed],
                 [d for d in batch.digests if d[0] not in lost])


def _init_worker(parent: int | None = None) -> None:
    import cv2

    cv2.setNumThreads(1)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="clsact-parent-watch").start()


def _watch_parent(parent: int) -> None:
    """Exit this worker once ``parent`` is no longer its parent.

    A SIGKILLed (or OOM-killed) rank runs no cleanup, and spawned workers would outlive it
    as orphans, holding memory and the pod's CPU. ``prctl(PR_SET_PDEATHSIG)`` is not used:
    it fires when the *thread* that started the worker ends, and the pool may start workers
    from its manager thread."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


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
        shared_memory: bool | None = None,
        decode: str = "cpu",
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
        # workers hand over uint8 crops in shared memory (None: when /dev/shm has room)
        self.shared_memory = shared_memory
        # "gpu": workers only fetch; the main process decodes on the GPU (gpu_decode)
        self.decode = decode
        if decode == "gpu":
            from clsact.data import gpu_decode

            gpu_decode.check_available()
        # pixel bytes the workers handed over (float32 through pipes, uint8 through slots)
        self.bytes_in = 0
        self._next_epoch = 0
        self._next_start = 0
        self._pool: ProcessPoolExecutor | None = None
        self._ring: shm.SlotRing | None = None
        _LOADERS.add(self)

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
            self._pool = ProcessPoolExecutor(
                self.num_workers, mp_context=ctx, initializer=_init_worker,
                initargs=(os.getpid() if PARENT_WATCH else None,))
        return self._pool

    def _ring_get(self, depth: int) -> shm.SlotRing | None:
        """The shared-memory ring for ``depth`` batches in flight, or None (pipes) when
        switched off or ``/dev/shm`` lacks the room (warned once)."""
        if self._ring is not None or self.shared_memory is False:
            return self._ring
        slot_bytes = self.batch_size * self.spec.img_size * self.spec.img_size * 3
        need, free = depth * slot_bytes, shm.shm_free_bytes()
        if need * shm.HEADROOM > free:
            log.warning("%s loader: %s has %.0f MB free, %d batches in flight need %.0f MB: "
                        "batches go through pipes as float32 (4x the bytes). Give it room: "
                        "docker run --shm-size, or the pod's shmSize", self.name, shm.SHM_DIR,
                        free / 2**20, depth, need * shm.HEADROOM / 2**20)
            self.shared_memory = False
            return None
        try:
            self._ring = shm.SlotRing(depth, slot_bytes)
            weakref.finalize(self, self._ring.close)  # a loader dropped without close()
        except OSError as exc:
            log.warning("%s loader: no shared memory (%s): batches go through pipes",
                        self.name, exc)
            self.shared_memory = False
        return self._ring

    def _received(self, fut: Future, epoch: int) -> Batch:
        """A worker's batch with its images normalised out of its slot (if it used one), or
        decoded on the GPU (raw bytes)."""
        batch = fut.result()
        if batch.raw is not None:
            return decode_on_device(batch, self.spec, self.seed, epoch)
        if batch.slot is None:
            self.bytes_in += batch.images.nbytes
            return batch
        assert self._ring is not None
        n, size = len(batch.labels), self.spec.img_size
        pixels = self._ring.view(batch.slot, (n, size, size, 3))
        batch.images = normalize_batch(pixels, self.spec.mean, self.spec.std)
        batch.slot = None
        self.bytes_in += pixels.nbytes
        return batch

    def _batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        chunks = self._chunks(epoch)[start:]
        digest = self.record_digests is not None
        raw = self.decode == "gpu"
        if self.num_workers == 0:
            for chunk in chunks:
                batch = load_batch(self.reader, self.spec, chunk, self.seed, epoch, digest,
                                   raw=raw)
                yield decode_on_device(batch, self.spec, self.seed, epoch) if raw else batch
            return
        pool = self._pool_get()
        depth = 2 * self.num_workers
        ring = None if raw else self._ring_get(depth)
        pending: deque[Future] = deque()
        try:
            # batch k writes slot k % depth: the batch that used it before (k - depth) has
            # been normalised out of it by then (at most depth in flight, taken in order)
            for k, chunk in enumerate(chunks):
                slot = (k % depth, ring.names[k % depth]) if ring is not None else None
                pending.append(pool.submit(load_batch, self.reader, self.spec, chunk, self.seed,
                                           epoch, digest, slot, raw))
                if len(pending) >= depth:
                    yield self._received(pending.popleft(), epoch)
            while pending:
                yield self._received(pending.popleft(), epoch)
        except BrokenProcessPool:  # a worker was killed (the kernel's OOM killer, mostly)
            pending.clear()
            self.close()
            raise DataError(
                f"{self.name} loader: a decode worker died (most likely killed for memory): "
                f"give the pod more memory or a larger shmSize, or lower Global.num_workers "
                f"(now {self.num_workers})") from None
        finally:
            # an abandoned pass: a batch still being decoded would write into a slot the
            # next pass reuses, so wait for those that cannot be cancelled
            for fut in pending:
                if not fut.cancel():
                    wait([fut])

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
        if self._ring is not None:
            self._ring.close()
            self._ring = None
