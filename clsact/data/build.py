"""Build train/eval loaders from a validated config's typed ``Global``
(:class:`~clsact.runconfig.Global`).

The S3 settings are the config's (``Global.s3()``) unless a caller passes others (a
command's ``--s3-endpoint``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from clsact.data.listfile import Sample, read_list
from clsact.data.loader import BatchLoader
from clsact.data.shards import ShardReader, is_index, read_index
from clsact.data.transforms import TransformSpec
from clsact.errors import DataError
from clsact.process import cpu_count
from clsact.runconfig import Global
from clsact.storage import S3Settings, open_store

# a packed training batch is this many blocks of consecutive members (each one ranged read),
# redrawn every epoch: batches differ between epochs at a few reads per batch
PACKED_BLOCKS_PER_BATCH = 8


def default_workers() -> int:
    """Decode workers when ``Global.num_workers`` is unset: the CPUs this process may use, <= 8."""
    return max(1, min(8, cpu_count()))


def transform_spec(g: Global, train: bool) -> TransformSpec:
    """The preprocessing of ``Global`` for training or evaluation."""
    return TransformSpec(
        train=train, img_size=g.img_size, resize_size=g.resize_size,
        crop_scale=tuple(g.crop_scale), crop_ratio=tuple(g.crop_ratio),
        random_flip=g.random_flip,
        mean=tuple(g.mean), std=tuple(g.std),
    )


def read_samples(g: Global, which: str, s3: S3Settings | None = None) -> list[Sample]:
    """The samples of ``Global.train_list`` or ``Global.val_list`` (``which``: train|val): a
    list file, or a packed index (``*.shards.json``, see :mod:`clsact.data.shards`).

    Raises:
        StorageError: ``Global.data_dir`` is malformed or cannot be reached.
        DataError: the list file is missing or malformed.
    """
    name = g.train_list if which == "train" else g.val_list
    s3 = s3 or g.s3()
    if is_index(name):
        return read_index(open_store(g.data_dir, "Global.data_dir", s3), name, g.resize_size)
    return read_list(g.data_dir, name, s3)


def selection(g: Global, train: list[Sample], val: list[Sample], s3: S3Settings | None = None
              ) -> tuple[list[Sample], list[Sample] | None, dict[str, Any]]:
    """Split off what ACT selects its best model on (``Global.selection_list`` /
    ``selection_holdout``): returns (train samples left for training, selection samples or
    None for the validation list, a description for ``metrics.json``).

    Raises:
        DataError: the holdout leaves no training images, or the selection list is bad.
        StorageError: the selection list cannot be read.
    """
    holdout = g.selection_holdout
    if holdout:
        if holdout >= len(train):
            raise DataError(f"Global.selection_holdout {holdout} leaves none of the "
                            f"{len(train)} training images; hold out fewer")
        picked = set(np.random.default_rng([g.seed, 104729]).permutation(len(train))[:holdout]
                     .tolist())
        return ([s for i, s in enumerate(train) if i not in picked],
                [s for i, s in enumerate(train) if i in picked],
                {"set": "holdout", "samples": holdout, "source": g.train_list})
    if g.selection_list:
        name = g.selection_list
        chosen = read_samples(g.replace(val_list=name), "val", s3)
        return train, chosen, {"set": "list", "samples": len(chosen), "source": name}
    return train, None, {"set": "val", "samples": len(val), "source": g.val_list}


def make_loader(g: Global, samples: list[Sample], *, train: bool, batch_size: int,
                rank: int = 0, world: int = 1, s3: S3Settings | None = None) -> BatchLoader:
    """A loader over ``samples`` with ``Global``'s preprocessing, workers and bad-image policy."""
    workers = g.num_workers if g.num_workers is not None else default_workers()
    store = open_store(g.data_dir, "Global.data_dir", s3 or g.s3())
    packed = bool(samples) and samples[0].shard is not None
    return BatchLoader(
        ShardReader(store) if packed else store, samples, transform_spec(g, train),
        batch_size=batch_size, num_workers=workers, shuffle=train, seed=g.seed,
        max_bad_fraction=g.max_bad_fraction, rank=rank, world=world,
        block=max(1, batch_size // PACKED_BLOCKS_PER_BATCH) if packed else 1,
        name="train" if train else "validation", decode=g.decode,
    )
