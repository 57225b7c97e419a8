"""The parallel loader: same batches as in-process decoding, sharding, bad-image policy."""

from pathlib import Path

import numpy as np
import pytest

from clsact.data.listfile import Sample, read_list
from clsact.data.loader import BatchLoader, shard_indices
from clsact.data.transforms import TransformSpec
from clsact.errors import DataError
from clsact.storage import LocalStore


def loader(root: Path, samples, *, workers: int, train: bool, max_bad: float = 0.0, **kw):
    spec = TransformSpec(train=train, img_size=32, resize_size=36)
    return BatchLoader(LocalStore(root), samples, spec, batch_size=16, num_workers=workers,
                       shuffle=train, seed=3, max_bad_fraction=max_bad, **kw)


@pytest.mark.parametrize("train", [False, True])
def test_workers_give_the_same_batches_as_in_process(small_digits_dir, train):
    samples = read_list(small_digits_dir, "small_val.txt")
    serial = loader(small_digits_dir, samples, workers=0, train=train)
    parallel = loader(small_digits_dir, samples, workers=2, train=train)
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
