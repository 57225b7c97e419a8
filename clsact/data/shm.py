"""Shared-memory slots the loader's workers write uint8 batches into.

A float32 CHW batch pickled through a pipe costs 4 bytes per pixel channel plus two copies
(pickle, unpickle); a uint8 HWC batch written into shared memory costs 1 byte and no pickling.
The main process owns a ring of slots (one per batch in flight), each big enough for one
batch; a worker attaches to a slot by name (once per process), writes the crops, and returns
only the count. The main process normalises straight out of the slot into a fresh float32
array and the slot is free again.

Slots live in ``/dev/shm`` (tmpfs): a write past the space it has kills the writer with
SIGBUS, so the ring is only made when ``/dev/shm`` has room for all of it
(:func:`shm_free_bytes`); the loader otherwise falls back to pipes, with one warning saying
how to give it room (``docker run --shm-size``, a memory ``emptyDir`` at ``/dev/shm``; the
pods clsact renders mount one, ``shmSize``).
"""

from __future__ import annotations

import os
import secrets
import weakref
from multiprocessing import shared_memory

import numpy as np

SHM_DIR = "/dev/shm"
HEADROOM = 1.25  # leave a quarter of the ring free for everything else in /dev/shm
PREFIX = "clsact-ring"  # slot names: clsact-ring-<pid namespace>-<owner pid>-<token>-<i>

_attached: dict[str, shared_memory.SharedMemory] = {}  # per worker process
_live: weakref.WeakSet[SlotRing] = weakref.WeakSet()  # rings of this process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_namespace() -> str:
    """This process's PID namespace (its inode), so that slots are only ever judged by
    processes that see the same PIDs (containers sharing /dev/shm with ``--ipc=host``)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def remove_stale(path: str = SHM_DIR) -> list[str]:
    """Remove the slots of rings whose owner process (in this PID namespace) is gone,
    killed before it could clean up (SIGKILL, OOM); returns their names."""
    removed = []
    try:
        names = os.listdir(path)
    except OSError:
        return removed
    mine = f"{PREFIX}-{pid_namespace()}-"
    for name in names:
        parts = name[len(mine):].split("-")
        if not name.startswith(mine) or len(parts) != 3 or not parts[0].isdigit():
            continue
        if not _alive(int(parts[0])):
            try:
                os.unlink(os.path.join(path, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def close_all() -> None:
    """Remove every ring of this process (before an ``os._exit``, which runs no cleanup)."""
    for ring in list(_live):
        ring.close()


def shm_free_bytes(path: str = SHM_DIR) -> int:
    """Bytes free in the tmpfs at ``path`` (0 when there is none)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class SlotRing:
    """``count`` shared-memory blocks of ``slot_bytes`` each, owned (and unlinked) by the
    process that made them.

    Raises:
        OSError: the blocks cannot be created.
    """

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self._blocks: list[shared_memory.SharedMemory] = []
        remove_stale()
        token = f"{PREFIX}-{pid_namespace()}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            for i in range(count):
                self._blocks.append(shared_memory.SharedMemory(f"{token}-{i}", create=True,
                                                               size=slot_bytes))
        except OSError:
            self.close()
            raise
        _live.add(self)

    @property
    def names(self) -> list[str]:
        """The slots' names, in ring order."""
        return [b.name for b in self._blocks]

    def __len__(self) -> int:
        return len(self._blocks)

    def view(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        """Slot ``i`` as a uint8 array of ``shape`` (valid until :meth:`close`)."""
        return np.ndarray(shape, dtype=np.uint8, buffer=self._blocks[i].buf)

    def close(self) -> None:
        """Unmap and remove every slot (idempotent)."""
        for b in self._blocks:
            try:
                b.close()
                b.unlink()
            except (FileNotFoundError, BufferError):
                pass
        self._blocks = []


def write_slot(name: str, images: list[np.ndarray]) -> None:
    """Copy ``images`` (HWC uint8, one shape) into the slot called ``name``, from a worker
    (the slot stays attached for the next batch).

    Raises:
        FileNotFoundError: the slot is gone (its loader closed).
        ValueError: the images do not fit the slot.
    """
    block = _attached.get(name)
    if block is None:
        block = _attached[name] = shared_memory.SharedMemory(name=name)
    if not images:
        return
    shape = (len(images), *images[0].shape)
    if int(np.prod(shape)) > block.size:
        raise ValueError(f"a batch of {shape} does not fit shared-memory slot {name} "
                         f"({block.size} bytes)")
    view = np.ndarray(shape, dtype=np.uint8, buffer=block.buf)
    for i, img in enumerate(images):
        view[i] = img
