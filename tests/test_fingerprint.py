"""The validation set's fingerprint (metrics.json ``val_set``): computed by the loader from
the bytes it reads, the same wherever the images are stored, different for other images or
labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

from clsact import config
from clsact.data.build import make_loader, read_samples
from clsact.data.fingerprint import val_fingerprint
from clsact.data.shards import pack


def fingerprint_of(data_dir: str, val_list: str, *, workers: int = 0, world: int = 1) -> dict:
    g = config.complete_global({"model_dir": "m", "data_dir": data_dir, "val_list": val_list,
                                "img_size": 32, "resize_size": 36, "num_workers": workers},
                               "test")
    samples = read_samples(g, "val")
    parts = []
    for rank in range(world):
        loader = make_loader(g, samples, train=False, batch_size=16, rank=rank, world=world)
        loader.record_digests = {}
        try:
            for _batch in loader.epoch(0):
                pass
        finally:
            loader.close()
        parts.append(loader.record_digests)
    return val_fingerprint(samples, parts, val_list)


def direct(data: Path, list_name: str) -> str:
    lines = []
    for line in (data / list_name).read_text().splitlines():
        rel, label = line.rsplit(maxsplit=1)
        lines.append(f"{label} {hashlib.sha256((data / rel).read_bytes()).hexdigest()}")
    body = "".join(x + "\n" for x in sorted(lines)).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_fingerprint_is_the_content_wherever_it_is_stored(small_digits_dir, tmp_path):
    tree = fingerprint_of(str(small_digits_dir), "small_val.txt")
    assert tree["hashed"] == tree["images"] == 64
    assert tree["fingerprint"] == direct(small_digits_dir, "small_val.txt")  # independent
    # two ranks (each hashes its shard), worker processes, the packed shards: the same
    assert fingerprint_of(str(small_digits_dir), "small_val.txt", world=2) == tree
    assert fingerprint_of(str(small_digits_dir), "small_val.txt", workers=2) == tree
    pack(str(small_digits_dir), str(tmp_path / "packed"), ["small_val.txt"],
         shard_bytes=64 << 10, seed=3, overwrite=False, max_missing=0)
    packed = fingerprint_of(str(tmp_path / "packed"), "small_val.shards.json")
    assert packed["fingerprint"] == tree["fingerprint"]
    # the list's order does not matter
    lines = (small_digits_dir / "small_val.txt").read_text().splitlines()
    (small_digits_dir / "reversed_val.txt").write_text("\n".join(lines[::-1]) + "\n")
    assert fingerprint_of(str(small_digits_dir), "reversed_val.txt")["fingerprint"] == \
        tree["fingerprint"]


def test_fingerprint_changes_with_a_label_an_image_or_a_missing_image(small_digits_dir):
    base = fingerprint_of(str(small_digits_dir), "small_val.txt")["fingerprint"]
    lines = (small_digits_dir / "small_val.txt").read_text().splitlines()
    rel, label = lines[0].rsplit(maxsplit=1)
    relabel = [f"{rel} {(int(label) + 1) % 10}", *lines[1:]]
    (small_digits_dir / "relabel_val.txt").write_text("\n".join(relabel) + "\n")
    assert fingerprint_of(str(small_digits_dir), "relabel_val.txt")["fingerprint"] != base
    swapped = [f"{lines[1].rsplit(maxsplit=1)[0]} {label}", *lines[1:]]  # another image
    (small_digits_dir / "swapped_val.txt").write_text("\n".join(swapped) + "\n")
    assert fingerprint_of(str(small_digits_dir), "swapped_val.txt")["fingerprint"] != base
    fewer = fingerprint_of(str(small_digits_dir), "small_val.txt", world=1)
    assert fewer["fingerprint"] == base
    missing = ["val/0/does-not-exist.jpg 0", *lines]  # unreadable: left out and counted
    (small_digits_dir / "missing_val.txt").write_text("\n".join(missing) + "\n")
    g_missing = config.complete_global({"model_dir": "m", "data_dir": str(small_digits_dir),
                                        "val_list": "missing_val.txt", "img_size": 32,
                                        "resize_size": 36, "num_workers": 0,
                                        "max_bad_fraction": 0.5}, "test")
    samples = read_samples(g_missing, "val")
    loader = make_loader(g_missing, samples, train=False, batch_size=16)
    loader.record_digests = {}
    list(loader.epoch(0))
    got = val_fingerprint(samples, [loader.record_digests], "missing_val.txt")
    assert got["hashed"] == 64 and got["images"] == 65 and got["fingerprint"] == base
