"""The parallel loader: same batches as in-process decoding, sharding, bad-image policy."""

import os
from pathlib import Path

import numpy as np
import pytest

from clsact.data.listfile import Sample, read_list
from clsact.data.loader import BatchLoader, shard_indices
from clsact.data.shm import SHM_DIR
from clsact.data.transforms import TransformSpec
from clsact.errors import DataError
from clsact.storage import LocalStore


def loader(root: Path, samples, *, workers: int, train: bool, max_bad: float = 0.0, **kw):
    spec = TransformSpec(train=train, img_size=32, resize_size=36)
    return BatchLoader(LocalStore(root), samples, spec, batch_size=16, num_workers=workers,
                       shuffle=train, seed=3, max_bad_fraction=max_bad, **kw)


@pytest.mark.parametrize("train, shared", [(False, True), (True, True), (False, False)])
def test_workers_give_the_same_batches_as_in_process(small_digits_dir, train, shared):
    samples = read_list(small_digits_dir, "small_val.txt")
    serial = loader(small_digits_dir, samples, workers=0, train=train)
    parallel = loader(small_digits_dir, samples, workers=2, train=train, shared_memory=shared)
    assert parallel.worker_pids() == []
    try:
        a, b = list(serial.epoch(1)), list(parallel.epoch(1))
        pids = parallel.worker_pids()
        assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        parallel.close()
    assert parallel.worker_pids() == []
    assert len(a) == len(b) == len(serial)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        assert y.images.dtype == np.float32 and y.slot is None
    assert parallel.shared_memory is shared


def _slots() -> set[str]:
    return {p.name for p in Path(SHM_DIR).iterdir()}


def test_shared_memory_moves_a_quarter_of_the_bytes_and_is_removed(small_digits_dir):
    samples = read_list(small_digits_dir, "small_val.txt")
    before = _slots()
    moved = {}
    for shared in (True, False):
        ld = loader(small_digits_dir, samples, workers=2, train=False, shared_memory=shared)
        try:
            n = sum(len(b.labels) for b in ld.epoch(0))
            if shared:
                ring = set(ld._ring.names)
                assert len(ring) == 4 and ring <= _slots() - before  # 2 x workers slots
        finally:
            ld.close()
        moved[shared] = ld.bytes_in
    assert moved[True] == n * 32 * 32 * 3  # uint8 HWC
    assert moved[False] == 4 * moved[True]  # float32 CHW through the pipes
    assert not ring & _slots()  # close() unlinked the slots


def test_without_room_in_dev_shm_batches_go_through_pipes(small_digits_dir, monkeypatch,
                                                          caplog):
    from clsact.data import shm

    samples = read_list(small_digits_dir, "small_val.txt")
    monkeypatch.setattr(shm, "shm_free_bytes", lambda path=shm.SHM_DIR: 100 << 10)  # 100 KB
    ld = loader(small_digits_dir, samples, workers=2, train=False)
    serial = loader(small_digits_dir, samples, workers=0, train=False)
    try:
        got = list(ld.epoch(0))
    finally:
        ld.close()
    assert ld.shared_memory is False and "batches go through pipes" in caplog.text
    assert "docker run --shm-size" in caplog.text
    for x, y in zip(serial.epoch(0), got, strict=True):
        assert np.array_equal(x.images, y.images)


def test_an_abandoned_pass_does_not_spoil_the_next(small_digits_dir):
    """Batches still being decoded when a pass is dropped would write into slots the next
    pass reuses: the next pass must still equal in-process decoding."""
    samples = read_list(small_digits_dir, "small_val.txt")
    ld = loader(small_digits_dir, samples, workers=2, train=True)
    serial = loader(small_digits_dir, samples, workers=0, train=True)
    try:
        for _ in range(3):
            it = ld.epoch(0)
            next(it)
            it.close()  # dropped after one batch, with 3 more in flight
            got = list(ld.epoch(1))
            want = list(serial.epoch(1))
            assert len(got) == len(want)
            for x, y in zip(want, got, strict=True):
                assert np.array_equal(x.images, y.images)
    finally:
        ld.close()


def test_epochs_reshuffle_training_order(small_digits_dir):
    samples = read_list(small_digits_dir, "small_train.txt")
    ld = loader(small_digits_dir, samples, workers=0, train=True)
    first, second = next(iter(ld)), next(iter(ld))
    assert not np.array_equal(first.labels, second.labels) or not np.array_equal(
        first.images, second.images)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (97, 4), (5, 8)])
def test_shards_are_disjoint_and_complete(n, world):
    for shuffle in (False, True):
        parts = [shard_indices(n, epoch=2, seed=1, shuffle=shuffle, rank=r, world=world,
                               even=False) for r in range(world)]
        together = np.concatenate(parts)
        assert sorted(together.tolist()) == list(range(n))
        even = [shard_indices(n, epoch=2, seed=1, shuffle=shuffle, rank=r, world=world,
                              even=True) for r in range(world)]
        assert len({len(p) for p in even}) == 1 and len(np.concatenate(even)) == n // world * world
        assert len(set(np.concatenate(even).tolist())) == n // world * world


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError):
        shard_indices(10, epoch=0, seed=0, shuffle=False, rank=2, world=2, even=False)


def make_broken_tree(tmp_path: Path, good_src: Path, samples) -> list[Sample]:
    for s in samples:
        dst = tmp_path / s.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((good_src / s.path).read_bytes())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return [*samples, Sample("bad/corrupt.jpg", 1), Sample("bad/missing.jpg", 2)]


def test_bad_images_are_skipped_and_counted_within_threshold(tmp_path, small_digits_dir, caplog):
    samples = make_broken_tree(tmp_path, small_digits_dir,
                               read_list(small_digits_dir, "small_val.txt"))
    ld = loader(tmp_path, samples, workers=2, train=False, max_bad=0.05)
    try:
        batches = list(ld.epoch(0))
    finally:
        ld.close()
    assert sum(len(b.labels) for b in batches) == len(samples) - 2
    assert ld.bad_total == 2
    assert "bad/corrupt.jpg" in caplog.text and "bad/missing.jpg" in caplog.text


def test_too_many_bad_images_fail_with_the_culprit(tmp_path, small_digits_dir):
    samples = make_broken_tree(tmp_path, small_digits_dir,
                               read_list(small_digits_dir, "small_val.txt"))
    ld = loader(tmp_path, samples, workers=0, train=False, max_bad=0.0, name="validation")
    with pytest.raises(DataError, match=r"2 of 66 images in the validation set are unreadable"
                                        r".*bad/corrupt.jpg: not a decodable image"):
        list(ld.epoch(0))


def test_slots_of_dead_owners_are_removed_by_the_next_ring(tmp_path):
    import subprocess
    import sys

    from clsact.data import shm

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ns = shm.pid_namespace()
    stale = Path(SHM_DIR) / f"{shm.PREFIX}-{ns}-{dead.stdout.strip()}-0badc0de-0"
    mine = Path(SHM_DIR) / f"{shm.PREFIX}-{ns}-{os.getpid()}-0badc0de-0"
    elsewhere = Path(SHM_DIR) / f"{shm.PREFIX}-1{ns}-{dead.stdout.strip()}-0badc0de-0"
    other = Path(SHM_DIR) / "not-clsact-0"
    paths = (stale, mine, elsewhere, other)
    for path in paths:
        path.write_bytes(b"x")
    try:
        ring = shm.SlotRing(2, 1024)
        assert not stale.exists(), "a killed run's slots are swept"
        assert mine.exists() and other.exists(), "a live owner's and others' are kept"
        assert elsewhere.exists(), "another PID namespace's slots are not judged"
        assert all(n.startswith(f"{shm.PREFIX}-{ns}-{os.getpid()}-") for n in ring.names)
        ring.close()
        assert not any((Path(SHM_DIR) / n).exists() for n in ring.names)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


ABORT = """
import os, signal, sys
from clsact.data import loader
from clsact.data.listfile import read_list
from clsact.data.transforms import TransformSpec
from clsact.storage import LocalStore

if __name__ == "__main__":
    loader.PARENT_WATCH = sys.argv[3] == "watch"
    ld = loader.BatchLoader(LocalStore(sys.argv[1]), read_list(sys.argv[1], "small_val.txt"),
                            TransformSpec(train=False, img_size=32, resize_size=36),
                            batch_size=16, num_workers=2, shuffle=False)
    next(iter(ld.epoch(0)))
    print(" ".join(ld._ring.names), "|", " ".join(map(str, ld.worker_pids())), flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # OOM killer, kubelet, a failing node
    if sys.argv[2] == "abort":
        loader.abort_all()
    os._exit(3)  # as the rank watchdog does: no finally, no atexit
"""


def _run_and_die(tmp_path, data_dir, how: str, watch: bool) -> tuple[list[str], list[str]]:
    """Run ABORT (ending ``how``); the slot names it left and its worker PIDs still alive
    after up to 5 s (the workers poll their parent every 0.5 s)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "abort.py"
    script.write_text(ABORT)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as fo, err.open("w") as fe:  # files: orphans would hold a pipe open
        proc = subprocess.run([sys.executable, str(script), str(data_dir), how,
                               "watch" if watch else "no-watch"], stdout=fo, stderr=fe,
                              timeout=120, cwd=str(Path(__file__).parent.parent))
    assert proc.returncode == (-9 if how == "kill" else 3), err.read_text()[-2000:]
    names, pids = (part.split() for part in out.read_text().strip().splitlines()[-1].split("|"))

    def alive() -> list[str]:
        return [p for p in pids if Path(f"/proc/{p}").exists()
                and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]

    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return [n for n in names if (Path(SHM_DIR) / n).exists()], alive()


def _clean(left: list[str], alive: list[str]) -> None:
    for p in alive:
        os.kill(int(p), 9)
    for n in left:
        (Path(SHM_DIR) / n).unlink(missing_ok=True)


@pytest.mark.parametrize("abort", [True, False])
def test_the_watchdog_exit_leaves_no_slots_or_workers(tmp_path, small_digits_dir, abort):
    """``os._exit`` runs no cleanup: without ``abort_all`` (and with the workers' parent watch
    off) the slots and the spawned workers outlive the process, so the check can fail; with
    it, nothing is left."""
    left, alive = _run_and_die(tmp_path, small_digits_dir, "abort" if abort else "leave",
                               watch=False)
    try:
        assert (left == [] and alive == []) == abort, (left, alive)
    finally:
        _clean(left, alive)


@pytest.mark.parametrize("watch", [True, False])
def test_workers_of_a_sigkilled_rank_exit_by_themselves(tmp_path, small_digits_dir, watch):
    """A SIGKILL runs nothing of the process: its workers leave because they watch their
    parent (without the watch they stay, as orphans: the check can fail). Its slots stay
    until the next ring sweeps them (test_slots_of_dead_owners_are_removed_by_the_next_ring)."""
    left, alive = _run_and_die(tmp_path, small_digits_dir, "kill", watch=watch)
    try:
        assert (alive == []) == watch, alive
    finally:
        _clean(left, alive)


def test_a_dead_decode_worker_ends_the_pass_with_one_line(small_digits_dir):
    """A worker killed (as the kernel's OOM killer does) is a DataError naming the likely
    cause, not a BrokenProcessPool traceback; the loader's workers and slots are gone."""
    import signal

    samples = read_list(small_digits_dir, "val_list.txt")
    ld = loader(small_digits_dir, samples, workers=1, train=False)
    batches = iter(ld)
    next(batches)
    for pid in ld.worker_pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(DataError, match=r"a decode worker died \(most likely killed for "
                       r"memory\).*shmSize.*Global.num_workers \(now 1\)"):
        for _ in batches:
            pass
    assert ld.worker_pids() == []
